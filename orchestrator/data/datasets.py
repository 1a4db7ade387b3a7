"""Class-indexed image datasets: every loader returns one ``ClassDataset`` of uint8 images.

Which datasets exist, and what the harness knows about each (its loader here, background, default split,
data root, help line), is declared once in ``data/registry.py``; ``load_dataset`` looks the name up
there and calls the declared loader as ``loader(spec, root, image_size, channels, background)``.

Why one in-memory shape: splits, samplers and evaluation index images by class many times a
step, so each loader decodes once, resizes to ``image_size`` once, and keeps uint8 (70k MNIST
images at 32x32 are 72 MB). ``get`` converts to float in [-1, 1] only for the images asked for.

Pixel conventions are each dataset's own, not harmonised: ``digits``, ``mnist`` and
``fashion-mnist`` are light ink/object on black; ``omniglot`` is NOT inverted and stays dark ink
on a white background, as the PNGs are drawn; ``folder`` keeps the photos' colours. Image files
(``omniglot``, ``folder``) are decoded by ``orchestrator.data.images`` (one rule for every Pillow
mode; transparency composited on the dataset's background: white unless overridden).

Downloads: only when ``root`` is None, ``mnist``/``fashion-mnist``/``omniglot`` try torchvision's
download into ``$FSIG_CACHE/datasets`` (default ``~/.cache/fsig/datasets``); a failure (e.g. no
network) is a ``UserError``. A given ``root`` is read as it lies and never written to.

Caching: Omniglot decodes in about a second for 5k images (the full 32k set in a few seconds),
so it is not cached. ``folder`` datasets (e.g. CUB-200, 11,788 JPEGs) are cached as an ``.npz``
under ``$FSIG_CACHE`` keyed by the file list (paths, sizes, mtimes), ``image_size`` and
``channels``, since every Ray worker loads the dataset; an unwritable cache is skipped.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib
import json
import os
import struct
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from orchestrator.data import registry
from orchestrator.data.images import (
    bomb_warnings_as_errors, check_background, read_model_image, square_array,
)
from orchestrator.errors import UserError

if TYPE_CHECKING:
    from PIL import Image



# Derived views of the registry (``data/registry.py``), kept for readers that index them.
NPY_BENCHMARKS = MappingProxyType({d.name: d.npy for d in registry.declared() if d.npy is not None})
DATASET_NAMES = registry.names()

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
OMNIGLOT_SPLITS = ("images_background", "images_evaluation", "images_background_small1", "images_background_small2")
_CACHE_VERSION = 2  # 2: images.read_model_image (alpha, 16-bit, float rules)


@dataclass(eq=False)
class ClassDataset:
    """All images of a dataset in memory, indexed by class (equality is identity: images are big)."""

    name: str
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: np.ndarray  # int64 [N], 0..num_classes-1
    class_names: list[str]
    class_groups: list[str]
    default_novel_groups: list[str] | None = None
    _by_class: list[np.ndarray] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if len(self.class_groups) != len(self.class_names):
            raise ValueError("class_groups must give one group per class")
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(len(self.class_names) + 1))
        self._by_class = [np.sort(order[bounds[c]:bounds[c + 1]]) for c in range(len(self.class_names))]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image, what a method is built for."""
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    def class_indices(self, c: int) -> np.ndarray:
        """Sorted indices (into ``images``) of class ``c``'s images."""
        return self._by_class[c]

    def get(self, idx: Sequence[int] | np.ndarray | torch.Tensor | int) -> torch.Tensor:
        """Images ``idx`` as float32 in [-1, 1], shape [len(idx), C, H, W] (an int gives [1, C, H, W])."""
        if isinstance(idx, (int, np.integer)):
            idx = [int(idx)]
        index = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return self.images[index].float().div_(127.5).sub_(1.0)

    def class_images(self, c: int) -> torch.Tensor:
        """Every image of class ``c``, float32 in [-1, 1]."""
        return self.get(self.class_indices(c))


# ----------------------------------------------------------------------------------------------
# entry point


def load_dataset(name: str, root: str | Path | None = None, image_size: int = 32, channels: int = 1,
                 background: str | None = None) -> ClassDataset:
    """Load dataset ``name`` resized to ``image_size`` square with ``channels`` (1 or 3) channels.

    ``background`` (``"white"`` or ``"black"``): what transparent pixels of decoded image files are
    composited on; None takes the dataset's own (its declaration's ``background``: white for
    ``omniglot`` and ``folder``, black for the light-on-black digit sets, whose files are not
    images and so have no transparency). See ``orchestrator.data.images`` for the conversion rule.

    Raises:
        UserError: unknown dataset, bad size / channels / background, a missing or unreadable
            root, or any file the dataset's loader cannot read (one line naming it and the fix).
    """
    spec = registry.spec(name)
    if not isinstance(image_size, int) or image_size < 8:
        raise UserError(f"image size {image_size!r} is too small: pass an image size of at least 8")
    if channels not in (1, 3):
        raise UserError(f"channels must be 1 or 3, got {channels!r}: pass channels 1 (grayscale) or 3 (RGB)")
    background = spec.background if background is None else check_background(background)
    if spec.needs_root and (root is None or not str(root).strip()):
        raise UserError(f"{spec.name} needs a data root (it is not downloaded): pass --data-root pointing at "
                        f"{spec.root_holds}")
    module, function = spec.loader.split(":")
    return getattr(importlib.import_module(module), function)(spec, root, image_size, channels, background)


def absolute_root(root: str | Path | None) -> str:
    """``root`` as an absolute path string, to record with a run (ours); "" (or None, blank) stays "".

    ``~`` is expanded and the path made absolute against the current directory with
    ``os.path.abspath`` (normalised, symlinks kept as named); existence is not checked here
    (``load_dataset`` refuses a missing root). A run that records this can be evaluated from any
    directory.
    """
    if root is None or not str(root).strip():
        return ""
    return os.path.abspath(os.path.expanduser(str(root)))


def check_root(spec: registry.DatasetSpec, root: str | Path | None) -> Path | None:
    """The data root as a ``Path`` (None when not given: None or blank), refused unless it is a readable folder.

    Every dataset refuses a root that does not exist, is a file (or anything but a folder), or
    cannot be listed, with one line naming ``--data-root``. A dataset that reads no root (``digits``
    ships with scikit-learn: ``spec.no_root``) still refuses a missing one (a mistyped path is not ignored).

    Raises:
        UserError: as above.
    """
    if root is None or not str(root).strip():
        return None
    path = Path(root).expanduser()
    fix = (f"{spec.name} {spec.no_root}, so leave --data-root out (or pass an existing folder)" if spec.no_root
           else f"pass --data-root pointing at {spec.root_holds}")
    if not path.exists():
        raise UserError(f"data root {path} does not exist: {fix}")
    if not path.is_dir():
        raise UserError(f"data root {path} is a file, not a folder: {fix}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise UserError(f"data root {path} cannot be read (permission denied): make it readable, or {fix}")
    return path


def cache_dir() -> Path:
    """Where downloads and decoded caches go: ``$FSIG_CACHE`` or ``~/.cache/fsig``."""
    return Path(os.environ.get("FSIG_CACHE") or Path.home() / ".cache" / "fsig").expanduser()


# ----------------------------------------------------------------------------------------------
# shared helpers


def _resize_uint8(x: torch.Tensor, size: int, batch: int = 8192) -> torch.Tensor:
    """Bilinear resize of uint8 [N, C, h, w] to [N, C, size, size] in batches (low peak memory)."""
    if x.shape[-2:] == (size, size):
        return x.contiguous()
    antialias = size < max(x.shape[-2:])  # only downsampling aliases
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, x.shape[0], batch):
        y = F.interpolate(x[i:i + batch].float(), size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
        out[i:i + batch] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grayscale [N, 1, H, W] replicated to 3 channels when RGB is asked for."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1 and channels == 3:
        return x.repeat(1, 3, 1, 1)
    raise ValueError(f"cannot turn {x.shape[1]} channels into {channels}")


def _decode_many(items: Sequence[tuple[str, Callable[[], bytes | Path]]], channels: int, background: str,
                 finish: Callable[["Image.Image"], np.ndarray]) -> list[np.ndarray]:
    """Decode images with ``images.read_model_image`` in a thread pool (PIL releases the GIL).

    ``finish`` turns each model-mode ("L"/"RGB") image into its uint8 array. A bad file, or one
    over Pillow's decompression-bomb limit, is a ``UserError`` naming it.
    """

    def one(item: tuple[str, Callable[[], bytes | Path]]) -> np.ndarray:
        label, read = item
        try:
            src = read()
        except OSError as e:
            raise UserError(f"cannot read image {label} ({type(e).__name__}: {e}): remove or replace this file") from None
        return finish(read_model_image(src, channels, background, label=label))

    workers = max(1, min(8, os.cpu_count() or 1))
    with bomb_warnings_as_errors():  # process-wide filter, entered once here, not in the threads
        if len(items) < 64 or workers == 1:
            return [one(it) for it in items]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, items, chunksize=64))


def _dataset(name: str, images: torch.Tensor, labels: np.ndarray, class_names: list[str],
             class_groups: list[str] | None = None, default_novel_groups: list[str] | None = None) -> ClassDataset:
    return ClassDataset(name=name, images=images, labels=labels, class_names=list(class_names),
                        class_groups=list(class_groups if class_groups is not None else class_names),
                        default_novel_groups=default_novel_groups)


# ----------------------------------------------------------------------------------------------
# digits (ships with scikit-learn: the no-download default)


def load_digits(spec: registry.DatasetSpec, root: str | Path | None, image_size: int, channels: int, background: str) -> ClassDataset:
    """sklearn's 1,797 8x8 handwritten digits, 0..16 scaled to 0..255, bilinear-upsampled (a given root must exist)."""
    from sklearn.datasets import load_digits as sklearn_digits

    check_root(spec, root)
    d = sklearn_digits()
    x = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8))[:, None]
    x = _to_channels(_resize_uint8(x, image_size), channels)
    return _dataset(spec.name, x, d.target.astype(np.int64), [str(i) for i in range(10)])


# ----------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (IDX files)

_IDX_FILES = {
    "train_images": "train-images{sep}idx3-ubyte",
    "train_labels": "train-labels{sep}idx1-ubyte",
    "test_images": "t10k-images{sep}idx3-ubyte",
    "test_labels": "t10k-labels{sep}idx1-ubyte",
}
def _find_idx(folder: Path) -> dict[str, Path]:
    """The IDX files present in ``folder`` (gzipped or raw, ``-`` or ``.`` before idx)."""
    found = {}
    for key, pattern in _IDX_FILES.items():
        for sep in ("-", "."):
            for suffix in (".gz", ""):
                p = folder / (pattern.format(sep=sep) + suffix)
                if p.is_file():
                    found[key] = p
                    break
            if key in found:
                break
    return found


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one IDX file (big-endian header, uint8 payload)."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
        got, = struct.unpack(">I", data[:4])
        if got != magic:
            raise ValueError(f"magic number {got:#x}, expected {magic:#x}")
        ndim = magic & 0xFF
        shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        if arr.size != int(np.prod(shape)):
            raise ValueError(f"{arr.size} values for shape {shape}")
        return arr.reshape(shape)
    except (OSError, EOFError, ValueError, struct.error, zlib.error) as e:
        raise UserError(f"cannot read IDX file {path} ({e}): remove or replace it with the upstream file") from None


def load_idx(spec: registry.DatasetSpec, root: str | Path | None, image_size: int, channels: int, background: str) -> ClassDataset:
    """An MNIST-style IDX dataset (MNIST, Fashion-MNIST), train+test together (70,000 images) as one class-indexed set.

    ``spec.options``: ``folders`` (the layouts looked for under the root, first with IDX files wins),
    ``classes`` (the class names by label) and ``torchvision`` (the ``torchvision.datasets`` class that
    downloads it when no root is given).
    """
    key = spec.name
    root = check_root(spec, root)
    if root is None:
        root = cache_dir() / "datasets"
        folder = _idx_folder(spec, root)
        if folder is None:
            _download_torchvision(spec, root, "train")
            folder = _idx_folder(spec, root)
    else:
        folder = _idx_folder(spec, root)
    if folder is None:
        looked = ", ".join(str(root / d) for d in spec.options["folders"])
        raise UserError(f"no {key} IDX files found (looked in {looked}): pass --data-root pointing at "
                        f"{spec.root_holds}")
    files = _find_idx(folder)
    missing = [_IDX_FILES[k].format(sep="-") for k in _IDX_FILES if k not in files]
    if missing:
        raise UserError(f"{key} files missing in {folder}: {', '.join(missing)}: add them (gzipped or raw) to that folder")
    xs = [_read_idx(files["train_images"], 0x803), _read_idx(files["test_images"], 0x803)]
    ys = [_read_idx(files["train_labels"], 0x801), _read_idx(files["test_labels"], 0x801)]
    for x, y, k in ((xs[0], ys[0], "train"), (xs[1], ys[1], "test")):
        if len(x) != len(y):
            raise UserError(f"{key} {k} images ({len(x)}) and labels ({len(y)}) differ in count in {folder}: replace them with the upstream files")
    x = torch.from_numpy(np.concatenate(xs))[:, None]
    y = np.concatenate(ys).astype(np.int64)
    x = _to_channels(_resize_uint8(x, image_size), channels)
    return _dataset(key, x, y, list(spec.options["classes"]))


def _idx_folder(spec: registry.DatasetSpec, root: Path) -> Path | None:
    """First candidate layout under ``root`` holding any IDX file (the caller reports missing ones)."""
    for d in spec.options["folders"]:
        folder = root / d
        if folder.is_dir() and _find_idx(folder):
            return folder
    return None


def _download_torchvision(spec: registry.DatasetSpec, root: Path, part: str) -> None:
    """Fetch both parts (``part=True`` and ``part=False``: ``train`` for MNIST, ``background`` for Omniglot) with
    the ``torchvision.datasets`` class ``spec.options["torchvision"]`` into our cache; any failure (no network)
    is a UserError."""
    key = spec.name
    try:
        import torchvision.datasets as tvd

        root.mkdir(parents=True, exist_ok=True)
        for flag in (True, False):
            getattr(tvd, spec.options["torchvision"])(str(root), download=True, **{part: flag})
    except Exception as e:  # noqa: BLE001 - network, disk, checksum: all mean "bring your own copy"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"no local {key} data and the download into {root} failed ({msg}): pass --data-root pointing at "
                        f"{spec.root_holds}") from None


# ----------------------------------------------------------------------------------------------
# Omniglot


def _omniglot_sources(root: Path) -> list[tuple[str, str, Path]]:
    """(split, kind 'dir'|'zip', path) for each split present; an extracted folder wins over its zip."""
    sources = []
    for base in (root, root / "omniglot", root / "omniglot-py"):
        if not base.is_dir():
            continue
        for split in OMNIGLOT_SPLITS:
            if any(s == split for s, _, _ in sources):
                continue
            if (base / split).is_dir():
                sources.append((split, "dir", base / split))
            elif (base / f"{split}.zip").is_file():
                sources.append((split, "zip", base / f"{split}.zip"))
    return sources


def load_omniglot(spec: registry.DatasetSpec, root: str | Path | None, image_size: int, channels: int, background: str) -> ClassDataset:
    """Every Omniglot split present, merged and de-duplicated by Alphabet/character and file name.

    Images are read with ``images.read_model_image`` as grey (any transparency on ``background``),
    resized with PIL bilinear from 105x105 and kept dark-ink-on-white (not inverted).
    """
    root = check_root(spec, root)
    if root is None:
        root = cache_dir() / "datasets"
        if not _omniglot_sources(root):
            _download_torchvision(spec, root, "background")
    sources = _omniglot_sources(root)
    if not sources:
        raise UserError(f"no omniglot archives found in {root} (nor {root / 'omniglot'}): pass --data-root pointing at "
                        f"{spec.root_holds}")
    items: dict[tuple[str, str, str], tuple[str, Callable[[], bytes | Path]]] = {}
    evaluation: set[str] = set()
    for split, kind, path in sources:
        for alphabet, char, fname, label, read in _omniglot_entries(kind, path):
            if split == "images_evaluation":
                evaluation.add(alphabet)
            items.setdefault((alphabet, char, fname), (label, read))
    if not items:
        raise UserError(f"the omniglot archives in {root} hold no PNG images: replace them with the upstream archives")
    keys = sorted(items)
    class_keys = sorted({(a, c) for a, c, _ in keys})
    class_of = {k: i for i, k in enumerate(class_keys)}

    def finish(im: "Image.Image") -> np.ndarray:
        # the 1-bit PNG is 8-bit grey by now, so bilinear gives real grey levels at the stroke edges
        return square_array(im, image_size, crop=False)

    arrays = _decode_many([items[k] for k in keys], 1, background, finish)
    x = _to_channels(torch.from_numpy(np.stack(arrays)), channels)
    labels = np.array([class_of[(a, c)] for a, c, _ in keys], dtype=np.int64)
    return _dataset(spec.name, x, labels, [f"{a}/{c}" for a, c in class_keys], [a for a, _ in class_keys],
                    sorted(evaluation) or None)


def _omniglot_entries(kind: str, path: Path) -> Iterable[tuple[str, str, str, str, Callable[[], bytes | Path]]]:
    """(alphabet, character, file name, label for errors, reader) for each PNG of one split."""
    if kind == "dir":
        for p in sorted(path.glob("*/*/*.png")):
            yield p.parent.parent.name, p.parent.name, p.name, str(p), (lambda p=p: p)
        return
    try:
        zf = zipfile.ZipFile(path)
        names = zf.namelist()
    except (OSError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot open omniglot archive {path} ({e}): remove or replace it with the upstream archive") from None
    for n in names:
        parts = n.split("/")
        if len(parts) < 3 or not n.lower().endswith(".png") or parts[-1].startswith("."):
            continue
        data = zf.read(n)  # read here (one thread): decoding then runs in parallel
        yield parts[-3], parts[-2], parts[-1], f"{path}:{n}", (lambda data=data: data)


# ----------------------------------------------------------------------------------------------
# folder of class sub-folders (CUB-200 images/, Animal Faces, FIGR-8, ...)


def load_folder(spec: registry.DatasetSpec, root: str | Path | None, image_size: int, channels: int, background: str) -> ClassDataset:
    """root/<class>/<image>: one class per sub-folder (sorted by name), shorter side resized then centre-cropped.

    Every file goes through ``images.read_model_image`` (any Pillow mode; transparency composited on
    ``background``, white unless the caller overrides it), then ``images.square_array``.
    """
    root = check_root(spec, root)
    if root is None:  # load_dataset refuses this first for a declaration with needs_root
        raise UserError(f"{spec.name} needs a data root: pass --data-root pointing at {spec.root_holds}")
    classes: list[tuple[str, list[Path]]] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            files = sorted(f for f in d.iterdir() if f.is_file() and not f.name.startswith(".")
                           and f.suffix.lower() in IMAGE_EXTENSIONS)
        except OSError as e:
            raise UserError(f"cannot list class folder {d} ({type(e).__name__}): make it readable or remove it") from None
        if files:
            classes.append((d.name, files))
    if not classes:
        raise UserError(f"no class sub-folders with images in {root}: pass --data-root pointing at "
                        f"{spec.root_holds} (images directly in the root are not read)")
    files = [f for _, fs in classes for f in fs]
    labels = np.array([i for i, (_, fs) in enumerate(classes) for _ in fs], dtype=np.int64)
    names = [n for n, _ in classes]
    stats = [(str(f.relative_to(root)), *_stat(f)) for f in files]
    key = hashlib.sha256(json.dumps([_CACHE_VERSION, str(root.resolve()), image_size, channels, background, stats]).encode()).hexdigest()[:24]
    cache = cache_dir() / "decoded" / f"folder-{key}.npz"
    x = _read_cache(cache, len(files))
    if x is None:
        arrays = _decode_many([(str(f), (lambda f=f: f)) for f in files], channels, background,
                              lambda im: square_array(im, image_size, crop=True))
        x = np.stack(arrays)
        _write_cache(cache, x)
    return _dataset(spec.name, torch.from_numpy(x), labels, names)


def _stat(f: Path) -> tuple[int, int]:
    s = f.stat()
    return s.st_size, s.st_mtime_ns


def _read_cache(path: Path, n: int) -> np.ndarray | None:
    try:
        with np.load(path) as z:
            x = z["images"]
        return x if len(x) == n and x.dtype == np.uint8 else None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None


def _write_cache(path: Path, x: np.ndarray) -> None:
    """Atomic write (temp file then rename): several Ray workers may load the same folder at once."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, images=x)
        os.replace(tmp, path)
    except OSError:
        pass



# ----------------------------------------------------------------------------------------------
# the field's .npy benchmark arrays (LoFGAN, F2GAN, WaveGAN, ...): classes x images x H x W x C


def npy_path(spec: registry.DatasetSpec, root: str | Path | None) -> Path:
    """The ``.npy`` file of benchmark ``key``: ``root`` itself when it is a file, else ``root/<LoFGAN's file name>``.

    Raises:
        UserError: no root, or neither the file nor the folder's file exists.
    """
    key, bench = spec.name, spec.npy
    fix = f"pass --data-root pointing at {spec.root_holds}; it is not downloaded"
    if root is None or not str(root).strip():
        raise UserError(f"{key} needs a data root: {fix}")
    path = Path(root).expanduser()
    if path.is_dir():
        path = path / bench.file
    if not path.is_file():
        raise UserError(f"data root {path} does not exist: {fix}")
    return path


def load_npy(spec: registry.DatasetSpec, root: str | Path | None, image_size: int, channels: int, background: str) -> ClassDataset:
    """A LoFGAN-style array as a ``ClassDataset``: class c's i-th image is dataset index c * images + i.

    The array is read memory-mapped and converted class by class (VGGFace is ~11 GB): uint8 as is, or
    float in [0, 1] (``float_unit`` arrays, scaled by 255 and rounded as LoFGAN's ``np.uint8(x * 255)``
    after clipping). C must be 1 or 3; RGB to 1 channel uses ITU-R 601-2 luma (PIL's ``convert("L")``).
    Classes are named ``c0000``... by index, each its own group; the unseen classes ``[n_seen:]`` are the
    default novel classes (``splits.make_split``). Images keep their order within a class, so "the first
    ``n_pool`` images" of LoFGAN's main_metric.py are ``class_indices(c)[:n_pool]``.

    Raises:
        UserError: a missing or unreadable file, a wrong shape or dtype, or fewer classes than ``n_seen`` + 1.
    """
    key, bench = spec.name, spec.npy
    path = npy_path(spec, root)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} as a .npy array ({type(e).__name__}: {e}): pass LoFGAN's {bench.file}") from None
    if arr.ndim != 5 or arr.shape[-1] not in (1, 3):
        raise UserError(f"{path} has shape {arr.shape}: {key} needs classes x images x H x W x C (C 1 or 3), "
                        f"as LoFGAN's {bench.file}")
    if arr.shape[0] <= bench.n_seen:
        raise UserError(f"{path} has {arr.shape[0]} classes; {key}'s published split needs more than {bench.n_seen} "
                        f"(unseen classes are [{bench.n_seen}:]): pass the full {bench.file}")
    if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise UserError(f"{path} holds {arr.dtype}: {key} needs uint8 (0..255) or float in [0, 1]")
    n_cls, n_img = arr.shape[:2]
    out = []
    for c in range(n_cls):
        x = np.array(arr[c])  # a writable copy of one class (the memory map stays read-only)
        if x.dtype != np.uint8:
            if float(np.nanmax(x)) > 1.0 + 1e-6 or float(np.nanmin(x)) < -1e-6:
                raise UserError(f"{path}: class {c} has float values outside [0, 1]: save uint8 images or floats in [0, 1]")
            x = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)  # [n, C, H, W]
        if t.shape[1] == 3 and channels == 1:
            t = (t.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True).round_().to(torch.uint8)
        out.append(_resize_uint8(_to_channels(t, channels), image_size))
    images = torch.cat(out)
    labels = np.repeat(np.arange(n_cls, dtype=np.int64), n_img)
    names = [f"c{c:04d}" for c in range(n_cls)]
    return _dataset(key, images, labels, names, default_novel_groups=names[bench.n_seen:])
