"""Sample-quality metrics on features (FID, KID, diversity, class hit) and on pixels (MSE, SSIM).

Feature arrays are ``np.ndarray [N, dim]`` from :class:`orchestrator.evaluation.features.Features`;
images are float tensors in [-1, 1], ``[N, C, H, W]``.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Mapping, Sequence

import numpy as np
import torch


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need [N >= 2, dim] features, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (pytorch-fid's implementation).

    Means and covariances are computed here in float64 exactly as pytorch-fid's
    ``calculate_activation_statistics`` does (``np.mean``, ``np.cov(rowvar=False)``); the
    distance is ``pytorch_fid.fid_score.calculate_frechet_distance``. With fewer samples than
    dimensions the covariances are singular and FID is biased upward: prefer KID there.
    """
    from pytorch_fid.fid_score import calculate_frechet_distance

    mu1, s1 = _stats(a)
    mu2, s2 = _stats(b)
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dims differ: {mu1.shape} vs {mu2.shape}")
    # pytorch-fid print()s a note when it regularises a singular product; keep stdout for results.
    # scipy 1.17 warns that pytorch-fid's sqrtm(disp=False) is deprecated (STACK.md pins scipy<1.18).
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*`disp` argument is deprecated.*", category=DeprecationWarning)
        return float(calculate_frechet_distance(mu1, np.atleast_2d(s1), mu2, np.atleast_2d(s2)))


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m, n = len(x), len(y)
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kid(a: np.ndarray, b: np.ndarray, *, subset_size: int = 1000, n_subsets: int = 100, seed: int = 0) -> float:
    """Kernel Inception Distance: unbiased MMD² with the cubic polynomial kernel.

    k(x, y) = (x·y / dim + 1)³ (degree 3, gamma 1/dim, coef 1), as in Bińkowski et al.,
    "Demystifying MMD GANs" (ICLR 2018). The estimator is unbiased, so it is ≈ 0 (and may be
    slightly negative) for two samples of one distribution, and usable on small sets.
    When both sets fit in ``subset_size`` the whole sets are used once (deterministic);
    otherwise the estimate is averaged over ``n_subsets`` seeded random subsets of that size,
    as the reference implementation does.

    Hand-written because none of the design card's packages (pytorch-fid computes FID only)
    offers KID; it is a few lines and checked by the tests (≈ 0 on two halves of one set,
    positive under a shift).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need [N, dim] features of one dim, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    if len(a) <= subset_size and len(b) <= subset_size:
        return _mmd2_unbiased(a, b)
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(a), len(b))
    vals = [_mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
            for _ in range(n_subsets)]
    return float(np.mean(vals))


def _as_list(x: Mapping | Sequence) -> list:
    return list(x.values()) if isinstance(x, Mapping) else list(x)


def diversity(feats_by_class: Mapping[int, np.ndarray] | Sequence[np.ndarray]) -> float:
    """Mean pairwise Euclidean feature distance within each class, averaged over classes.

    The LPIPS-free stand-in for the field's diversity scores; computed in the same feature space
    as FID (its scale depends on that space, so compare only numbers with one feature kind).
    Classes with fewer than 2 samples are skipped.
    """
    per_class = []
    for f in _as_list(feats_by_class):
        f = np.asarray(f, dtype=np.float64)
        n = len(f)
        if n < 2:
            continue
        sq = (f ** 2).sum(1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0)
        iu = np.triu_indices(n, 1)
        per_class.append(np.sqrt(d2[iu]).mean())
    if not per_class:
        raise ValueError("diversity needs a class with at least 2 samples")
    return float(np.mean(per_class))


def class_hit(feats_by_class: Mapping[int, np.ndarray] | Sequence[np.ndarray],
              centroids: Mapping[int, np.ndarray] | np.ndarray) -> float:
    """Share of generated images whose nearest class centroid (Euclidean) is their own class.

    ``feats_by_class[i]`` are the generated features of class i and ``centroids[i]`` its centroid
    (the mean feature of that class's real images); with mappings, keys must match and order is
    taken from ``feats_by_class``. Chance level is 1 / number of classes.
    """
    if isinstance(feats_by_class, Mapping):
        keys = list(feats_by_class.keys())
        feats = [feats_by_class[k] for k in keys]
        cents = np.stack([np.asarray(centroids[k]) for k in keys]) if isinstance(centroids, Mapping) \
            else np.asarray(centroids)
    else:
        feats = list(feats_by_class)
        cents = np.stack(_as_list(centroids)) if isinstance(centroids, Mapping) else np.asarray(centroids)
    cents = cents.astype(np.float64)
    if len(cents) != len(feats):
        raise ValueError(f"{len(feats)} classes of features but {len(cents)} centroids")
    hits = total = 0
    for i, f in enumerate(feats):
        f = np.asarray(f, dtype=np.float64)
        d2 = (f ** 2).sum(1)[:, None] - 2.0 * f @ cents.T + (cents ** 2).sum(1)[None, :]
        hits += int((d2.argmin(1) == i).sum())
        total += len(f)
    return hits / total if total else float("nan")


def _to_unit(x: torch.Tensor | np.ndarray) -> np.ndarray:
    x = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    return np.clip((x + 1.0) / 2.0, 0.0, 1.0)


def mse_ssim(generated: torch.Tensor | np.ndarray, reals: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """Pixel MSE and SSIM of each generated image against its NEAREST real image, averaged.

    Pairing. Batra, Mahajan & Vartak (NYU), "Few Shot Learning for Image Generation", §4.1 and
    Table 1 (shared/papers/reptile-gan-and-transfer-baselines.txt) score generated images by
    "the mean square error between pixel intensities of the two images" and SSIM, "where 1
    indicates perfect similarity", but never say which real image a generated one is compared
    with, and their public code has no evaluation script. We pair each generated image with the
    real image of its class closest to it in pixel MSE (the class's held-out reals, never the
    shots), then compute MSE and SSIM for that pair: "how close is this sample to some real
    example of the class". Averaging against all reals instead would reward a blurry class
    mean; nearest-real does not. Copying a shot is not rewarded with 0 either (the shots are
    not among the reals); the protocol reports the shots control's values for reference.

    Scale. Images are mapped from [-1, 1] to [0, 1] (clipped) first; MSE is on that [0, 1]
    scale (multiply by 255² = 65025 for the 8-bit units of the paper's table) and SSIM is
    skimage's ``structural_similarity`` with ``data_range=1`` (its default uniform 7×7 window,
    shrunk to the image's smallest odd side for tiny images; channels via ``channel_axis``).
    """
    from skimage.metrics import mean_squared_error, structural_similarity

    g, r = _to_unit(generated), _to_unit(reals)
    if g.ndim != 4 or r.ndim != 4 or g.shape[1:] != r.shape[1:]:
        raise ValueError(f"need [N, C, H, W] images of one shape, got {g.shape} and {r.shape}")
    gf, rf = g.reshape(len(g), -1), r.reshape(len(r), -1)
    d2 = (gf ** 2).sum(1)[:, None] - 2.0 * gf @ rf.T + (rf ** 2).sum(1)[None, :]
    nearest = d2.argmin(1)
    side = min(g.shape[2], g.shape[3])
    win = min(7, side if side % 2 == 1 else side - 1)
    multichannel = g.shape[1] > 1
    mses, ssims = [], []
    for i, j in enumerate(nearest):
        a, b = g[i], r[j]
        mses.append(mean_squared_error(a, b))
        if multichannel:
            ssims.append(structural_similarity(a, b, data_range=1.0, channel_axis=0, win_size=win))
        else:
            ssims.append(structural_similarity(a[0], b[0], data_range=1.0, win_size=win))
    return float(np.mean(mses)), float(np.mean(ssims))


def _probs(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2 or len(p) < 1 or np.any(p < 0) or not np.allclose(p.sum(1), 1.0, atol=1e-6):
        raise ValueError(f"need class probabilities [N >= 1, classes] whose rows sum to 1, got shape {p.shape}")
    return p


def _kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p_i || q) per row, with 0 log 0 = 0 (q is clipped away from 0 where p > 0)."""
    q = np.clip(q, 1e-300, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(np.clip(p, 1e-300, None)) - np.log(q)), 0.0)
    return terms.sum(axis=-1)


def inception_score(probs: np.ndarray) -> float:
    """IS = exp(E_x KL(p(y|x) || p(y))), p(y) = the mean of p(y|x) over the samples (MT-GAN paper eq. 2).

    One pooled score over all given samples (no splits): the protocol pools every evaluated
    class, as it does for FID. ``probs``: [N, classes] class probabilities of the generated images.
    """
    p = _probs(probs)
    return float(np.exp(_kl_rows(p, p.mean(0)).mean()))


def mode_score(probs: np.ndarray, real_probs: np.ndarray) -> float:
    """Mode Score as the MT-GAN paper's eq. 3: exp(E_x KL(p(y|x) || p(y)) - KL(p(y) || p(y*))).

    p(y) is the generated images' marginal, p(y*) the real images' marginal (``real_probs``
    averaged). Eq. 3 takes the first KL against p(y), so MS = IS * exp(-KL(p(y) || p(y*))): the
    Inception Score penalised by how far the generated label marginal is from the real one. Che et
    al.'s original Mode Score takes the first KL against p(y*) instead; we follow the paper we
    implement. Higher is better; the reals' own Mode Score equals their Inception Score.
    """
    p, r = _probs(probs), _probs(real_probs)
    if p.shape[1] != r.shape[1]:
        raise ValueError(f"generated and real probabilities have {p.shape[1]} and {r.shape[1]} classes")
    marginal = p.mean(0)
    return float(np.exp(_kl_rows(p, marginal).mean() - _kl_rows(marginal, r.mean(0))))
