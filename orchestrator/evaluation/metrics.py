"""Sample-quality metrics on features (FID, KID, PRDC, memorisation, diversity, class hit) and on pixels (MSE, SSIM).

Feature arrays are ``np.ndarray [N, dim]`` (float64 after conversion) from
:class:`orchestrator.evaluation.features.Features`; images are float tensors in [-1, 1], ``[N, C, H, W]``.

Degenerate inputs (decided here, applied by every metric): a metric that cannot be computed on
what it was given raises :class:`MetricNotComputed` (a ``ValueError``) naming the reason, never
returns a number from a degenerate computation. The protocol records such a metric as NaN, adds
``<name>_computed = 0`` and keeps the reason (``EvalResult.not_computed``). The cases:

- fewer samples than the metric needs (FID/KID: 2 per set; FID also more samples than feature
  dimensions, see :func:`fid`; PRDC: more than k per set; memorisation: one shot and one real);
- NaN or infinite values anywhere in the input (a diverged model; the protocol scores such a
  model as failed before any metric sees it: ``diverged`` = 1);
- a numerically unstable matrix square root in FID (pytorch-fid's result disagrees with an
  eigendecomposition of the same quantity, or has an imaginary part).
"""
from __future__ import annotations

import contextlib
import io
import math
import sys
import warnings
from typing import Mapping, Sequence

import numpy as np
import torch


class MetricNotComputed(ValueError):
    """A metric that cannot be computed on what it was given (ours); ``reason`` says why in one line.

    A ``ValueError`` subclass, so callers that caught ``ValueError`` for too few samples still do.
    """

    def __init__(self, metric: str, reason: str):
        super().__init__(f"{metric} not computed: {reason}")
        self.metric = metric
        self.reason = reason

    def __reduce__(self):  # picklable across Ray processes (the default would call __init__ with one argument)
        return type(self), (self.metric, self.reason)


def _features(x: np.ndarray, metric: str, *, min_n: int = 1, what: str = "set") -> np.ndarray:
    """``x`` as float64 [N, dim], checked: 2-d, at least ``min_n`` rows, every value finite."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{metric}: need [N, dim] features, got shape {x.shape}")
    if len(x) < min_n:
        raise MetricNotComputed(metric, f"{len(x)} samples in the {what}, need at least {min_n}")
    bad = int((~np.isfinite(x)).any(axis=1).sum())
    if bad:
        raise MetricNotComputed(metric, f"{bad} of {len(x)} samples in the {what} have NaN/inf features")
    return x


def _stats(x: np.ndarray, what: str = "set") -> tuple[np.ndarray, np.ndarray]:
    x = _features(x, "fid", min_n=2, what=what)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _frechet_eig(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """The Fréchet distance with tr((S1 S2)^1/2) = sum sqrt(eig(S2^1/2 S1 S2^1/2)) (symmetric PSD, no sqrtm)."""
    w, v = np.linalg.eigh((s2 + s2.T) / 2)
    half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = half @ s1 @ half
    lam = np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2.0 * np.sqrt(lam).sum())


FID_CROSS_CHECK_MAX_DIM = 512  # above this, the eigendecomposition check runs only when pytorch-fid regularised


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (pytorch-fid's implementation).

    ``a``, ``b``: [N, dim] features (generated, real; the formula is symmetric). Returns FID >= 0
    (up to rounding) in squared feature units. Means and covariances are computed in float64 exactly
    as pytorch-fid's ``calculate_activation_statistics`` does (``np.mean``, ``np.cov(rowvar=False)``);
    the distance is ``pytorch_fid.fid_score.calculate_frechet_distance``.

    Raises :class:`MetricNotComputed` when:

    - a set has fewer than 2 samples, or NaN/inf values;
    - a set has N <= dim samples: its sample covariance is then singular by construction (rank <= N-1),
      an artefact of the sample size, and pytorch-fid would regularise it and return a number
      dominated by that artefact (issue 11: "never a number from a degenerate computation");
    - pytorch-fid's matrix square root is unstable: it has an imaginary part, or the result differs from
      the same quantity computed by a symmetric eigendecomposition (:func:`_frechet_eig`) by more than
      1e-5 of the scale (tr S1 + tr S2 + |mu1 - mu2|^2). The check runs always up to
      ``FID_CROSS_CHECK_MAX_DIM`` dimensions, and above that whenever pytorch-fid regularised.

    A covariance that is rank-deficient although N > dim (a collapsed generator: identical or
    copied samples, e.g. the shots repeated) is NOT refused: the Fréchet (2-Wasserstein) distance
    between Gaussians is defined for singular covariances, and refusing it would turn a collapsed
    model's bad score into "not computed". It is computed and cross-checked as above.
    """
    from pytorch_fid.fid_score import calculate_frechet_distance

    mu1, s1 = _stats(a, "first set")
    mu2, s2 = _stats(b, "second set")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dims differ: {mu1.shape} vs {mu2.shape}")
    dim = mu1.shape[0]
    for n, what in ((len(a), "first"), (len(b), "second")):
        if n <= dim:
            raise MetricNotComputed("fid", f"{n} samples in the {what} set for {dim} feature dimensions: "
                                           f"its covariance is singular by construction (need more than {dim})")
    s1, s2 = np.atleast_2d(s1), np.atleast_2d(s2)
    # pytorch-fid print()s a note when it regularises a singular product; keep it (stdout is for results).
    # scipy 1.17 warns that pytorch-fid's sqrtm(disp=False) is deprecated (pyproject.toml pins scipy<1.18).
    note = io.StringIO()
    try:
        with contextlib.redirect_stdout(note), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*`disp` argument is deprecated.*", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=RuntimeWarning)
            value = float(calculate_frechet_distance(mu1, s1, mu2, s2))
    except ValueError as err:  # "Imaginary component ..."
        raise MetricNotComputed("fid", f"unstable matrix square root ({err})") from None
    if note.getvalue():
        print(note.getvalue().strip(), file=sys.stderr)
    if not np.isfinite(value):
        raise MetricNotComputed("fid", f"pytorch-fid returned {value}")
    if dim <= FID_CROSS_CHECK_MAX_DIM or note.getvalue():
        check = _frechet_eig(mu1, s1, mu2, s2)
        scale = float(np.trace(s1) + np.trace(s2) + (mu1 - mu2) @ (mu1 - mu2))
        if abs(value - check) > 1e-5 * max(scale, 1e-12):
            raise MetricNotComputed("fid", f"unstable matrix square root: pytorch-fid {value:.6g} vs "
                                           f"eigendecomposition {check:.6g}")
    return value


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3


def _mmd2_from_kernels(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m, n = len(kxx), len(kyy)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    return _mmd2_from_kernels(_poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y))


def _kid_inputs(a: np.ndarray, b: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need [N, dim] features of one dim, got {a.shape} and {b.shape}")
    return _features(a, metric, min_n=2, what="first set"), _features(b, metric, min_n=2, what="second set")


def kid(a: np.ndarray, b: np.ndarray, *, subset_size: int = 1000, n_subsets: int = 100, seed: int = 0) -> float:
    """Kernel Inception Distance: unbiased MMD² with the cubic polynomial kernel.

    k(x, y) = (x·y / dim + 1)³ (degree 3, gamma 1/dim, coef 1), as in Bińkowski et al.,
    "Demystifying MMD GANs" (ICLR 2018). The estimator is unbiased, so it is ≈ 0 (and may be
    slightly negative) for two samples of one distribution, and usable on small sets.
    When both sets fit in ``subset_size`` the whole sets are used once (deterministic);
    otherwise the estimate is averaged over ``n_subsets`` seeded random subsets of that size,
    as the reference implementation does.

    Units: squared MMD in the kernel's units, i.e. in units of k, which is dimensionless only when
    the features are (the protocol standardises them with base-class statistics first, so there x·y/dim
    is a correlation-like O(1) number and KID is dimensionless; on raw features the cubic kernel scales
    with |x|⁶). Often printed ×10³ in papers; reported here as is.

    Raises :class:`MetricNotComputed` for fewer than 2 samples in a set or NaN/inf values.
    Hand-written because none of the design card's packages (pytorch-fid computes FID only)
    offers KID; it is a few lines and checked by the tests (≈ 0 on two halves of one set,
    positive under a shift).
    """
    a, b = _kid_inputs(a, b, "kid")
    if len(a) <= subset_size and len(b) <= subset_size:
        return _mmd2_unbiased(a, b)
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(a), len(b))
    vals = [_mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
            for _ in range(n_subsets)]
    return float(np.mean(vals))


def kid_subset_size(n_a: int, n_b: int, subset_size: int = 1000) -> int:
    """The subset size :func:`kid_spread` uses: min(subset_size, n_a // 2, n_b // 2)."""
    return int(min(subset_size, n_a // 2, n_b // 2))


def kid_spread(a: np.ndarray, b: np.ndarray, *, subset_size: int = 1000, n_subsets: int = 100,
               seed: int = 0) -> float:
    """Standard deviation of the KID estimate over ``n_subsets`` seeded random subsets (ours, after Bińkowski et al.).

    Each subset draws m = ``kid_subset_size(len(a), len(b), subset_size)`` samples without replacement
    from each set (at most half of each, so subsets differ even when a set is small) and computes the
    unbiased MMD² of :func:`kid` on them; the result is the standard deviation (ddof=1) of those values,
    in KID's units. It is the spread of the estimator at subset size m: the full-set estimate that
    :func:`kid` returns for small sets varies less (roughly by sqrt(m / n) for a non-zero KID), so this
    is a conservative yardstick for comparing two KIDs. Kernels are computed once on the whole sets and
    indexed (sets up to 4000 samples; larger ones are kerneled per subset).

    Raises :class:`MetricNotComputed` when m < 2 (a set of fewer than 4 samples), for fewer than 2
    subsets, or for NaN/inf values.
    """
    a, b = _kid_inputs(a, b, "kid_std")
    m = kid_subset_size(len(a), len(b), subset_size)
    if m < 2:
        raise MetricNotComputed("kid_std", f"sets of {len(a)} and {len(b)} samples: subsets of at least 2 "
                                           "drawn from at most half of each need 4 samples per set")
    if n_subsets < 2:
        raise MetricNotComputed("kid_std", f"{n_subsets} subsets: a spread needs at least 2")
    rng = np.random.default_rng(seed)
    whole = max(len(a), len(b)) <= 4000
    if whole:
        kaa, kbb, kab = _poly_kernel(a, a), _poly_kernel(b, b), _poly_kernel(a, b)
    vals = []
    for _ in range(n_subsets):
        i, j = rng.choice(len(a), m, replace=False), rng.choice(len(b), m, replace=False)
        if whole:
            vals.append(_mmd2_from_kernels(kaa[np.ix_(i, i)], kbb[np.ix_(j, j)], kab[np.ix_(i, j)]))
        else:
            vals.append(_mmd2_unbiased(a[i], b[j]))
    return float(np.std(vals, ddof=1))


def _mmd2_distinct_sources(pool: np.ndarray, kernel: np.ndarray | None, gi: np.ndarray, ri: np.ndarray) -> float:
    """Unbiased-style MMD² of two index draws from ``pool``, every pair from one source row excluded."""
    def term(i: np.ndarray, j: np.ndarray) -> float:
        k = kernel[np.ix_(i, j)] if kernel is not None else _poly_kernel(pool[i], pool[j])
        mask = i[:, None] != j[None, :]
        if not mask.any():
            raise MetricNotComputed("kid", "every pair of draws comes from one source image")
        return float(k[mask].mean())

    return term(gi, gi) + term(ri, ri) - 2.0 * term(gi, ri)


def kid_resampled(pool: np.ndarray, gen_idx: np.ndarray, ref_idx: np.ndarray, *, subset_size: int = 1000,
                  n_subsets: int = 100, seed: int = 0) -> tuple[float, float]:
    """KID and its subset spread for two sets drawn WITH replacement from one pool of real features (ours).

    The ``_real`` floor compares two resamples of the same real images (``pool`` [n, dim]; ``gen_idx``
    [N_g] and ``ref_idx`` [N_r] row indices into it). Drawn with replacement they share rows, and a
    repeated row's self-kernel k(x, x) = (|x|²/dim + 1)³ enters the within- and cross-set means of
    :func:`kid` as an atom that fresh samples of a continuous distribution never produce (seen on
    2048-d features: a floor 10 subset-spreads away from 0). So every pair of draws that comes from
    one pool row is left out of all three kernel means: each then averages k over pairs of distinct
    images, the expectation of every term is the same, and the estimate is ≈ 0 up to the sampling
    noise (and the finite-sample class-mixture bias) of the method's sample sizes. Returns
    ``(kid, spread)``: the whole draws when both fit in ``subset_size`` (else the mean over
    ``n_subsets`` subsets of min(subset_size, N_g, N_r)), and the standard deviation over ``n_subsets``
    subsets of ``kid_subset_size(N_g, N_r, subset_size)`` as :func:`kid_spread`. Units as :func:`kid`.
    Raises :class:`MetricNotComputed` for NaN/inf features, fewer than 2 draws per set, or a spread
    subset below 2.
    """
    pool = _features(pool, "kid", min_n=1, what="real pool")
    gen_idx, ref_idx = np.asarray(gen_idx), np.asarray(ref_idx)
    if len(gen_idx) < 2 or len(ref_idx) < 2:
        raise MetricNotComputed("kid", f"draws of {len(gen_idx)} and {len(ref_idx)}: need at least 2 each")
    kernel = _poly_kernel(pool, pool) if len(pool) <= 4000 else None
    rng = np.random.default_rng(seed)
    if len(gen_idx) <= subset_size and len(ref_idx) <= subset_size:
        value = _mmd2_distinct_sources(pool, kernel, gen_idx, ref_idx)
    else:
        m = min(subset_size, len(gen_idx), len(ref_idx))
        value = float(np.mean([_mmd2_distinct_sources(pool, kernel, rng.choice(gen_idx, m, replace=False),
                                                      rng.choice(ref_idx, m, replace=False))
                               for _ in range(n_subsets)]))
    m = kid_subset_size(len(gen_idx), len(ref_idx), subset_size)
    if m < 2 or n_subsets < 2:
        raise MetricNotComputed("kid_std", f"draws of {len(gen_idx)} and {len(ref_idx)}: no subsets of 2 or more")
    vals = [_mmd2_distinct_sources(pool, kernel, rng.choice(gen_idx, m, replace=False),
                                   rng.choice(ref_idx, m, replace=False)) for _ in range(n_subsets)]
    return value, float(np.std(vals, ddof=1))


def prdc(real: np.ndarray, fake: np.ndarray, *, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al., "Reliable Fidelity and Diversity Metrics for
    Generative Models", ICML 2020, eq. 1-4), computed by the authors' ``prdc`` package (clovaai/prdc 0.2).

    ``real`` [N, dim], ``fake`` [M, dim] in one feature space; ``k`` nearest neighbours (the paper's
    default 5). Each real (fake) sample's ball has the radius of its k-th nearest neighbour among
    the reals (fakes), itself excluded. Returns ``{"precision", "recall", "density", "coverage"}``:

    - precision in [0, 1]: share of fakes inside some real's ball (fidelity);
    - recall in [0, 1]: share of reals inside some fake's ball (diversity); fakes that repeat a few
      images have zero-radius balls, so copies score recall ≈ 0;
    - density in [0, N/k] (≈ 1 for fakes from the real distribution): mean number of real balls
      holding a fake, / k;
    - coverage in [0, 1]: share of reals whose ball holds at least one fake; copying a few images covers
      only the reals around them. For two samples of one distribution of sizes M and N its expectation
      is 1 - prod_{i=1..k} (N - i) / (N + M - i) (the paper's §4), e.g. ≈ 0.97 for M = N, k = 5.
      Small classes limit what coverage can see: with N = 16 reals and k = 5 each ball holds a third of
      the class, so M = 4 distinct images (4 shots, or 4 fresh samples alike) cover 1 - (15·14·13·12·11)
      / (19·18·17·16·15) ≈ 0.74 of the reals in expectation (measured on Omniglot: the shots control 0.77,
      against 0.13 on digits' ~176 reals a class). Recall sees repetition at any size (0 for the shots).

    Raises :class:`MetricNotComputed` when a set has fewer than k + 2 samples (a k-th neighbour besides
    the point itself needs k + 1; the package's k-th value selection, ``argpartition(k + 1)``, needs one
    more) or NaN/inf values. The package prints a line per call; it is swallowed here.
    """
    from prdc import compute_prdc

    real = _features(real, "prdc", min_n=k + 2, what="real set")
    fake = _features(fake, "prdc", min_n=k + 2, what="generated set")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: {real.shape} vs {fake.shape}")
    with contextlib.redirect_stdout(io.StringIO()):
        out = compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    return {name: float(out[name]) for name in ("precision", "recall", "density", "coverage")}


def nearest_shot_distance(x: np.ndarray, shots: np.ndarray) -> np.ndarray:
    """Euclidean feature distance of each row of ``x`` [N, dim] to its nearest shot (``shots`` [K, dim]) -> [N]."""
    x = np.asarray(x, dtype=np.float64)
    shots = np.asarray(shots, dtype=np.float64)
    d2 = (x ** 2).sum(1)[:, None] - 2.0 * x @ shots.T + (shots ** 2).sum(1)[None, :]
    return np.sqrt(np.maximum(d2, 0.0)).min(axis=1)


def memorization_rank(n_reals: int, q: float) -> int:
    """k = max(1, floor(q * (n_reals + 1))): the rank of the threshold among the reals' nearest-shot distances."""
    return max(1, int(math.floor(q * (n_reals + 1) + 1e-9)))


def memorized_share(generated: np.ndarray, shots: np.ndarray, reals: np.ndarray, *,
                    q: float = 0.05) -> tuple[float, float]:
    """Share of generated images that sit closer to a shot than real images of the class do (ours).

    For one class: d(x) = feature distance from x to its nearest shot (:func:`nearest_shot_distance`).
    The threshold tau is the k-th smallest d(r) over the class's n held-out reals r (never the shots),
    k = :func:`memorization_rank` (n, q), q = 0.05 by default; a generated x counts as memorised when
    d(x) <= tau. Returns ``(share, nominal)``, both in [0, 1]:

    - ``share``: the memorised share of ``generated``;
    - ``nominal`` = k / (n + 1): the share expected for images exchangeable with the reals (a generator
      that samples the class's distribution without looking at the shots more than the reals do):
      by the rank argument of conformal prediction, a new exchangeable distance falls at or below the
      k-th smallest of n with probability k / (n + 1) (ties aside). q = 0.05 with n = 16 reals gives
      k = 1, nominal 1/17 = 0.059; with 176 reals, k = 8, nominal 0.045.

    The shots repeated have d = 0 <= tau: share 1 exactly (a copy). ``<=`` (not ``<``) so that a
    copy still counts when a real image is itself identical to a shot (tau = 0).

    Shapes: ``generated`` [M, dim], ``shots`` [K, dim], ``reals`` [n, dim], one feature space (the
    protocol passes base-standardised features). Raises :class:`MetricNotComputed` for an empty set or
    NaN/inf values; ValueError for q outside (0, 1).
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    generated = _features(generated, "memorized_share", what="generated set")
    shots = _features(shots, "memorized_share", what="shots")
    reals = _features(reals, "memorized_share", what="real set")
    d_real = np.sort(nearest_shot_distance(reals, shots))
    k = memorization_rank(len(d_real), q)
    tau = d_real[k - 1]
    return float((nearest_shot_distance(generated, shots) <= tau).mean()), k / (len(d_real) + 1.0)


def memorized_share_real(shots: np.ndarray, reals: np.ndarray, *, q: float = 0.05) -> tuple[float, float]:
    """:func:`memorized_share` of the class's held-out reals themselves, each scored leave-one-out (ours).

    Real r_i is compared with the threshold computed from the OTHER n - 1 reals (rank
    k' = :func:`memorization_rank` (n - 1, q)), so it is never its own reference. Returns
    ``(share, nominal)`` with nominal = k' / n; without ties the share equals it exactly (the rule's
    rate by construction: the line a non-copying generator sits on). Raises
    :class:`MetricNotComputed` for fewer than 2 reals, no shot, or NaN/inf values.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    shots = _features(shots, "memorized_share", what="shots")
    reals = _features(reals, "memorized_share", min_n=2, what="real set")
    d = nearest_shot_distance(reals, shots)
    order = np.sort(d)
    k = memorization_rank(len(d) - 1, q)
    # the k-th smallest of the others: order[k-1] unless d_i itself is among the k smallest, then order[k]
    rank = np.argsort(np.argsort(d, kind="stable"), kind="stable")
    tau = np.where(rank <= k - 1, order[min(k, len(d) - 1)], order[k - 1])
    return float((d <= tau).mean()), k / float(len(d))


def shot_distance_ratio(generated: np.ndarray, shots: np.ndarray, reals: np.ndarray) -> float:
    """median d(generated) / median d(reals), d = distance to the nearest shot (ours), in [0, inf).

    The continuous companion of :func:`memorized_share`: ≈ 1 for images as far from the shots as the
    class's reals are, 0 for copies of the shots, > 1 for images farther away (off-class). Raises
    :class:`MetricNotComputed` for an empty set, NaN/inf values, or a zero median real distance.
    """
    generated = _features(generated, "shot_distance_ratio", what="generated set")
    shots = _features(shots, "shot_distance_ratio", what="shots")
    reals = _features(reals, "shot_distance_ratio", what="real set")
    ref = float(np.median(nearest_shot_distance(reals, shots)))
    if ref <= 0.0:
        raise MetricNotComputed("shot_distance_ratio", "half the reals coincide with a shot in feature space")
    return float(np.median(nearest_shot_distance(generated, shots))) / ref


def standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean) / std per feature dimension: ``x`` [N, dim], ``mean``/``std`` [dim] -> float64 [N, dim]."""
    return (np.asarray(x, dtype=np.float64) - mean) / std


def _as_list(x: Mapping | Sequence) -> list:
    return list(x.values()) if isinstance(x, Mapping) else list(x)


def diversity_per_class(feats_by_class: Mapping[int, np.ndarray] | Sequence[np.ndarray]) -> list[float]:
    """Mean pairwise Euclidean feature distance within each class, one value per class (NaN below 2 samples).

    Raises :class:`MetricNotComputed` for NaN/inf features.
    """
    per_class = []
    for f in _as_list(feats_by_class):
        f = _features(f, "diversity", min_n=0)
        n = len(f)
        if n < 2:
            per_class.append(math.nan)
            continue
        sq = (f ** 2).sum(1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0)
        iu = np.triu_indices(n, 1)
        per_class.append(float(np.sqrt(d2[iu]).mean()))
    return per_class


def diversity(feats_by_class: Mapping[int, np.ndarray] | Sequence[np.ndarray]) -> float:
    """Mean pairwise Euclidean feature distance within each class, averaged over classes.

    The LPIPS-free stand-in for the field's diversity scores; computed in the same feature space
    as FID (its scale depends on that space, so compare only numbers with one feature kind).
    Classes with fewer than 2 samples are skipped. Raises :class:`MetricNotComputed` for NaN/inf
    features or when no class has 2 samples.
    """
    per_class = [v for v in diversity_per_class(feats_by_class) if not math.isnan(v)]
    if not per_class:
        raise MetricNotComputed("diversity", "no class with at least 2 samples")
    return float(np.mean(per_class))


def _centroid_inputs(feats_by_class, centroids) -> tuple[list[np.ndarray], np.ndarray]:
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
    if not np.isfinite(cents).all():
        raise MetricNotComputed("class_hit", "NaN/inf class centroids")
    return [_features(f, "class_hit", min_n=0) for f in feats], cents


def class_hit_per_class(feats_by_class: Mapping[int, np.ndarray] | Sequence[np.ndarray],
                        centroids: Mapping[int, np.ndarray] | np.ndarray) -> list[float]:
    """:func:`class_hit` of each class alone (share of its images whose nearest centroid is its own), NaN if empty."""
    feats, cents = _centroid_inputs(feats_by_class, centroids)
    out = []
    for i, f in enumerate(feats):
        d2 = (f ** 2).sum(1)[:, None] - 2.0 * f @ cents.T + (cents ** 2).sum(1)[None, :]
        out.append(float((d2.argmin(1) == i).mean()) if len(f) else math.nan)
    return out


def class_hit(feats_by_class: Mapping[int, np.ndarray] | Sequence[np.ndarray],
              centroids: Mapping[int, np.ndarray] | np.ndarray) -> float:
    """Share of generated images whose nearest class centroid (Euclidean) is their own class.

    ``feats_by_class[i]`` are the generated features of class i and ``centroids[i]`` its centroid
    (the mean feature of that class's real images); with mappings, keys must match and order is
    taken from ``feats_by_class``. Chance level is 1 / number of classes. Pooled over images (with
    equal counts per class, the mean of :func:`class_hit_per_class`). Raises
    :class:`MetricNotComputed` for NaN/inf features (NaN distances would otherwise count as hits of
    class 0) or no images.
    """
    feats, _ = _centroid_inputs(feats_by_class, centroids)
    per_class = class_hit_per_class(feats_by_class, centroids)
    total = sum(len(f) for f in feats)
    if not total:
        raise MetricNotComputed("class_hit", "no images")
    return float(sum(v * len(f) for v, f in zip(per_class, feats) if len(f)) / total)


def _to_unit(x: torch.Tensor | np.ndarray) -> np.ndarray:
    x = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    return np.clip((x + 1.0) / 2.0, 0.0, 1.0)


def mse_ssim(generated: torch.Tensor | np.ndarray, reals: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """Pixel MSE and SSIM of each generated image against its NEAREST real image, averaged.

    Pairing. Batra, Mahajan & Vartak (NYU), "Few Shot Learning for Image Generation", §4.1 and
    Table 1, score generated images by
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

    for x, what in ((generated, "generated"), (reals, "real")):
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if not np.isfinite(x).all():
            raise MetricNotComputed("mse_ssim", f"NaN/inf pixels in the {what} images")
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
    if p.ndim == 2 and not np.isfinite(p).all():
        raise MetricNotComputed("inception_score", "NaN/inf class probabilities")
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
