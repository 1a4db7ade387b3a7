"""The one few-shot generation protocol, seeded, applied to every method.

LoFGAN-family convention (see MISSION.md, "Evaluation protocols"): for every evaluated class a
seeded permutation picks the ``shots`` conditioning images and the class's other images are the
reals; the method adapts on the shots and generates ``n_generate`` images; FID and KID are
pooled over all classes (generated vs reals) in one feature space; class-specificity is the
share of generated images whose nearest class centroid (mean feature of each class's reals) is
their own class. With ``controls`` the same classes, shots and seeds are also scored for: the
unadapted model (``steps=0``), a randomly initialised model adapted exactly the same way
(``make_scratch``), the shots repeated to the same count, and two halves of the reals (floor).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from orchestrator.errors import UserError
from orchestrator.evaluation import metrics as M
from orchestrator.evaluation.features import Features

GRID_CLASSES = 8  # rows in the sample grid
GRID_SAMPLES = 8  # generated images per row, after the shots
KEEP_GENERATED = 4  # classes whose generated images are kept on the result


@dataclass
class EvalResult:
    """``metrics``: name -> float; ``grid``: [rows*(shots+8), C, H, W] in [-1, 1], ``grid_nrow`` per row."""

    metrics: dict[str, float]
    grid: torch.Tensor
    grid_nrow: int
    generated_per_class: dict[int, torch.Tensor] = field(default_factory=dict)
    shot_indices: dict[int, list[int]] = field(default_factory=dict)
    feature_kind: str = ""
    feature_description: str = ""
    figures: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict)  # the method's diagnostics


def split_shots(ds: Any, c: int, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dataset indices of class ``c``'s conditioning shots and of its reals (all its other images).

    The permutation is ``np.random.default_rng([seed, c]).permutation`` over the class's images
    (``ds.class_indices(c)``, sorted), so it depends only on (seed, class), not on which other
    classes are evaluated or in which order.
    """
    idx = np.asarray(ds.class_indices(c))
    if shots < 1 or len(idx) < shots + 1:
        raise UserError(f"class {c} ({ds.class_names[c]}) has {len(idx)} images; evaluation with {shots} shots "
                        f"needs at least {shots + 1} (the shots + a real image): lower --set shots (>= 1) "
                        "or use other classes")
    perm = np.random.default_rng([seed, int(c)]).permutation(len(idx))
    return idx[perm[:shots]], idx[perm[shots:]]


def _derived_seed(seed: int, c: int, purpose: int) -> int:
    """A 31-bit seed for (eval seed, class, purpose); identical for the method and its controls."""
    return int(np.random.SeedSequence([seed, int(c), purpose]).generate_state(1)[0] & 0x7FFFFFFF)


def _generate(model: Any, shots: torch.Tensor, c: int, seed: int, n: int, steps: int | None,
              shape: tuple[int, ...]) -> torch.Tensor:
    device = getattr(model, "device", None)
    x = shots.to(device) if device is not None else shots
    sampler = model.adapt(x, seed=_derived_seed(seed, c, 1), steps=steps)
    with torch.no_grad():
        fake = sampler.sample(n, seed=_derived_seed(seed, c, 2))
    fake = fake.detach().float().cpu()
    if tuple(fake.shape) != (n, *shape):
        raise ValueError(f"{type(model).__name__}'s sampler returned shape {tuple(fake.shape)}, "
                         f"expected {(n, *shape)}")
    return fake


def _pool_scores(kind: str, gen: dict[int, np.ndarray], real_all: np.ndarray,
                 centroids: np.ndarray, suffix: str = "") -> dict[str, float]:
    pooled = np.concatenate(list(gen.values()))
    return {f"fid_{kind}{suffix}": M.fid(pooled, real_all),
            f"kid_{kind}{suffix}": M.kid(pooled, real_all),
            f"class_hit{suffix}": M.class_hit(gen, centroids)}


def _class_scores(kind: str, probs: np.ndarray, real_probs: np.ndarray, suffix: str = "") -> dict[str, float]:
    """Inception Score and Mode Score (MT-GAN eq. 2-3) from the feature space's classifier, pooled over classes."""
    return {f"inception_score_{kind}{suffix}": M.inception_score(probs),
            f"mode_score_{kind}{suffix}": M.mode_score(probs, real_probs)}


def evaluate_generator(method: Any, make_scratch: Callable[[], Any] | None, ds: Any, classes: list[int],
                       features: Features, *, shots: int, n_generate: int = 128, seed: int = 0,
                       adapt_steps: int | None = None, controls: bool = True,
                       progress: bool = True) -> EvalResult:
    """Score ``method`` on ``classes`` with the one protocol; see the module docstring.

    Metrics (kind = ``features.kind``, "domain" or "inception"):
      ``fid_{kind}``, ``kid_{kind}``, ``class_hit`` — always (the cheap path, controls=False, used
      for checkpoint selection on validation classes);
      ``diversity`` (mean pairwise feature distance within a class), ``mse``, ``ssim`` (each
      generated image vs its nearest real, see ``metrics.mse_ssim``) — with controls;
      ``*_unadapted`` (``adapt(steps=0)``), ``*_scratch`` (``make_scratch()`` adapted with the same
      shots, seeds and steps; skipped when ``make_scratch`` is None), ``*_shots`` (the shots
      repeated to ``n_generate``) for fid/kid/class_hit/diversity, ``mse_shots``/``ssim_shots``,
      ``fid_{kind}_real``/``kid_{kind}_real`` (two seeded halves of each class's reals, the floor),
      ``diversity_real`` and ``class_hit_real`` (the reals' own nearest-centroid share: the ceiling
      of class_hit in this feature space, below 1 on classes the features never saw) — with controls;
      ``inception_score_{kind}``, ``mode_score_{kind}`` (MT-GAN eq. 2-3, pooled over classes, from the
      feature space's classifier: the base-class domain classifier, or Inception's 1008-way fc; with
      a domain classifier the classes are BASE classes, so on novel images they measure confident,
      varied base-class predictions, not the paper's ImageNet-class IS) — always when the features
      have a classifier head, for every control too, plus ``inception_score_{kind}_real`` with controls;
      ``chance`` (1/len(classes)), ``n_classes``, ``n_generated`` (pooled), ``n_per_class``,
      ``n_reals`` (pooled reals), ``shots``.
    """
    classes = [int(c) for c in classes]
    if not classes:
        raise UserError("no classes to evaluate: the split has no classes in this part")
    if n_generate < 2:
        raise UserError(f"n_generate {n_generate}: need at least 2 images per class")
    kind = features.kind
    shape = tuple(ds.image_shape)
    t0 = time.time()

    def say(msg: str) -> None:
        if progress:
            print(f"[eval] {msg}", file=sys.stderr, flush=True)

    n_grid = min(GRID_SAMPLES, n_generate)
    say(f"{len(classes)} classes, {shots} shots, {n_generate} generated per class, {kind} features, seed {seed}, "
        f"controls {'on' if controls else 'off'}")
    scratch = make_scratch() if (controls and make_scratch is not None) else None

    real_feats: dict[int, np.ndarray] = {}
    gen_feats: dict[str, dict[int, np.ndarray]] = {"": {}}
    if controls:
        gen_feats.update({"_unadapted": {}, "_shots": {}})
        if scratch is not None:
            gen_feats["_scratch"] = {}
    mses, ssims, mses_shots, ssims_shots = [], [], [], []
    real_halves: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    grid_rows: list[torch.Tensor] = []
    kept: dict[int, torch.Tensor] = {}
    shot_indices: dict[int, list[int]] = {}
    shots_by_class: dict[int, torch.Tensor] = {}

    for i, c in enumerate(classes):
        shot_idx, real_idx = split_shots(ds, c, shots, seed)
        shot_indices[c] = [int(j) for j in shot_idx]
        shot_imgs, real_imgs = ds.get(shot_idx).float(), ds.get(real_idx).float()
        shots_by_class[c] = shot_imgs
        real_feats[c] = features(real_imgs)

        fake = _generate(method, shot_imgs, c, seed, n_generate, adapt_steps, shape)
        gen_feats[""][c] = features(fake)
        if i < GRID_CLASSES:
            grid_rows.append(torch.cat([shot_imgs, fake[:n_grid]]))
        if i < KEEP_GENERATED:
            kept[c] = fake
        if controls:
            mse, ssim = M.mse_ssim(fake, real_imgs)
            mses.append(mse); ssims.append(ssim)
            gen_feats["_unadapted"][c] = features(_generate(method, shot_imgs, c, seed, n_generate, 0, shape))
            if scratch is not None:
                gen_feats["_scratch"][c] = features(
                    _generate(scratch, shot_imgs, c, seed, n_generate, adapt_steps, shape))
            reps = shot_imgs.repeat(math.ceil(n_generate / shots), 1, 1, 1)[:n_generate]
            shot_feats = features(shot_imgs)
            gen_feats["_shots"][c] = np.tile(shot_feats, (math.ceil(n_generate / shots), 1))[:n_generate]
            mse, ssim = M.mse_ssim(reps, real_imgs)
            mses_shots.append(mse); ssims_shots.append(ssim)
            half = np.random.default_rng([seed, c, 3]).permutation(len(real_idx))
            real_halves[0].append(real_feats[c][half[: len(half) // 2]])
            real_halves[1].append(real_feats[c][half[len(half) // 2:]])
        say(f"class {i + 1}/{len(classes)} done ({time.time() - t0:.1f}s)")

    real_all = np.concatenate([real_feats[c] for c in classes])
    centroids = np.stack([real_feats[c].mean(0) for c in classes])
    m: dict[str, float] = {}
    real_probs = features.class_probs(real_all) if getattr(features, "head", None) is not None else None
    for suffix, gen in gen_feats.items():
        m.update(_pool_scores(kind, gen, real_all, centroids, suffix))
        if real_probs is not None:
            m.update(_class_scores(kind, features.class_probs(np.concatenate(list(gen.values()))), real_probs, suffix))
    if controls and real_probs is not None:
        m[f"inception_score_{kind}_real"] = M.inception_score(real_probs)
    if controls:
        m["diversity"] = M.diversity(gen_feats[""])
        for suffix in gen_feats:
            if suffix:
                m[f"diversity{suffix}"] = M.diversity(gen_feats[suffix])
        m["mse"], m["ssim"] = float(np.mean(mses)), float(np.mean(ssims))
        m["mse_shots"], m["ssim_shots"] = float(np.mean(mses_shots)), float(np.mean(ssims_shots))
        a, b = np.concatenate(real_halves[0]), np.concatenate(real_halves[1])
        if len(a) >= 2 and len(b) >= 2:
            m[f"fid_{kind}_real"] = M.fid(a, b)
            m[f"kid_{kind}_real"] = M.kid(a, b)
        m["diversity_real"] = M.diversity(real_feats)
        m["class_hit_real"] = M.class_hit(real_feats, centroids)  # the ceiling in this feature space
    m.update({"chance": 1.0 / len(classes), "n_classes": float(len(classes)),
              "n_generated": float(n_generate * len(classes)), "n_per_class": float(n_generate),
              "n_reals": float(len(real_all)), "shots": float(shots)})
    diag = method.diagnostics(shots_by_class, seed) if hasattr(method, "diagnostics") else None
    if diag is not None:
        clash = set(diag.metrics) & set(m)
        assert not clash, f"{type(method).__name__}.diagnostics reuses protocol metric names: {clash}"
        m.update(diag.metrics)
    m = {k: float(v) for k, v in m.items()}
    say(f"done in {time.time() - t0:.1f}s: " + ", ".join(
        f"{k}={m[k]:.4g}" for k in (f"fid_{kind}", f"kid_{kind}", "class_hit", f"mode_score_{kind}", f"fid_{kind}_scratch",
                                    "class_hit_scratch", f"fid_{kind}_shots") if k in m))
    return EvalResult(metrics=m, grid=torch.cat(grid_rows).clamp(-1, 1), grid_nrow=shots + n_grid,
                      generated_per_class=kept, shot_indices=shot_indices, feature_kind=kind,
                      feature_description=features.description,
                      figures=dict(diag.figures) if diag is not None else {})


def save_grid(tensor: torch.Tensor, path: Path | str, nrow: int) -> Path:
    """Write images in [-1, 1] ([N, C, H, W]) as one PNG grid, ``nrow`` images per row."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(tensor.detach().float().cpu(), path, nrow=nrow, normalize=True, value_range=(-1, 1), pad_value=1.0)
    return path


def save_result_images(result: EvalResult, directory: Path | str, grid_name: str, suffix: str = "") -> list[Path]:
    """The sample grid (``grid_name``) and each of the method's diagnostic figures (``<name><suffix>.png``)."""
    directory = Path(directory)
    paths = [save_grid(result.grid, directory / grid_name, nrow=result.grid_nrow)]
    for name, (images, nrow) in result.figures.items():
        paths.append(save_grid(images.clamp(-1, 1), directory / f"{name}{suffix}.png", nrow=nrow))
    return paths
