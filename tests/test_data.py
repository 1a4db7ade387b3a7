"""Datasets, splits and the sampler on the real shared data (no mocks)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from orchestrator.data import (
    DATASET_NAMES, ClassDataset, Split, absolute_root, TaskSampler, check_class_sizes, load_dataset, make_split, min_eval_images,
)
from orchestrator.errors import UserError

# MNIST train + test images per digit (the upstream label files)
MNIST_COUNTS = [6903, 7877, 6990, 7141, 6824, 6313, 6876, 7293, 6825, 6958]


@pytest.fixture(scope="module")
def omniglot(data_root):
    return load_dataset("omniglot", data_root, image_size=32)


@pytest.fixture(scope="module")
def mnist(data_root):
    return load_dataset("mnist", data_root, image_size=32)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", image_size=16)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FSIG_CACHE", str(tmp_path / "cache"))  # never touch the user's ~/.cache


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.reshape(len(x), -1)}


# ---------------------------------------------------------------------------------------------
# datasets


def test_omniglot_shared_zips_merge_and_dedupe(omniglot):
    # small1 (136 chars) + small2 (156) overlap on Greek (24) and Latin (26): 242 distinct characters
    assert omniglot.num_classes == 242
    assert omniglot.images.shape == (242 * 20, 1, 32, 32) and omniglot.images.dtype == torch.uint8
    assert all(len(omniglot.class_indices(c)) == 20 for c in range(242))
    assert len(set(omniglot.class_names)) == 242
    assert sorted(set(omniglot.class_groups)) == ["Balinese", "Early_Aramaic", "Greek", "Japanese_(katakana)",
                                                   "Korean", "Latin", "Sanskrit", "Tagalog"]
    assert omniglot.class_groups.count("Greek") == 24 and omniglot.class_groups.count("Latin") == 26
    assert "Greek/character01" in omniglot.class_names
    assert omniglot.default_novel_groups is None  # no images_evaluation in the shared set
    # not inverted: white background, dark ink
    x = omniglot.get(np.arange(100))
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert x[:, :, 0, 0].mean() > 0.9 and x.mean() > 0.5
    c = omniglot.class_names.index("Latin/character01")
    assert torch.equal(omniglot.class_images(c), omniglot.get(omniglot.class_indices(c)))


def test_omniglot_extracted_folders_and_evaluation_alphabets(data_root, tmp_path):
    """Extracted layout under root/omniglot, and images_evaluation's alphabets become the default novel ones."""
    root = tmp_path / "data"
    for zname, alphabet, split in (("images_background_small1", "Balinese", "images_background"),
                                   ("images_background_small2", "Tagalog", "images_evaluation")):
        with zipfile.ZipFile(data_root / "omniglot" / f"{zname}.zip") as z:
            for n in z.namelist():
                parts = n.split("/")
                if len(parts) == 4 and parts[1] == alphabet and n.endswith(".png"):
                    out = root / "omniglot" / split / alphabet / parts[2] / parts[3]
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(z.read(n))
    (root / "omniglot" / "images_background" / "Latin" / "character01").mkdir(parents=True)
    for i in range(4):  # a third alphabet so a val alphabet can be drawn besides base
        Image.new("1", (105, 105), 1).save(root / "omniglot" / "images_background" / "Latin" / "character01" / f"x_{i}.png")
    ds = load_dataset("omniglot", root, image_size=28, channels=3)
    assert ds.image_shape == (3, 28, 28)
    assert ds.default_novel_groups == ["Tagalog"]
    split = make_split(ds, seed=0)
    assert {ds.class_groups[c] for c in split.novel} == {"Tagalog"}
    assert split.novel == [c for c, g in enumerate(ds.class_groups) if g == "Tagalog"]
    assert len({ds.class_groups[c] for c in split.val}) == 1


def test_mnist_shared_files(mnist, data_root, tmp_path):
    assert mnist.images.shape == (70000, 1, 32, 32) and mnist.images.dtype == torch.uint8
    assert mnist.num_classes == 10 and mnist.class_names == [str(i) for i in range(10)]
    assert np.bincount(mnist.labels).tolist() == MNIST_COUNTS
    assert mnist.images[:, :, 0, 0].float().mean() < 1  # light digit on black
    # torchvision's layout root/MNIST/raw (here as links to the shared files) reads the same
    raw = tmp_path / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (data_root / "mnist").glob("*.gz"):
        (raw / f.name).symlink_to(f)
    again = load_dataset("mnist", tmp_path / "tv", image_size=28)
    assert again.images.shape == (70000, 1, 28, 28)
    assert np.array_equal(again.labels, mnist.labels)
    # no Fashion-MNIST in the shared data: a one-line error naming the fix, no download with a root given
    with pytest.raises(UserError, match="fashion-mnist.*--data-root"):
        load_dataset("fashion-mnist", data_root)


def test_digits(digits):
    assert digits.images.shape == (1797, 1, 16, 16)
    assert digits.num_classes == 10 and digits.class_groups == digits.class_names
    assert digits.images.max() == 255 and digits.images.min() == 0
    rgb = load_dataset("digits", image_size=8, channels=3)
    assert rgb.image_shape == (3, 8, 8)
    assert torch.equal(rgb.images[:, 0], rgb.images[:, 2])


def _write_folder(root: Path) -> None:
    colours = {"cat": (255, 0, 0), "dog": (0, 255, 0), "owl": (0, 0, 255)}
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (40 + 10 * i, 30), rgb).save(root / name / f"{i}.png")
    Image.new("L", (20, 50), 128).save(root / "owl" / "gray.jpg")
    (root / "owl" / "notes.txt").write_text("not an image")


def test_folder_dataset(tmp_path):
    root = tmp_path / "birds"
    _write_folder(root)
    ds = load_dataset("folder", root, image_size=16, channels=3)
    assert ds.class_names == ["cat", "dog", "owl"] and ds.class_groups == ds.class_names
    assert ds.images.shape == (16, 3, 16, 16)
    assert [len(ds.class_indices(c)) for c in range(3)] == [5, 5, 6]
    red = ds.class_images(0)
    assert torch.allclose(red[:, 0], torch.ones(1)) and torch.allclose(red[:, 1:], -torch.ones(1))
    gray = load_dataset("folder", root, image_size=16, channels=1)
    assert gray.image_shape == (1, 16, 16)
    # cached decode gives the same images; a changed file is picked up, not served stale
    assert torch.equal(load_dataset("folder", root, image_size=16, channels=3).images, ds.images)
    Image.new("RGB", (30, 30), (0, 0, 0)).save(root / "cat" / "0.png")
    changed = load_dataset("folder", root, image_size=16, channels=3)
    assert changed.images[0].max() == 0


def test_folder_errors(tmp_path):
    root = tmp_path / "f"
    _write_folder(root)
    (root / "dog" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError, match=r"dog/3\.png.*remove or replace") as e:
        load_dataset("folder", root)
    assert "\n" not in str(e.value)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.png")
    with pytest.raises(UserError, match="no class sub-folders"):
        load_dataset("folder", flat)


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'cifar'.*" + ", ".join(DATASET_NAMES)):
        load_dataset("cifar")
    with pytest.raises(UserError, match=r"data root .*nowhere does not exist.*images_background"):
        load_dataset("omniglot", tmp_path / "nowhere")
    with pytest.raises(UserError, match="no omniglot archives"):
        load_dataset("omniglot", tmp_path)
    with pytest.raises(UserError, match="image size"):
        load_dataset("digits", image_size=4)
    with pytest.raises(UserError, match="channels"):
        load_dataset("digits", channels=2)
    bad = tmp_path / "omni"
    bad.mkdir()
    (bad / "images_background_small1.zip").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="images_background_small1.zip"):
        load_dataset("omniglot", bad)


@pytest.mark.parametrize("name", [n for n in DATASET_NAMES if not n.endswith("-npy")])  # an .npy root IS a file
def test_data_root_missing_or_a_file_is_refused_for_every_dataset(name, tmp_path):
    """Every dataset, digits included (it reads no root, but a mistyped --data-root is not ignored)."""
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=rf"data root {missing} does not exist: .*--data-root") as e:
        load_dataset(name, missing, image_size=8)
    assert "\n" not in str(e.value)
    a_file = tmp_path / "data.zip"
    a_file.write_bytes(b"PK")
    with pytest.raises(UserError, match=rf"data root {a_file} is a file, not a folder: .*--data-root") as e:
        load_dataset(name, str(a_file), image_size=8)
    assert "\n" not in str(e.value)


def test_digits_root_blank_or_existing_is_fine(tmp_path):
    with pytest.raises(UserError, match="digits ships with scikit-learn, so leave --data-root out"):
        load_dataset("digits", tmp_path / "typo", image_size=8)
    for root in (None, "", "  ", tmp_path):
        assert load_dataset("digits", root, image_size=8).num_classes == 10


def test_absolute_root(tmp_path, monkeypatch):
    """Relative data roots become absolute (so a run's record works from any directory); "" stays ""."""
    (tmp_path / "work" / "data" / "cls").mkdir(parents=True)
    Image.new("L", (8, 8), 200).save(tmp_path / "work" / "data" / "cls" / "a.png")
    monkeypatch.chdir(tmp_path / "work")
    assert absolute_root("data") == str(tmp_path / "work" / "data")
    assert absolute_root("./data/../data/") == str(tmp_path / "work" / "data")
    assert absolute_root(str(tmp_path / "x")) == str(tmp_path / "x")
    assert absolute_root(Path("data")) == str(tmp_path / "work" / "data")
    assert absolute_root("~/d") == str(Path.home() / "d")
    assert absolute_root("") == "" and absolute_root(None) == "" and absolute_root("  ") == ""
    recorded = absolute_root("data")
    monkeypatch.chdir(tmp_path)  # evaluate from another directory
    assert load_dataset("folder", recorded, image_size=8).class_names == ["cls"]
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("folder", "data", image_size=8)


# ---------------------------------------------------------------------------------------------
# splits


def _check_partition(split: Split, n: int) -> None:
    parts = [split.base, split.val, split.novel]
    assert all(p == sorted(p) and p for p in parts)
    assert sorted(split.base + split.val + split.novel) == list(range(n))


def test_omniglot_split_holds_out_whole_alphabets(omniglot):
    split = make_split(omniglot, seed=3)
    _check_partition(split, omniglot.num_classes)
    groups = {part: {omniglot.class_groups[c] for c in getattr(split, part)} for part in ("base", "val", "novel")}
    assert len(groups["novel"]) == 2 and len(groups["val"]) == 1 and len(groups["base"]) == 5
    for g in groups["novel"]:  # every character of a novel alphabet is novel
        assert {c for c, cg in enumerate(omniglot.class_groups) if cg == g} <= set(split.novel)
    assert not (groups["base"] & groups["novel"]) and not (groups["base"] & groups["val"])
    assert split.names("novel")[0].split("/")[0] in groups["novel"]
    bigger = make_split(omniglot, seed=3, n_val=2, n_novel=3)  # n_val / n_novel count alphabets
    assert len({omniglot.class_groups[c] for c in bigger.val}) == 2
    assert len({omniglot.class_groups[c] for c in bigger.novel}) == 3


def test_split_reproducible_and_seeded(mnist, digits, omniglot, tmp_path):
    for ds in (mnist, digits, omniglot):
        assert make_split(ds, seed=7) == make_split(ds, seed=7)
        assert len({(tuple(s.val), tuple(s.novel)) for s in (make_split(ds, seed=k) for k in range(6))}) > 1
    m = make_split(mnist, seed=1)
    assert len(m.novel) == 3 and len(m.val) == 1 and len(m.base) == 6
    d = make_split(digits, seed=1)
    assert len(d.novel) == 2 and len(d.val) == 1
    path = tmp_path / "split.json"
    d.save(path)
    loaded = Split.load(path)
    assert loaded == d and loaded.class_names == digits.class_names and loaded.dataset == "digits"
    assert Split.from_dict(d.to_dict()) == d
    assert d.names("novel") == [digits.class_names[c] for c in d.novel]


def test_default_mnist_split_holds_out_at_least_3_digits(mnist):
    """Issue 12: with one novel digit class_hit is chance by construction; the default holds out >= 3."""
    for seed in range(5):
        s = make_split(mnist, seed=seed)
        _check_partition(s, 10)
        assert len(s.novel) >= 3 and len(s.val) >= 1 and len(s.base) == 10 - len(s.novel) - len(s.val)
    # Fashion-MNIST (not in the shared data): the same default, on a stand-in of its 10 classes
    fashion = ClassDataset(name="fashion-mnist", images=torch.zeros((10, 1, 8, 8), dtype=torch.uint8),
                           labels=np.arange(10), class_names=[str(i) for i in range(10)],
                           class_groups=[str(i) for i in range(10)])
    f = make_split(fashion, seed=0)
    assert (len(f.novel), len(f.val), len(f.base)) == (3, 1, 6)
    one = make_split(mnist, seed=1, n_novel=1)  # an explicit count still wins
    assert len(one.novel) == 1 and len(one.val) == 1


def test_split_folder_fractions_and_errors(digits, tmp_path):
    root = tmp_path / "f"
    for i in range(10):
        (root / f"c{i}").mkdir(parents=True)
        Image.new("RGB", (10, 10), (i * 20, 0, 0)).save(root / f"c{i}" / "a.png")
    ds = load_dataset("folder", root, image_size=8, channels=3)
    s = make_split(ds, seed=0)
    _check_partition(s, 10)
    assert (len(s.base), len(s.val), len(s.novel)) == (7, 1, 2)
    with pytest.raises(UserError, match="too few"):
        make_split(digits, seed=0, n_val=2, n_novel=8)
    with pytest.raises(UserError, match="inconsistent"):
        Split(dataset="digits", seed=0, base=[0, 1], val=[1], novel=[2], class_names=digits.class_names)


# ---------------------------------------------------------------------------------------------
# sampler


def test_task_shapes_purity_and_determinism(omniglot):
    split = make_split(omniglot, seed=0)
    sampler = TaskSampler(omniglot, split.base, seed=11)
    t = sampler.task(step=5, index=2, n=6)
    assert t.images.shape == (6, 1, 32, 32) and t.images.dtype == torch.float32
    assert t.label in split.base and isinstance(t.seed, int) and 0 <= t.seed < 2**31
    rows = _rows(t.images)
    assert len(rows) == 6  # without replacement
    assert rows <= _rows(omniglot.class_images(t.label))  # all from its own class
    again = TaskSampler(omniglot, split.base, seed=11).task(5, 2, 6)
    assert torch.equal(again.images, t.images) and (again.label, again.seed) == (t.label, t.seed)
    others = [sampler.task(5, 3, 6), sampler.task(6, 2, 6), TaskSampler(omniglot, split.base, seed=12).task(5, 2, 6)]
    assert all(o.seed != t.seed for o in others)
    labels = {sampler.task(0, i, 1).label for i in range(200)}
    assert labels <= set(split.base) and len(labels) > 50


def test_worker_sharding_identity(omniglot):
    """Worker r of W drawing r*b..r*b+b-1 gets exactly what one worker drawing 0..W*b-1 gets."""
    sampler = TaskSampler(omniglot, make_split(omniglot, seed=0).base, seed=5)
    W, b, step = 3, 4, 17
    single = sampler.tasks(step, range(W * b), n=5)
    sharded = [t for r in reversed(range(W)) for t in
               TaskSampler(omniglot, make_split(omniglot, seed=0).base, seed=5).tasks(step, range(r * b, r * b + b), n=5)]
    sharded = sharded[2 * b:] + sharded[b:2 * b] + sharded[:b]  # drawn in reverse worker order, re-ordered
    assert [t.seed for t in single] == [t.seed for t in sharded]
    assert [t.label for t in single] == [t.label for t in sharded]
    assert all(torch.equal(a.images, c.images) for a, c in zip(single, sharded))
    assert len({t.seed for t in single}) == W * b


def test_episode(omniglot):
    split = make_split(omniglot, seed=0)
    sampler = TaskSampler(omniglot, split.novel, seed=2)
    e = sampler.episode(step=0, index=9, n_way=5, k_shot=3, q_query=4)
    assert e.support.shape == (5, 3, 1, 32, 32) and e.query.shape == (5, 4, 1, 32, 32)
    assert len(set(e.classes)) == 5 and set(e.classes) <= set(split.novel)
    for i, c in enumerate(e.classes):
        own = _rows(omniglot.class_images(c))
        s, q = _rows(e.support[i]), _rows(e.query[i])
        assert s <= own and q <= own and len(s) == 3 and len(q) == 4
        assert not s & q  # support and query disjoint
    again = sampler.episode(0, 9, 5, 3, 4)
    assert again.classes == e.classes and again.seed == e.seed and torch.equal(again.query, e.query)
    assert sampler.episode(0, 10, 5, 3, 4).classes != e.classes
    with pytest.raises(UserError, match="fewer ways"):
        sampler.episode(0, 0, len(split.novel) + 1, 1, 1)


def test_class_size_errors(omniglot, digits):
    classes = [0, 1, 2]
    check_class_sizes(omniglot, classes, 20, "an episode")  # exactly enough: fine
    with pytest.raises(UserError, match=rf"{omniglot.class_names[0]}.*20 images.*needs 21.*fewer shots"):
        check_class_sizes(omniglot, classes, 21, "an episode")
    sampler = TaskSampler(omniglot, classes, seed=0)
    with pytest.raises(UserError, match="needs 21"):
        sampler.episode(0, 0, 2, 10, 11)
    with pytest.raises(UserError, match="needs 25"):
        sampler.task(0, 0, 25)
    smallest = int(np.argmin(np.bincount(digits.labels)))
    with pytest.raises(UserError, match=f"class '{smallest}'"):
        check_class_sizes(digits, [smallest], int(np.bincount(digits.labels).max()), "a task")
    with pytest.raises(UserError, match="no classes"):
        TaskSampler(digits, [], seed=0)


def test_eval_class_sizes_leave_two_real_images_after_the_shots(tmp_path):
    """A folder class with 5 images and 4 shots is refused up front (FID needs 2 real images left)."""
    assert min_eval_images(1) == 3 and min_eval_images(4) == 6
    with pytest.raises(UserError, match="shots must be at least 1"):
        min_eval_images(0)
    root = tmp_path / "f"
    for name, n in (("big", 6), ("small", 5), ("tiny", 3)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (8, 8), 10 * i).save(root / name / f"{i}.png")
    ds = load_dataset("folder", root, image_size=8)
    what = "evaluation (shots + two real images)"
    check_class_sizes(ds, [0], min_eval_images(4), what)  # 6 images: 4 shots + 2 real
    with pytest.raises(UserError, match=r"class 'small' of folder has 5 images but evaluation .* needs 6 "
                                        r"\(and 1 more class\): .*fewer shots.*add images") as e:
        check_class_sizes(ds, [0, 1, 2], min_eval_images(4), what)
    assert "\n" not in str(e.value)
    check_class_sizes(ds, [0, 1], min_eval_images(3), what)
