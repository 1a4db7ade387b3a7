"""One seeded evaluation protocol for every method: feature spaces, metrics, and the protocol itself.

- ``get_features`` picks the feature space: pytorch-fid's Inception when its weights file is found
  (``kind == "inception"``), else a classifier trained on the base classes (``kind == "domain"``);
  the kind is part of every metric name (``fid_inception`` vs ``fid_domain``).
- ``evaluate_generator`` runs the protocol (seeded shots, pooled and per-class FID, KID with its
  spread, class hit, memorisation, precision/recall/density/coverage, diversity, MSE/SSIM, and the
  unadapted / scratch / shots / real controls) and returns an ``EvalResult`` (with per-class values).
- ``registry``: every recorded metric declared once (names, direction, range, display, meaning).
- ``stats.bootstrap_ci`` / ``stats.paired_difference_ci``: intervals over seeds and classes.
- ``MetricNotComputed``: what a metric raises instead of returning a number from degenerate input.

The names below are imported on first use (PEP 562), so that ``compare`` and ``tracking`` can read
``evaluation.registry`` without importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_SOURCES = {
    "features": ("Features", "domain_features", "find_inception_weights", "get_features", "inception_features",
                 "FID_WEIGHTS_FILENAME"),
    "metrics": ("MetricNotComputed", "class_hit", "class_hit_per_class", "diversity", "diversity_per_class", "fid",
                "inception_score", "kid", "kid_resampled", "kid_spread", "memorized_share", "memorized_share_real",
                "mode_score", "mse_ssim", "prdc", "shot_distance_ratio", "standardise"),
    "protocol": ("EvalResult", "evaluate_generator", "generate_class", "save_grid", "save_result_images", "split_shots"),
    "stats": ("CI", "PairedCI", "bootstrap_ci", "paired_difference_ci"),
}
_WHERE = {name: module for module, names in _SOURCES.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
