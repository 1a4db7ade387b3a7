"""One seeded evaluation protocol for every method: feature spaces, metrics, and the protocol itself.

- ``get_features`` picks the feature space: pytorch-fid's Inception when its weights file is found
  (``kind == "inception"``), else a classifier trained on the base classes (``kind == "domain"``);
  the kind is part of every metric name (``fid_inception`` vs ``fid_domain``).
- ``evaluate_generator`` runs the protocol (seeded shots, pooled and per-class FID, KID with its
  spread, class hit, memorisation, precision/recall/density/coverage, diversity, MSE/SSIM, and the
  unadapted / scratch / shots / real controls) and returns an ``EvalResult`` (with per-class values).
- ``stats.bootstrap_ci`` / ``stats.paired_difference_ci``: intervals over seeds and classes.
- ``MetricNotComputed``: what a metric raises instead of returning a number from degenerate input.
"""
from orchestrator.evaluation.features import (FID_WEIGHTS_FILENAME, Features, domain_features,
                                              find_inception_weights, get_features, inception_features)
from orchestrator.evaluation.metrics import (MetricNotComputed, class_hit, class_hit_per_class, diversity,
                                             diversity_per_class, fid, inception_score, kid, kid_resampled, kid_spread,
                                             memorized_share, memorized_share_real, mode_score, mse_ssim, prdc,
                                             shot_distance_ratio, standardise)
from orchestrator.evaluation.protocol import (EvalResult, evaluate_generator, save_grid, save_result_images,
                                              split_shots)
from orchestrator.evaluation.stats import CI, PairedCI, bootstrap_ci, paired_difference_ci

__all__ = ["Features", "get_features", "domain_features", "inception_features", "find_inception_weights",
           "FID_WEIGHTS_FILENAME", "fid", "kid", "diversity", "class_hit", "mse_ssim", "inception_score", "mode_score", "EvalResult",
           "evaluate_generator", "save_grid", "save_result_images", "split_shots", "MetricNotComputed",
           "class_hit_per_class", "diversity_per_class", "kid_spread", "kid_resampled", "memorized_share", "memorized_share_real",
           "prdc", "shot_distance_ratio", "standardise", "CI", "PairedCI", "bootstrap_ci", "paired_difference_ci"]
