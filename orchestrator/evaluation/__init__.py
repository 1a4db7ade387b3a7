"""One seeded evaluation protocol for every method: feature spaces, metrics, and the protocol itself.

- ``get_features`` picks the feature space: pytorch-fid's Inception when its weights file is found
  (``kind == "inception"``), else a classifier trained on the base classes (``kind == "domain"``);
  the kind is part of every metric name (``fid_inception`` vs ``fid_domain``).
- ``evaluate_generator`` runs the protocol (seeded shots, pooled FID/KID, class hit, diversity,
  MSE/SSIM, and the unadapted / scratch / shots / real controls) and returns an ``EvalResult``.
"""
from orchestrator.evaluation.features import (FID_WEIGHTS_FILENAME, Features, domain_features,
                                              find_inception_weights, get_features, inception_features)
from orchestrator.evaluation.metrics import class_hit, diversity, fid, inception_score, kid, mode_score, mse_ssim
from orchestrator.evaluation.protocol import (EvalResult, evaluate_generator, save_grid, save_result_images,
                                              split_shots)

__all__ = ["Features", "get_features", "domain_features", "inception_features", "find_inception_weights",
           "FID_WEIGHTS_FILENAME", "fid", "kid", "diversity", "class_hit", "mse_ssim", "inception_score", "mode_score", "EvalResult",
           "evaluate_generator", "save_grid", "save_result_images", "split_shots"]
