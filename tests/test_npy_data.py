"""The field's .npy benchmark arrays (LoFGAN layout) on synthetic arrays of the real shapes, written here."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from orchestrator.data import NPY_BENCHMARKS, load_dataset, make_split
from orchestrator.errors import UserError


def write_npy(path, n_classes: int, n_images: int, side: int = 128, channels: int = 3, dtype=np.uint8, seed: int = 0):
    """A classes x images x H x W x C array whose image (c, i) is identifiable: pixel [0, 0, 0] = c % 256, [0, 1, 0] = i."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n_classes, n_images, side, side, channels), dtype=np.uint8)
    x[:, :, 0, 0, 0] = (np.arange(n_classes) % 256)[:, None]
    x[:, :, 0, 1, 0] = np.arange(n_images)[None, :]
    if dtype != np.uint8:
        x = x.astype(dtype) / 255.0
    np.save(path, x)
    return x


def test_flowers_published_split_and_order_at_128px(tmp_path):
    """Flowers' real image shape (128 x 128 x 3, uint8), 85 seen + 3 unseen classes of 12 images."""
    arr = write_npy(tmp_path / "flower_c8189_s128_data_rgb.npy", 88, 12)
    for root in (tmp_path, tmp_path / "flower_c8189_s128_data_rgb.npy"):  # the folder or the file itself
        ds = load_dataset("flowers-npy", root, image_size=128, channels=3)
        assert ds.num_classes == 88 and ds.image_shape == (3, 128, 128)
    # class c's i-th image is the array's [c, i], in order (LoFGAN's "first num images")
    for c in (0, 85, 87):
        idx = ds.class_indices(c)
        assert list(idx) == list(range(c * 12, c * 12 + 12))
        assert torch.equal(ds.images[idx[5]], torch.from_numpy(arr[c, 5]).permute(2, 0, 1))
    split = make_split(ds, seed=3)
    assert split.novel == [85, 86, 87]  # LoFGAN's data[85:]
    assert len(split.val) == 1 and split.val[0] < 85 and set(split.base) | set(split.val) == set(range(85))


@pytest.mark.parametrize("key,n_classes", [("animalfaces-npy", 121), ("vggface-npy", 1804)])
def test_unseen_classes_by_index(key, n_classes, tmp_path):
    """Smaller images (16 px) than the real 128 so that VGGFace's 1,804 classes stay small; VGGFace as floats in [0, 1]."""
    bench = NPY_BENCHMARKS[key]
    dtype = np.float32 if bench.float_unit else np.uint8
    arr = write_npy(tmp_path / bench.file, n_classes, 3, side=16, dtype=dtype)
    ds = load_dataset(key, tmp_path, image_size=16, channels=3)
    assert make_split(ds, seed=0).novel == list(range(bench.n_seen, n_classes))
    back = np.round(arr * 255).astype(np.uint8) if bench.float_unit else arr
    assert torch.equal(ds.images[ds.class_indices(n_classes - 1)[2]], torch.from_numpy(back[-1, 2]).permute(2, 0, 1))


def test_resize_and_grayscale(tmp_path):
    write_npy(tmp_path / "f.npy", 86, 2)
    ds = load_dataset("flowers-npy", tmp_path / "f.npy", image_size=32, channels=1)
    assert ds.image_shape == (1, 32, 32) and ds.images.dtype == torch.uint8


def test_bad_arrays_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="needs a data root"):
        load_dataset("flowers-npy", None)
    with pytest.raises(UserError, match="does not exist.*flower_c8189_s128_data_rgb.npy"):
        load_dataset("flowers-npy", tmp_path)
    np.save(tmp_path / "flat.npy", np.zeros((90, 4, 8, 8), np.uint8))
    with pytest.raises(UserError, match=r"shape \(90, 4, 8, 8\).*classes x images x H x W x C"):
        load_dataset("flowers-npy", tmp_path / "flat.npy")
    write_npy(tmp_path / "few.npy", 85, 2, side=8)
    with pytest.raises(UserError, match=r"85 classes.*more than 85"):
        load_dataset("flowers-npy", tmp_path / "few.npy", image_size=8)
    np.save(tmp_path / "big.npy", np.full((86, 2, 8, 8, 3), 2.0, np.float32))
    with pytest.raises(UserError, match=r"outside \[0, 1\]"):
        load_dataset("flowers-npy", tmp_path / "big.npy", image_size=8)
