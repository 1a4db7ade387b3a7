"""Copy-aware metrics and degenerate inputs, on synthetic features with known answers.

The protocol-level checks on real images (the shots control scores as a copy, real images do not)
are in tests/test_evaluation.py; here each metric function is held to its documented rule.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from orchestrator.evaluation import metrics as M
from orchestrator.evaluation import MetricNotComputed

pytestmark = pytest.mark.numerical  # float results of CPU kernels: .ci/run runs these under two kernel families


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------ memorisation ------

def test_memorized_share_is_at_its_nominal_rate_for_exchangeable_images_and_one_for_copies():
    """Generated images drawn like the reals land at or below the threshold k/(n+1) of the time."""
    rng = _rng(0)
    n_reals, q = 16, 0.05
    k = M.memorization_rank(n_reals, q)
    assert k == 1  # floor(0.05 * 17) = 0, raised to 1
    shares, nominals = [], []
    for _ in range(300):  # 300 synthetic classes: shots, reals and generated images of one distribution
        centre = rng.normal(size=8) * 3
        shots, reals, gen = (centre + rng.normal(size=(n, 8)) for n in (4, n_reals, 100))
        share, nominal = M.memorized_share(gen, shots, reals, q=q)
        shares.append(share); nominals.append(nominal)
    assert nominals[0] == pytest.approx(1 / 17)
    assert np.mean(shares) == pytest.approx(1 / 17, abs=0.015)

    # copies of the shots: distance 0 <= any threshold -> 1 exactly; the ratio to the reals' distance is 0
    centre = rng.normal(size=8)
    shots, reals = centre + rng.normal(size=(4, 8)), centre + rng.normal(size=(176, 8))
    copies = np.tile(shots, (32, 1))
    assert M.memorized_share(copies, shots, reals)[0] == 1.0
    # 0 up to the float64 cancellation in |x|^2 - 2 x.s + |s|^2 (BLAS sums x.s in its own order):
    # sqrt(few * 2.2e-16) * |x| ~ 1e-7 for |x| ~ 3, over a reals' median distance ~ 3
    assert 0.0 <= M.shot_distance_ratio(copies, shots, reals) < 1e-6
    fresh = centre + rng.normal(size=(2000, 8))
    assert M.shot_distance_ratio(fresh, shots, reals) == pytest.approx(1.0, abs=0.15)
    # k grows with n: 176 reals -> k = floor(0.05 * 177) = 8, nominal 8/177
    assert M.memorized_share(fresh, shots, reals)[1] == pytest.approx(8 / 177)
    # off-class images (far from the shots) are never memorised
    assert M.memorized_share(fresh + 50.0, shots, reals)[0] == 0.0


def test_memorized_share_of_the_reals_is_leave_one_out_at_the_rules_rate():
    rng = _rng(1)
    shots, reals = rng.normal(size=(4, 8)), rng.normal(size=(176, 8))
    share, nominal = M.memorized_share_real(shots, reals)
    k = M.memorization_rank(175, 0.05)  # thresholds from the other 175 reals
    assert nominal == pytest.approx(k / 176) and share == pytest.approx(nominal)  # exact without ties
    # one real identical to a shot (distance 0) is memorised, and so is its leave-one-out neighbourhood
    reals[0] = shots[0]
    assert M.memorized_share_real(shots, reals)[0] >= k / 176
    with pytest.raises(MetricNotComputed, match="at least 2"):
        M.memorized_share_real(shots, reals[:1])


# ------------------------------------------------------------------------------- PRDC -------

def test_prdc_sees_repeated_images_as_low_recall_and_coverage():
    rng = _rng(2)
    real, fake = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same = M.prdc(real, fake, k=5)
    assert same["precision"] > 0.8 and same["recall"] > 0.8 and same["coverage"] > 0.9
    assert same["density"] == pytest.approx(1.0, abs=0.2)
    # Naeem et al. §4: E[coverage] for one distribution = 1 - prod_{i=1..k} (N - i) / (N + M - i) (0.969 here)
    expected = 1 - np.prod([(400 - i) / (800 - i) for i in range(1, 6)])
    assert same["coverage"] == pytest.approx(expected, abs=0.03)

    few = real[rng.choice(400, 4, replace=False)] + 0.01 * rng.normal(size=(4, 16))
    copies = M.prdc(real, np.repeat(few, 100, axis=0), k=5)  # 4 images repeated: each fake ball has radius 0
    assert copies["recall"] == 0.0 and copies["coverage"] < 0.1 and copies["precision"] > 0.9

    shifted = M.prdc(real, fake + 10.0, k=5)  # off the real manifold: no fidelity
    assert shifted["precision"] == 0.0 and shifted["density"] == 0.0
    with pytest.raises(MetricNotComputed, match="at least 7"):
        M.prdc(real[:6], fake, k=5)  # k + 1 = 6 samples: the package's k-th value selection would crash
    assert np.isfinite(M.prdc(real[:7], fake[:7], k=5)["recall"])


# --------------------------------------------------------------- degenerate inputs -------

def test_fid_refuses_too_few_samples_and_nan_but_scores_a_collapsed_generator():
    rng = _rng(3)
    real = rng.normal(size=(300, 16))
    for bad, reason in ((real[:1], "need at least 2"), (real[:16], "singular by construction"),
                        (np.vstack([real[:50], [[np.nan] * 16]]), "NaN/inf")):
        with pytest.raises(MetricNotComputed, match=reason):
            M.fid(bad, real)
        with pytest.raises(ValueError):  # MetricNotComputed is a ValueError: old callers still catch it
            M.fid(real, bad)
    # a collapsed generator (one image, 100 times: covariance 0, N > dim) gets the Fréchet distance of a point
    # mass to the real Gaussian, |mu_g - mu_r|^2 + tr(S_r): a bad number, not "not computed"
    point = np.full((100, 16), 0.5)
    expected = float(((0.5 - real.mean(0)) ** 2).sum() + np.trace(np.cov(real, rowvar=False)))
    assert M.fid(point, real) == pytest.approx(expected, rel=1e-6)
    # rank-deficient but N > dim (8 distinct images, repeated): computed and checked against eigh
    eight = np.repeat(rng.normal(size=(8, 16)), 20, axis=0)
    value = M.fid(eight, real)
    assert np.isfinite(value) and value == pytest.approx(
        M._frechet_eig(eight.mean(0), np.cov(eight, rowvar=False), real.mean(0), np.cov(real, rowvar=False)), rel=1e-6)


def test_kid_prdc_class_hit_pixels_refuse_nan_and_too_few_samples():
    rng = _rng(4)
    x, y = rng.normal(size=(50, 8)), rng.normal(size=(60, 8))
    nan = x.copy(); nan[3, 2] = np.nan
    inf = x.copy(); inf[0, 0] = np.inf
    for fn in (M.kid, M.kid_spread, M.prdc):
        for bad in (nan, inf):
            with pytest.raises(MetricNotComputed):
                fn(bad, y)
    with pytest.raises(MetricNotComputed):
        M.kid(x[:1], y)
    with pytest.raises(MetricNotComputed, match="4 samples per set"):
        M.kid_spread(x[:3], y)
    spread = M.kid_spread(x, y, n_subsets=20)
    assert np.isfinite(spread) and spread > 0
    assert M.kid_subset_size(50, 60) == 25 and M.kid_subset_size(5000, 9000) == 1000
    # NaN features would all be "nearest" to centroid 0 (argmin of NaN): refused instead of counted as hits
    with pytest.raises(MetricNotComputed):
        M.class_hit([nan, y], np.stack([x.mean(0), y.mean(0)]))
    assert M.class_hit_per_class([x, y], np.stack([x.mean(0), y.mean(0) + 100])) == [1.0, 0.0]
    with pytest.raises(MetricNotComputed):
        M.diversity([nan])
    imgs = torch.zeros(2, 1, 8, 8)
    imgs[1, 0, 0, 0] = float("nan")
    with pytest.raises(MetricNotComputed):
        M.mse_ssim(imgs, torch.zeros(3, 1, 8, 8))
    probs = np.full((4, 3), 1 / 3)
    probs[0] = np.nan
    with pytest.raises(MetricNotComputed):
        M.inception_score(probs)


def test_standardised_kid_and_fid_do_not_depend_on_the_feature_scale():
    """On raw features the cubic kernel scales with |x|^6; standardised with fixed (base) statistics, an
    affine change of the feature space leaves FID and KID unchanged."""
    rng = _rng(5)
    base, a, b = rng.normal(size=(500, 8)), rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) + 0.3
    mu, sd = base.mean(0), base.std(0)
    scale, shift = rng.uniform(10, 1000, size=8), rng.normal(size=8) * 50
    a2, b2, base2 = a * scale + shift, b * scale + shift, base * scale + shift
    mu2, sd2 = base2.mean(0), base2.std(0)
    std1 = M.kid(M.standardise(a, mu, sd), M.standardise(b, mu, sd))
    std2 = M.kid(M.standardise(a2, mu2, sd2), M.standardise(b2, mu2, sd2))
    assert std2 == pytest.approx(std1, rel=1e-6)
    assert abs(M.kid(a2, b2)) > 1e3 * abs(M.kid(a, b))  # raw: the scale, not the distance, drives it
    assert M.fid(M.standardise(a2, mu2, sd2), M.standardise(b2, mu2, sd2)) == pytest.approx(
        M.fid(M.standardise(a, mu, sd), M.standardise(b, mu, sd)), rel=1e-6)


def test_kid_of_resampled_reals_leaves_out_pairs_of_one_image():
    """The _real floor draws both sets from the same reals with replacement: a shared image's self-kernel must not
    count (on heavy-tailed features it would dominate); without shared draws it is exactly the unbiased KID."""
    rng = _rng(6)
    pool = rng.standard_t(2, size=(300, 256)) + 1.0
    perm = rng.permutation(300)
    gi, ri = perm[:120], perm[120:]  # disjoint, no repeats
    value, spread = M.kid_resampled(pool, gi, ri, n_subsets=20)
    assert value == pytest.approx(M.kid(pool[gi], pool[ri]), rel=1e-9, abs=1e-12) and spread > 0
    # with replacement, 128 "generated" vs 30 "real" draws from 30 images in 512-d, where k(x, x) = 8 >> k(x, y) = 1:
    # leaving out pairs of one image keeps the floor near 0 and far less noisy than the plain unbiased KID
    small = rng.normal(size=(30, 512))
    distinct, plain = [], []
    for _ in range(30):
        g, r = rng.integers(0, 30, 128), rng.integers(0, 30, 30)
        distinct.append(M.kid_resampled(small, g, r, n_subsets=2)[0])
        plain.append(M.kid(small[g], small[r]))
    assert np.std(distinct) < 0.25 * np.std(plain)
    assert abs(np.mean(distinct)) < 3 * np.std(distinct) / np.sqrt(30)
    with pytest.raises(MetricNotComputed):
        M.kid_resampled(pool, np.array([1, 1]), np.array([1, 1]))
