"""Class-indexed datasets, seeded base/val/novel splits, a stateless episodic sampler, and the image loader.

- ``registry``: every dataset declared once (loader, background, default split, data root, help line);
- ``datasets.load_dataset``: a declared dataset as a ``ClassDataset`` of uint8 images;
- ``splits.make_split``: a seeded, persisted base / val / novel split over whole groups;
- ``sampler.TaskSampler``: seeded few-shot tasks and episodes;
- ``images``: one image-file reader for every Pillow mode.

The names below are imported on first use (PEP 562), so that ``cli`` can read ``data.registry`` for its
``--dataset`` help without importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_SOURCES = {
    "datasets": ("ClassDataset", "load_dataset", "absolute_root", "DATASET_NAMES", "NPY_BENCHMARKS"),
    "images": ("dataset_background", "load_image", "load_images", "to_model_mode"),
    "sampler": ("TaskSampler", "check_class_sizes", "min_eval_images"),
    "splits": ("Split", "make_split"),
}
_WHERE = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
