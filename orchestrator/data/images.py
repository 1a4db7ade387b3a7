"""One image loader for datasets and for ``generate --images``: any Pillow mode to the model's channels.

Every image a user brings goes through :func:`to_model_mode` (PIL image -> ``"L"`` or ``"RGB"``),
then, for a square model input, through :func:`square_array` (shorter side to ``image_size`` with
Pillow's bilinear filter, then a centre crop, as torchvision's ``Resize`` + ``CenterCrop`` do).
:func:`load_image` does both for one file and returns what ``ClassDataset.get`` returns for a
dataset image: float32 ``[channels, image_size, image_size]`` in [-1, 1] (``uint8 / 127.5 - 1``).

The conversion rule (ours; the mode names and Pillow's own conversions are from the Pillow docs,
"Concepts: Modes" and ``Image.convert``):

======================  =========================================================================
mode Pillow opens       what the model gets
======================  =========================================================================
``1``                   0 -> 0, 1 -> 255 (black / white)
``L``                   as stored
``P`` (no transparency) palette expanded to RGB
``P`` with a            expanded to RGBA (Pillow turns the ``transparency`` index or per-entry
transparency index,     alpha into an alpha channel), then composited on the background
``PA``, ``LA``,
``RGBA``, and ``L`` /
``RGB`` with a
``transparency`` colour
``RGB``                 as stored
``CMYK``, ``YCbCr``,    Pillow's ``convert("RGB")`` (CMYK: Pillow's plain formula, no ICC profile)
``LAB``, ``HSV``,
``RGBX``
``I;16`` (``I;16L``,    16-bit unsigned: value / 65535 * 255 (the format's full range)
``I;16B``, ``I;16N``)
``I`` (32-bit signed)   values >= 0: divided by the smallest of 255, 65535, 2**32 - 1 that holds
                        the largest value; any negative value: min-max over the image
``F`` (32-bit float)    by the smallest conventional range holding every value: [0, 1],
                        [-1, 1], [0, 255], [0, 65535]; otherwise min-max over the image. NaN or
                        infinite values are refused (``UserError``)
======================  =========================================================================

Compositing: ``out = alpha * colour + (1 - alpha) * background`` per channel, rounded, with the
background 255 (``"white"``) or 0 (``"black"``). Pillow's plain ``convert("L")`` instead drops
alpha and keeps whatever colour lies under transparent pixels (often black), which made
transparent PNGs load as all-black images. High-bit-depth modes ignore transparency.

Channels: 1 channel is Pillow's ``convert("L")`` of the RGB result (ITU-R 601-2 luma,
``L = R*299/1000 + G*587/1000 + B*114/1000``; exact for grey inputs); 3 channels replicate a grey
image. Multi-frame files (animated GIF, multi-page TIFF) give their first frame. JPEG/TIFF EXIF
orientation is applied (``ImageOps.exif_transpose``).

Background per dataset (each declaration's ``background`` in ``data/registry.py``): Omniglot is dark ink on white, so
``"white"``; ``digits``, ``mnist`` and ``fashion-mnist`` are light ink on black, so ``"black"``;
``folder`` datasets default to ``"white"`` (photos and drawings on transparent canvases are
usually meant to be seen on white), overridable with ``load_dataset(..., background="black")``.

Errors (all ``orchestrator.errors.UserError``, one line naming the file and the fix): a missing,
unreadable or undecodable file; a mode that cannot be converted; an image over Pillow's
decompression-bomb limit ``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow warns above the limit with
``DecompressionBombWarning`` and raises ``DecompressionBombError`` above twice the limit; both are
refused here, naming the limit).
"""
from __future__ import annotations

import contextlib
import io
import struct
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch

from orchestrator.data import registry
from orchestrator.data.registry import BACKGROUNDS
from orchestrator.errors import UserError

if TYPE_CHECKING:
    from PIL import Image


_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_HIGH_DEPTH = ("I", "F")  # plus every "I;16..." mode


def dataset_background(name: str) -> str:
    """The background a dataset's transparent images are composited on (ours): ``"white"`` or ``"black"``.

    Read from the dataset's declaration (``data/registry.py``); unknown names get ``"white"`` (the ``folder`` default).
    """
    spec = registry.find(name)
    return spec.background if spec is not None else "white"


def check_background(background: str) -> str:
    """``background`` lower-cased if it is ``"white"`` or ``"black"``; else ``UserError``."""
    b = str(background).strip().lower()
    if b not in BACKGROUNDS:
        raise UserError(f"background {background!r} is not known: pass background white or black")
    return b


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise UserError(f"channels must be 1 or 3, got {channels!r}: pass channels 1 (grayscale) or 3 (RGB)")


# ---------------------------------------------------------------------------------------------
# conversion


def to_model_mode(im: "Image.Image", channels: int, background: str = "white") -> "Image.Image":
    """A new image in mode ``"L"`` (``channels`` 1) or ``"RGB"`` (3), by the module's rule (ours).

    Args:
        im: any image Pillow opened (modes 1, L, P, PA, LA, RGB, RGBA, CMYK, YCbCr, LAB, HSV,
            I;16*, I, F); not modified, same size out.
        channels: 1 or 3.
        background: ``"white"`` (255) or ``"black"`` (0), under transparent pixels.

    Raises:
        UserError: bad ``channels`` / ``background``.
        ValueError: a mode Pillow cannot convert, or an ``F`` image holding NaN or infinity
            (the file-level loaders turn these into a ``UserError`` naming the file).
    """
    from PIL import Image

    _check_channels(channels)
    bg = 255 if check_background(background) == "white" else 0
    mode = im.mode
    if mode in _HIGH_DEPTH or mode.startswith("I;16"):
        out = Image.fromarray(_scale_high_depth(im), mode="L")
    elif mode == "1":
        out = im.convert("L")
    elif mode in _ALPHA_MODES or (mode in ("L", "P", "RGB") and _has_transparency(im)):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float64)
        alpha = rgba[..., 3:4] / 255.0
        rgb = np.rint(rgba[..., :3] * alpha + bg * (1.0 - alpha)).clip(0, 255).astype(np.uint8)
        out = Image.fromarray(rgb, mode="RGB")
    elif mode in ("L", "RGB"):
        out = im.copy()
    else:  # P without transparency (palette expanded), CMYK, YCbCr, LAB, HSV, RGBX
        out = im.convert("RGB")
    want = "L" if channels == 1 else "RGB"
    return out if out.mode == want else out.convert(want)


def _has_transparency(im: "Image.Image") -> bool:
    has = getattr(im, "has_transparency_data", None)  # Pillow >= 10.1
    return bool(has) if has is not None else "transparency" in im.info


def _scale_high_depth(im: "Image.Image") -> np.ndarray:
    """I;16*, I or F image -> uint8 [H, W] by the module's range rule (ours)."""
    a = np.asarray(im).astype(np.float64)
    if im.mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    else:
        if not np.isfinite(a).all():
            raise ValueError("it holds NaN or infinite values")
        amin, amax = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        ranges = ([(0.0, 1.0), (-1.0, 1.0), (0.0, 255.0), (0.0, 65535.0)] if im.mode == "F"
                  else [(0.0, 255.0), (0.0, 65535.0), (0.0, 2.0**32 - 1)])
        lo, hi = next(((l, h) for l, h in ranges if l <= amin and amax <= h), (amin, amax))
    if hi <= lo:  # a constant image outside every conventional range
        return np.zeros(a.shape, dtype=np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).clip(0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# reading files


@contextlib.contextmanager
def bomb_warnings_as_errors() -> Iterator[None]:
    """Turn Pillow's ``DecompressionBombWarning`` into an exception while reading (ours).

    Python's warning filters are process-wide: enter this once in the calling thread around a
    whole batch (thread pools included), not inside worker threads.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _bomb_error(label: str, pixels: int | None) -> UserError:
    from PIL import Image

    size = f"{pixels:,} pixels" if pixels is not None else "too many pixels"
    return UserError(f"image {label} has {size}, over Pillow's decompression-bomb limit "
                     f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,}: shrink or remove that image "
                     f"(or, if you trust it, raise PIL.Image.MAX_IMAGE_PIXELS)")


def read_model_image(src: str | Path | bytes, channels: int, background: str = "white",
                     label: str | None = None) -> "Image.Image":
    """Open one image (a path or the file's bytes) and return it in the model's mode, full size.

    Returns a new in-memory ``"L"`` / ``"RGB"`` image (:func:`to_model_mode`); the file is closed.
    ``label`` names the image in errors (default: the path).

    Raises:
        UserError: the file is missing, a folder, unreadable, not an image, truncated, in a mode
            that cannot be converted, or over ``PIL.Image.MAX_IMAGE_PIXELS`` (one line, naming it).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = label if label is not None else str(src) if not isinstance(src, bytes) else "<bytes>"
    im = None
    try:
        try:
            im = Image.open(io.BytesIO(src) if isinstance(src, bytes) else Path(src).expanduser())
        except FileNotFoundError:
            raise UserError(f"image {label} does not exist: pass the path of an existing image file") from None
        except IsADirectoryError:
            raise UserError(f"image {label} is a folder, not an image file: pass the path of an image file") from None
        except PermissionError:
            raise UserError(f"image {label} cannot be read (permission denied): make it readable or remove it") from None
        except UnidentifiedImageError:
            raise UserError(f"image {label} is not an image Pillow can read: remove or replace it "
                            f"(PNG, JPEG, BMP, GIF, TIFF, WebP, PPM)") from None
        limit = Image.MAX_IMAGE_PIXELS
        pixels = int(im.size[0]) * int(im.size[1])
        if limit is not None and pixels > limit:  # also when a caller's filter silenced Pillow's warning
            raise _bomb_error(label, pixels)
        im.load()
        try:
            frame = ImageOps.exif_transpose(im) or im
        except Exception:  # noqa: BLE001 - a malformed EXIF block: keep the pixels as stored
            frame = im
        try:
            return to_model_mode(frame, channels, background)
        except ValueError as e:
            raise UserError(f"image {label} (mode {im.mode}) cannot be converted to {channels} channel(s) "
                            f"({_first_line(e)}): convert it to PNG (grey or RGB) or remove it") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _bomb_error(label, _pixels_in(e)) from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, IndexError) as e:
        raise UserError(f"cannot read image {label} ({type(e).__name__}: {_first_line(e)}): "
                        f"remove or replace this file") from None
    finally:
        if im is not None:
            im.close()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _pixels_in(e: BaseException) -> int | None:
    """The pixel count Pillow's bomb message states ("Image size (N pixels) ..."), if any."""
    import re

    m = re.search(r"\((\d+) pixels\)", str(e))
    return int(m.group(1)) if m else None


def resize_crop_plan(w: int, h: int, image_size: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """What :func:`square_array` does to a ``w`` x ``h`` image (pixels): the size its shorter side is resized to
    ``image_size`` at (``(width, height)``, torchvision ``Resize(int)``'s rounding down) and the centre-crop box
    ``(left, top, right, bottom)`` in that resized image (torchvision ``CenterCrop``'s offsets)."""
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(image_size * long / short)
    size = (image_size, new_long) if w <= h else (new_long, image_size)
    top, left = int(round((size[1] - image_size) / 2.0)), int(round((size[0] - image_size) / 2.0))
    return size, (left, top, left + image_size, top + image_size)


def fit_description(path: str | Path, image_size: int, channels: int, background: str = "white") -> str | None:
    """One line saying how :func:`load_image` fits the file at ``path`` to a model's ``channels`` x ``image_size``
    x ``image_size`` input (resize, centre crop with what it cut, mode conversion, transparency), or None when
    the file already matches. Reads the header only; call it after :func:`load_image` accepted the file."""
    from PIL import Image

    with Image.open(Path(path).expanduser()) as im:
        w, h = im.size
        if im.getexif().get(0x0112) in (5, 6, 7, 8):  # read_model_image's exif_transpose turns these a quarter
            w, h = h, w
        mode = im.mode
        transparent = mode in _ALPHA_MODES or (mode in ("L", "P", "RGB") and _has_transparency(im))
    want = "L" if channels == 1 else "RGB"
    steps = []
    if (w, h) != (image_size, image_size):
        size, (left, top, right, bottom) = resize_crop_plan(w, h, image_size)
        if size != (w, h):
            steps.append(f"resized to {size[0]}x{size[1]} (bilinear, aspect kept)")
        cut = ([f"{size[0] - image_size} columns ({left} left, {size[0] - right} right)"] if size[0] > image_size
               else []) + ([f"{size[1] - image_size} rows ({top} top, {size[1] - bottom} bottom)"]
                           if size[1] > image_size else [])
        if cut:
            steps.append(f"centre-cropped to {image_size}x{image_size} (cut {' and '.join(cut)})")
    if transparent:
        steps.append(f"transparency composited on {check_background(background)}")
    if mode != want:
        steps.append(f"converted from {mode} to {'grayscale (L)' if want == 'L' else 'RGB'}")
    if not steps:
        return None
    model = f"{image_size}x{image_size} {'grayscale' if channels == 1 else 'RGB'}"
    return f"image {path} ({w}x{h} {mode}) does not match the model's {model} input: {', '.join(steps)}"


def square_array(im: "Image.Image", image_size: int, crop: bool = True) -> np.ndarray:
    """``"L"``/``"RGB"`` image -> uint8 ``[C, image_size, image_size]`` (C = 1 or 3).

    ``crop``: shorter side resized to ``image_size`` (Pillow bilinear, which antialiases when
    shrinking) then centre-cropped, with torchvision's ``Resize(int)`` / ``CenterCrop`` sizes and
    offsets; otherwise a plain (aspect-changing) bilinear resize.
    """
    from PIL import Image

    w, h = im.size
    if crop:
        if (w, h) != (image_size, image_size):
            size, box = resize_crop_plan(w, h, image_size)
            if size != (w, h):
                im = im.resize(size, Image.BILINEAR)
            im = im.crop(box)
    elif (w, h) != (image_size, image_size):
        im = im.resize((image_size, image_size), Image.BILINEAR)
    a = np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only arrays)
    return np.ascontiguousarray(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))


def load_image(path: str | Path, image_size: int, channels: int, background: str = "white") -> torch.Tensor:
    """One image file as the model sees it: float32 ``[channels, image_size, image_size]`` in [-1, 1].

    ``to_model_mode`` (transparency on ``background``), then shorter side to ``image_size`` and a
    centre crop (:func:`square_array`), then ``uint8 / 127.5 - 1``: the same values
    ``ClassDataset.get`` gives for the same file in a ``folder`` dataset. Use
    :func:`dataset_background` to match a trained run's dataset.

    Raises:
        UserError: as :func:`read_model_image`; an ``image_size`` below 1.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"image size {image_size!r} is not a positive integer: pass a positive image size")
    with bomb_warnings_as_errors():
        im = read_model_image(path, channels, background)
    return torch.from_numpy(square_array(im, image_size)).float().div_(127.5).sub_(1.0)


def load_images(paths: Sequence[str | Path], image_size: int, channels: int, background: str = "white") -> torch.Tensor:
    """Several files with :func:`load_image`: float32 ``[len(paths), channels, image_size, image_size]``.

    Raises:
        UserError: no paths, or any file :func:`load_image` refuses (the first, by name).
    """
    if not paths:
        raise UserError("no images given: pass the paths of one or more image files")
    return torch.stack([load_image(p, image_size, channels, background) for p in paths])
