"""The image loader (orchestrator.data.images): every Pillow mode, with the converted pixels checked.

Each test writes real files with Pillow and reads them back through ``load_image`` (what
``generate --images`` uses) or the ``folder`` dataset, at their own size so no resize blurs the
values. ``u8`` turns the model's [-1, 1] floats back into 0..255 levels to compare with.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from orchestrator.data import dataset_background, load_dataset, load_image, load_images, to_model_mode
from orchestrator.errors import UserError

S = 16  # every test image is S x S, loaded at S: no resampling


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSIG_CACHE", str(tmp_path / "cache"))


def u8(t: torch.Tensor) -> np.ndarray:
    """Model tensor in [-1, 1] -> uint8 levels (exact inverse of uint8 / 127.5 - 1)."""
    assert t.dtype == torch.float32 and t.min() >= -1 and t.max() <= 1
    return np.rint((t.numpy() + 1) * 127.5).astype(np.int64)


def square_mask() -> np.ndarray:
    m = np.zeros((S, S), dtype=bool)
    m[4:12, 4:12] = True
    return m


def check_square(t: torch.Tensor, outside: int | tuple, inside: int | tuple) -> None:
    """Every pixel outside the centre square is ``outside``, every pixel inside is ``inside`` (per channel)."""
    a = u8(t)
    m = square_mask()
    for c in range(a.shape[0]):
        out_v = outside if isinstance(outside, int) else outside[c]
        in_v = inside if isinstance(inside, int) else inside[c]
        assert (a[c][~m] == out_v).all(), (c, np.unique(a[c][~m]), out_v)
        assert (a[c][m] == in_v).all(), (c, np.unique(a[c][m]), in_v)


# ---------------------------------------------------------------------------------------------
# transparency


def rgba_grey_square(path: Path) -> Path:
    """Transparent background whose hidden colour is black, an opaque grey (128) square."""
    a = np.zeros((S, S, 4), dtype=np.uint8)
    a[square_mask()] = (128, 128, 128, 255)
    Image.fromarray(a, "RGBA").save(path)
    return path


def test_rgba_transparent_background_composited_on_background(tmp_path):
    p = rgba_grey_square(tmp_path / "a.png")
    check_square(load_image(p, S, 1), 255, 128)  # not the black under the transparency
    check_square(load_image(p, S, 3), 255, 128)
    check_square(load_image(p, S, 1, background="black"), 0, 128)
    check_square(load_image(p, S, 3, background="black"), 0, 128)
    # half-transparent red over white: 0.5*255 + 0.5*255 (R), 0.5*0 + 0.5*255 (G, B)
    a = np.zeros((S, S, 4), dtype=np.uint8)
    a[...] = (255, 0, 0, 0)
    a[square_mask()] = (255, 0, 0, 128)
    Image.fromarray(a, "RGBA").save(tmp_path / "half.png")
    half = 255 - round(255 * 128 / 255)  # 127
    check_square(load_image(tmp_path / "half.png", S, 3), (255, 255, 255), (255, half, half))
    check_square(load_image(tmp_path / "half.png", S, 3, background="black"), (0, 0, 0), (128, 0, 0))


def test_la_and_pa(tmp_path):
    la = np.zeros((S, S, 2), dtype=np.uint8)
    la[square_mask()] = (90, 255)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    check_square(load_image(tmp_path / "la.png", S, 1), 255, 90)
    check_square(load_image(tmp_path / "la.png", S, 3, "black"), 0, 90)
    # PA: palette index 1 is green, alpha 0 outside the square
    pa = Image.new("PA", (S, S), (0, 0))
    pa.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    idx = np.zeros((S, S), dtype=np.uint8)
    idx[square_mask()] = 1
    alpha = np.where(square_mask(), 255, 0).astype(np.uint8)
    pa.putdata(list(zip(idx.ravel().tolist(), alpha.ravel().tolist())))
    check_square(to_tensor(to_model_mode(pa, 3, "white")), (255, 255, 255), (0, 200, 0))
    check_square(to_tensor(to_model_mode(pa, 1, "black")), 0, round(200 * 587 / 1000))


def to_tensor(im: Image.Image) -> torch.Tensor:
    a = np.asarray(im, dtype=np.uint8)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(a.copy()).float() / 127.5 - 1


def test_palette_with_transparency_index_png_and_gif(tmp_path):
    idx = np.zeros((S, S), dtype=np.uint8)
    idx[square_mask()] = 1
    p = Image.fromarray(idx, "P")
    p.putpalette([0, 0, 0, 100, 100, 100] + [0] * 762)
    p.save(tmp_path / "p.png", transparency=0)  # tRNS: index 0 transparent
    p.save(tmp_path / "p.gif", transparency=0)
    for f in ("p.png", "p.gif"):
        with Image.open(tmp_path / f) as im:
            assert im.mode == "P" and "transparency" in im.info
        check_square(load_image(tmp_path / f, S, 1), 255, 100)
        check_square(load_image(tmp_path / f, S, 3, "black"), 0, 100)


def test_palette_without_transparency_expanded(tmp_path):
    idx = np.zeros((S, S), dtype=np.uint8)
    idx[square_mask()] = 1
    p = Image.fromarray(idx, "P")
    p.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)  # blue background, red square
    p.save(tmp_path / "p.png")
    check_square(load_image(tmp_path / "p.png", S, 3), (0, 0, 255), (255, 0, 0))
    # grey is Pillow's ITU-R 601-2 luma: round(255 * 114/1000) = 29 (blue), round(255 * 299/1000) = 76 (red)
    check_square(load_image(tmp_path / "p.png", S, 1), 29, 76)


def test_grey_and_rgb_with_a_transparent_colour(tmp_path):
    a = np.full((S, S), 7, dtype=np.uint8)
    a[square_mask()] = 60
    Image.fromarray(a, "L").save(tmp_path / "l.png", transparency=7)  # tRNS grey key
    check_square(load_image(tmp_path / "l.png", S, 1), 255, 60)
    Image.fromarray(a, "L").save(tmp_path / "plain.png")
    check_square(load_image(tmp_path / "plain.png", S, 1), 7, 60)  # no tRNS: as stored
    check_square(load_image(tmp_path / "plain.png", S, 3), 7, 60)


# ---------------------------------------------------------------------------------------------
# plain modes


def test_one_bit(tmp_path):
    a = np.ones((S, S), dtype=bool)
    a[square_mask()] = False  # black ink on white, like Omniglot
    Image.fromarray(a).convert("1").save(tmp_path / "b.png")
    with Image.open(tmp_path / "b.png") as im:
        assert im.mode == "1"
    check_square(load_image(tmp_path / "b.png", S, 1), 255, 0)
    check_square(load_image(tmp_path / "b.png", S, 3), 255, 0)


def test_rgb_to_grey_is_luma(tmp_path):
    a = np.zeros((S, S, 3), dtype=np.uint8)
    a[...] = (10, 20, 30)
    a[square_mask()] = (200, 100, 50)
    Image.fromarray(a, "RGB").save(tmp_path / "c.png")
    check_square(load_image(tmp_path / "c.png", S, 3), (10, 20, 30), (200, 100, 50))
    luma = lambda r, g, b: round(r * 0.299 + g * 0.587 + b * 0.114)  # noqa: E731
    check_square(load_image(tmp_path / "c.png", S, 1), luma(10, 20, 30), luma(200, 100, 50))


def test_cmyk(tmp_path):
    a = np.zeros((S, S, 4), dtype=np.uint8)  # no ink: white paper
    a[square_mask()] = (255, 0, 0, 0)  # full cyan
    Image.fromarray(a, "CMYK").save(tmp_path / "c.tif")
    with Image.open(tmp_path / "c.tif") as im:
        assert im.mode == "CMYK"
    check_square(load_image(tmp_path / "c.tif", S, 3), (255, 255, 255), (0, 255, 255))
    a[square_mask()] = (0, 0, 0, 155)  # black ink only: 255 - 155 = 100 in every channel
    Image.fromarray(a, "CMYK").save(tmp_path / "k.tif")
    check_square(load_image(tmp_path / "k.tif", S, 1), 255, 100)


# ---------------------------------------------------------------------------------------------
# 16-bit, 32-bit integer and float


def test_i16_png_scaled_by_16_bit_range(tmp_path):
    a = np.full((S, S), 65535, dtype=np.uint16)
    a[square_mask()] = 128 * 257  # 32896: the 16-bit grey that is 8-bit 128
    a[0, 0] = 0
    Image.fromarray(a).save(tmp_path / "w.png")
    with Image.open(tmp_path / "w.png") as im:
        assert im.mode.startswith("I;16")
    t = load_image(tmp_path / "w.png", S, 1)
    v = u8(t)[0]
    assert v[0, 0] == 0 and v[0, 1] == 255 and (v[square_mask()] == 128).all()
    assert u8(load_image(tmp_path / "w.png", S, 3)).shape == (3, S, S)
    # a dark 16-bit image stays dark: no stretching to its own min/max
    Image.fromarray(np.full((S, S), 4096, dtype=np.uint16)).save(tmp_path / "dark.png")
    assert (u8(load_image(tmp_path / "dark.png", S, 1)) == 16).all()  # 4096 / 65535 * 255 = 15.94


def test_i32_tiff(tmp_path):
    a = np.full((S, S), 60000, dtype=np.int32)
    a[square_mask()] = 30000
    Image.fromarray(a, "I").save(tmp_path / "i.tif")
    with Image.open(tmp_path / "i.tif") as im:
        assert im.mode == "I"
    check_square(load_image(tmp_path / "i.tif", S, 1), round(60000 / 65535 * 255), round(30000 / 65535 * 255))
    small = np.where(square_mask(), 200, 10).astype(np.int32)  # within 0..255: as 8-bit levels
    Image.fromarray(small, "I").save(tmp_path / "small.tif")
    check_square(load_image(tmp_path / "small.tif", S, 1), 10, 200)
    signed = np.where(square_mask(), 500, -500).astype(np.int32)  # negative: min-max
    Image.fromarray(signed, "I").save(tmp_path / "signed.tif")
    check_square(load_image(tmp_path / "signed.tif", S, 1), 0, 255)


def test_float_tiff_in_unit_range_is_not_near_black(tmp_path):
    a = np.full((S, S), 1.0, dtype=np.float32)
    a[square_mask()] = 0.25
    Image.fromarray(a, "F").save(tmp_path / "f.tif")
    with Image.open(tmp_path / "f.tif") as im:
        assert im.mode == "F"
    check_square(load_image(tmp_path / "f.tif", S, 1), 255, 64)  # 0.25 * 255 = 63.75
    check_square(load_image(tmp_path / "f.tif", S, 3), 255, 64)


def test_float_tiff_other_ranges_and_non_finite(tmp_path):
    cases = {
        "sym": (np.where(square_mask(), 0.0, -1.0), 0, 128),  # [-1, 1]: (x + 1) / 2
        "bytes": (np.where(square_mask(), 200.0, 3.0), 3, 200),  # [0, 255]: as levels
        "wide": (np.where(square_mask(), 65535.0, 0.0), 0, 255),  # [0, 65535]
        "other": (np.where(square_mask(), 1e6, -1e6), 0, 255),  # none fits: min-max
    }
    for name, (a, outside, inside) in cases.items():
        Image.fromarray(a.astype(np.float32), "F").save(tmp_path / f"{name}.tif")
        check_square(load_image(tmp_path / f"{name}.tif", S, 1), outside, inside)
    nan = np.zeros((S, S), dtype=np.float32)
    nan[3, 3] = np.nan
    Image.fromarray(nan, "F").save(tmp_path / "nan.tif")
    with pytest.raises(UserError, match=r"nan\.tif.*mode F.*NaN or infinite") as e:
        load_image(tmp_path / "nan.tif", S, 1)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# shapes, resizing, orientation, the dataset path


def test_shape_dtype_range_and_resize(tmp_path):
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "wide.png")
    t = load_image(tmp_path / "wide.png", 8, 3)
    assert t.shape == (3, 8, 8) and t.dtype == torch.float32
    assert torch.allclose(t[0], torch.ones(1)) and torch.allclose(t[1:], -torch.ones(1))
    two = load_images([tmp_path / "wide.png", str(tmp_path / "wide.png")], 8, 1)
    assert two.shape == (2, 1, 8, 8)
    with pytest.raises(UserError, match="no images given"):
        load_images([], 8, 1)
    with pytest.raises(UserError, match="channels"):
        load_image(tmp_path / "wide.png", 8, 2)
    with pytest.raises(UserError, match="background 'grey'.*white or black"):
        load_image(tmp_path / "wide.png", 8, 1, background="grey")


def test_exif_orientation_applied(tmp_path):
    a = np.zeros((4, 8), dtype=np.uint8)  # stored 8 wide, 4 high; left half white
    a[:, :4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": shown 4 wide, 8 high, top half white
    Image.fromarray(a, "L").save(tmp_path / "o.png", exif=exif)
    v = u8(load_image(tmp_path / "o.png", 4, 1))[0]  # 4 x 8, centre crop rows 2..5
    assert (v[:2] == 255).all() and (v[2:] == 0).all()


def test_folder_dataset_uses_the_loader(tmp_path):
    """A transparent RGBA class folder with --channels 1 is not all black (the issue's failure)."""
    root = tmp_path / "d"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            rgba_grey_square(root / c / f"{i}.png")
    ds = load_dataset("folder", root, image_size=S, channels=1)
    check_square(ds.get(0)[0], 255, 128)
    assert torch.equal(ds.get(0)[0], load_image(root / "a" / "0.png", S, 1, dataset_background("folder")))
    dark = load_dataset("folder", root, image_size=S, channels=3, background="black")
    check_square(dark.get(0)[0], 0, 128)
    assert dataset_background("omniglot") == "white" and dataset_background("mnist") == "black"
    assert dataset_background("digits") == "black" and dataset_background("fashion_mnist") == "black"
    with pytest.raises(UserError, match="background"):
        load_dataset("folder", root, image_size=S, background="pink")


# ---------------------------------------------------------------------------------------------
# refusals: one line naming the file and the fix


def test_missing_unreadable_and_not_images(tmp_path):
    cases = {
        tmp_path / "missing.png": "does not exist",
        tmp_path: "is a folder",
        tmp_path / "text.png": "not an image Pillow can read",
    }
    (tmp_path / "text.png").write_text("hello")
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
    (tmp_path / "cut.png").write_bytes(full.read_bytes()[:400])  # truncated
    cases[tmp_path / "cut.png"] = "remove or replace"
    for path, needle in cases.items():
        with pytest.raises(UserError, match=needle) as e:
            load_image(path, 8, 1)
        assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_decompression_bomb_guard_names_file_and_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.new("L", (12, 12)).save(tmp_path / "warn.png")  # 144 > 100: Pillow only warns
    Image.new("L", (20, 20)).save(tmp_path / "error.png")  # 400 > 2 * 100: Pillow raises
    for name, pixels in (("warn.png", "144"), ("error.png", "400")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing may leak as a warning either
            with pytest.raises(UserError, match=rf"{name} has {pixels} pixels.*MAX_IMAGE_PIXELS = 100.*shrink") as e:
                load_image(tmp_path / name, 8, 1)
        assert "\n" not in str(e.value)
    # through the dataset's thread pool (>= 64 files), and a caller that ignores warnings
    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    for i in range(70):
        Image.new("L", (8, 8), i).save(root / "a" / f"{i:02d}.png")
    Image.new("L", (12, 12)).save(root / "a" / "zz_big.png")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("ignore")
        with pytest.raises(UserError, match=r"zz_big\.png has 144 pixels.*MAX_IMAGE_PIXELS = 100"):
            load_dataset("folder", root, image_size=8)
    assert not seen
