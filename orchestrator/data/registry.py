"""Every dataset declared once: its loader, background, default split, data root and help line.

A dataset's loader is a function in ``data/datasets.py`` (or any module); everything the harness needs to
know *about* the dataset lives in one :class:`DatasetSpec` below, in the style of ``evaluation/registry.py``.
The readers:

- ``datasets.load_dataset``: the name (and its aliases), the loader, the data root's description in errors;
- ``images.dataset_background``: what transparent pixels are composited on;
- ``splits.make_split``: the default numbers of val / novel groups and what a group is called;
- ``lifecycle.log_data_input``: the loader a run records with its MLflow dataset input;
- ``cli``, ``sweep`` and ``pregenerate``: the ``--dataset`` help (:func:`help_text`);
- ``evaluation/lofgan.py``: a ``.npy`` benchmark's conditioning pool (``npy``).

This module imports only the standard library: ``cli`` reads it for ``--help`` without torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from orchestrator.errors import UserError

__all__ = ["DEFAULT", "DatasetSpec", "NpyBenchmark", "declared", "find", "help_text", "names", "register", "spec"]

BACKGROUNDS = ("white", "black")


@dataclass(frozen=True)
class NpyBenchmark:
    """One of the field's ``.npy`` benchmark arrays (LoFGAN and its followers; ours: the declaration).

    The array is ``classes x images x H x W x C`` (128 px, RGB). ``n_seen``: LoFGAN trains on classes
    ``[:n_seen]`` and evaluates on ``[n_seen:]`` (edward3862/LoFGAN-pytorch, configs/*_lofgan.yaml
    ``dis.num_classes``, used as ``num_for_seen`` in dataset.py ``FSGDataset``: ``data[:num_for_seen]`` /
    ``data[num_for_seen:]``; main_metric.py lines 98-106 slice the same index). ``n_pool``: the first
    ``n_pool`` images of each unseen class are main_metric.py's conditioning pool (``num``), the rest its
    reals. ``file``: the name in LoFGAN's configs (``data_root``). F2GAN
    (bcmi/F2GAN-Few-Shot-Image-Generation, data_with_matchingclassifier.py ``flowersDAGANDataset`` /
    ``animalsDAGANDataset``) loads the same array layout and the same class index (Flowers ``x[:85]`` /
    ``x[85:]``, Animal Faces ``x[:119]`` / ``x[119:]``), so its layout is this one; it differs only in
    resizing each image on the fly (cv2 bilinear) to its own image size.
    """

    file: str
    n_seen: int
    n_pool: int
    float_unit: bool = False  # LoFGAN scales this array's images by 255 (main_metric.py line 131: VGGFace)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset's declaration.

    ``name``: the ``--dataset`` key; ``loader``: ``"module:function"``, imported when the dataset is loaded
    and called as ``function(spec, root, image_size, channels, background)`` -> ``ClassDataset`` (``root``:
    the ``--data-root`` as given, or None); ``help``: one phrase for ``--dataset``'s help; ``root_holds``:
    what ``--data-root`` points at, ending the error lines that name it ("" with ``npy``: LoFGAN's file);
    ``background``: ``"white"`` or ``"black"``, what transparent pixels of image files are composited on;
    ``split``: the default
    ``(n_val, n_novel)`` in groups, None for ~10% / ~20% of the groups (at least 1 each); ``group_unit``:
    what a group is called in messages (``"alphabets"``), None for classes (or "groups"); ``needs_root``:
    no download, ``--data-root`` is required; ``aliases``: other spellings accepted for ``name``;
    ``recorded_loader``: the loader a run records with its data (default
    ``orchestrator.data.load_dataset('<name>')``); ``npy``: the published ``.npy`` benchmark (its novel
    classes are the published unseen ones); ``no_root``: why the dataset reads no ``--data-root``
    (``root_holds`` is then ""); ``options``: the loader's own settings (read-only).
    """

    name: str
    loader: str
    help: str
    root_holds: str
    background: str = "white"
    split: tuple[int, int] | None = None
    group_unit: str | None = None
    needs_root: bool = False
    aliases: tuple[str, ...] = ()
    recorded_loader: str = ""
    npy: NpyBenchmark | None = None
    no_root: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name != _key(self.name):
            raise ValueError(f"dataset name {self.name!r} must be lower case with '-' (as typed after --dataset)")
        if ":" not in self.loader:
            raise ValueError(f"{self.name}: loader {self.loader!r} must be 'module:function'")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"{self.name}: background must be one of {BACKGROUNDS}, got {self.background!r}")
        if self.split is not None and (len(self.split) != 2 or min(self.split) < 0):
            raise ValueError(f"{self.name}: split must be (n_val, n_novel) >= 0, got {self.split!r}")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        if not self.root_holds and self.npy is not None:
            object.__setattr__(self, "root_holds", f"the benchmark's .npy file (or a folder holding {self.npy.file})")
        if bool(self.root_holds) == bool(self.no_root):
            raise ValueError(f"{self.name}: give root_holds (what --data-root points at) or no_root (why none is read)")

    def recorded(self) -> str:
        """The loader a run records with its MLflow dataset input."""
        return self.recorded_loader or f"orchestrator.data.load_dataset({self.name!r})"


_REGISTRY: dict[str, DatasetSpec] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a declaration (its ``name`` and aliases once); returns it. Declaration order is help order."""
    keys = (spec.name, *(_key(a) for a in spec.aliases))
    taken = [k for k in keys if k in _REGISTRY or k in _ALIASES]
    if taken:
        raise ValueError(f"dataset name(s) {taken} are declared twice")
    _REGISTRY[spec.name] = spec
    _ALIASES.update({_key(a): spec.name for a in spec.aliases})
    return spec


def declared() -> tuple[DatasetSpec, ...]:
    """Every declaration, in declaration (help) order."""
    return tuple(_REGISTRY.values())


def names() -> tuple[str, ...]:
    """Every dataset name, in declaration order."""
    return tuple(_REGISTRY)


def find(name: str) -> DatasetSpec | None:
    """The declaration of ``name`` (case, blanks and ``_`` for ``-`` forgiven; aliases accepted), or None."""
    key = _key(name)
    return _REGISTRY.get(_ALIASES.get(key, key))


def spec(name: str) -> DatasetSpec:
    """The declaration of ``name``, as :func:`find`.

    Raises:
        UserError: no dataset of that name (the line lists every declared one).
    """
    found = find(name)
    if found is None:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(names())}")
    return found


def help_text() -> str:
    """``--dataset``'s help: every declared name with its phrase, in declaration order, and which is the default."""
    return "; ".join(f"{s.name} ({s.help})" for s in declared()) + f" (default {DEFAULT})"


# ----------------------------------------------------------------------------------------------
# the declarations: a new dataset is one register(...) call (docs/adding_a_method.md, "Adding a dataset")

_DATASETS = "orchestrator.data.datasets"
_DOWNLOADED = "downloaded when no --data-root"

# MNIST / Fashion-MNIST hold out 3 of 10 classes: with one novel class, class_hit is 1 (chance) by
# construction and IS / Mode Score over one class carry no quality signal (issue 12).
# The dataset a command uses without --dataset (config.HARNESS_DEFAULTS, pregenerate): it must need no download.
DEFAULT = "digits"
register(DatasetSpec("digits", f"{_DATASETS}:load_digits", "sklearn's 1,797 8x8 digits, no download",
                     "", background="black", split=(1, 2),
                     recorded_loader="sklearn.datasets.load_digits", no_root="ships with scikit-learn"))
register(DatasetSpec("omniglot", f"{_DATASETS}:load_omniglot", f"1,623 characters of 50 alphabets, {_DOWNLOADED}",
                     "a folder holding the omniglot archives (images_background*.zip)", split=(1, 2),
                     group_unit="alphabets", options={"torchvision": "Omniglot"}))
register(DatasetSpec("mnist", f"{_DATASETS}:load_idx", f"70,000 handwritten digits, {_DOWNLOADED}",
                     "a folder holding the MNIST IDX files (train-images-idx3-ubyte.gz ...)", background="black",
                     split=(1, 3), options={"torchvision": "MNIST", "folders": ("MNIST/raw", "mnist", "MNIST", "."),
                                            "classes": tuple(str(i) for i in range(10))}))
register(DatasetSpec("fashion-mnist", f"{_DATASETS}:load_idx", f"70,000 clothing images, {_DOWNLOADED}",
                     "a folder holding the Fashion-MNIST IDX files (in fashion-mnist/ or FashionMNIST/raw/)",
                     background="black", split=(1, 3), aliases=("fashionmnist",),
                     options={"torchvision": "FashionMNIST",
                              "folders": ("FashionMNIST/raw", "fashion-mnist", "fashion_mnist", "FashionMNIST", "."),
                              "classes": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                          "Sneaker", "Bag", "Ankle boot")}))
register(DatasetSpec("folder", f"{_DATASETS}:load_folder", "your images as --data-root/<class>/<image>",
                     "a folder of class sub-folders of images (root/<class>/*.png)", needs_root=True))
# The .npy benchmarks' novel classes are their published unseen classes (``npy.n_seen``, the loader's
# ``default_novel_groups``); one val class is drawn from the seen ones (checkpoint selection needs one),
# so base is LoFGAN's training set less that class.
register(DatasetSpec("flowers-npy", f"{_DATASETS}:load_npy", "LoFGAN's Flowers .npy array, its published split",
                     "", split=(1, 0), needs_root=True,
                     npy=NpyBenchmark("flower_c8189_s128_data_rgb.npy", n_seen=85, n_pool=10)))
register(DatasetSpec("animalfaces-npy", f"{_DATASETS}:load_npy", "LoFGAN's Animal Faces .npy array, its published split",
                     "", split=(1, 0), needs_root=True,
                     npy=NpyBenchmark("animal_128.npy", n_seen=119, n_pool=10)))
register(DatasetSpec("vggface-npy", f"{_DATASETS}:load_npy", "LoFGAN's VGGFace .npy array, its published split",
                     "", split=(1, 0), needs_root=True,
                     npy=NpyBenchmark("vgg_face_data_rgb.npy", n_seen=1802, n_pool=30, float_unit=True)))
# new declarations go here
