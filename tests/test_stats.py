"""The two-level bootstrap of orchestrator.evaluation.stats on synthetic grids with a known answer.

Each coverage check draws 200 synthetic [seeds, classes] grids around a known mean and counts how
often the 95% interval holds it; the RNG seeds are fixed, so the counts are deterministic.
"""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from orchestrator.evaluation.stats import (CI, PairedCI, bootstrap_ci, lift_ci, metric_bounds, paired_difference_ci,
                                           summarize_seeds)

TRUTH = 1.0


def _coverage(n_seeds: int, n_classes: int, sd_seed: float, sd_class: float, sd_cell: float, *,
              shared_classes: bool = True, reps: int = 200, **kw) -> float:
    """Share of ``reps`` synthetic grids whose interval covers TRUTH.

    Grid: y[s, c] = TRUTH + a_s + b_c + e_sc, a ~ N(0, sd_seed), b ~ N(0, sd_class), e ~ N(0, sd_cell);
    b_c shared by all seeds (crossed, as the protocol's novel classes are) or drawn per seed (nested).
    """
    rng = np.random.default_rng(7)
    hits = 0
    for r in range(reps):
        a = rng.normal(0, sd_seed, (n_seeds, 1))
        b = rng.normal(0, sd_class, (1, n_classes) if shared_classes else (n_seeds, n_classes))
        v = TRUTH + a + b + rng.normal(0, sd_cell, (n_seeds, n_classes))
        _, low, high = bootstrap_ci(v, seed=r, **kw)
        hits += low <= TRUTH <= high
    return hits / reps


def test_interval_covers_a_known_mean_at_about_its_nominal_rate():
    # 3 seeds x 20 classes, seed, class and cell effects of one size (crossed: classes shared by seeds)
    assert 0.88 <= _coverage(3, 20, 1.0, 1.0, 1.0) <= 0.99
    # 5 seeds, classes drawn afresh for every seed (nested)
    assert 0.88 <= _coverage(5, 20, 1.0, 1.0, 1.0, shared_classes=False) <= 0.99
    # 10 seeds x 10 classes, class effects dominating
    assert 0.88 <= _coverage(10, 10, 0.1, 1.0, 0.3) <= 0.99


def test_expansion_is_what_makes_three_seeds_cover():
    """With 3 seeds and seed effects dominating, plain percentiles cannot reach beyond 3 seed means."""
    plain = _coverage(3, 20, 1.0, 0.0, 0.1, expand=False)
    expanded = _coverage(3, 20, 1.0, 0.0, 0.1)
    assert plain < 0.85 and expanded >= 0.9, (plain, expanded)


def test_shared_classes_need_the_crossed_design():
    """Independent class draws per seed treat a shared class effect as if it averaged out over seeds."""
    nested = _coverage(10, 10, 0.1, 1.0, 0.3, design="nested")
    crossed = _coverage(10, 10, 0.1, 1.0, 0.3, design="crossed")
    assert nested < 0.85 and crossed >= 0.9, (nested, crossed)


def test_point_estimate_is_the_mean_of_seed_means_and_nan_cells_are_dropped_and_counted():
    v = np.array([[1.0, 2.0, 3.0, np.nan],
                  [5.0, np.nan, np.nan, np.nan],
                  [np.nan, np.nan, np.nan, np.nan]])
    ci = bootstrap_ci(v)
    assert isinstance(ci, CI) and len(ci) == 3
    mean, low, high = ci
    assert mean == pytest.approx((2.0 + 5.0) / 2)  # seeds weigh equally, whatever classes they kept
    assert low < mean < high
    assert (ci.dropped_cells, ci.dropped_seeds, ci.dropped_classes) == (8, 1, 1)
    assert (ci.n_seeds, ci.n_classes, ci.n_cells) == (2, 3, 4)
    assert bootstrap_ci(v) == ci  # deterministic given its seed
    assert pickle.loads(pickle.dumps(ci)).dropped_cells == 8


def test_degenerate_grids():
    assert all(math.isnan(x) for x in bootstrap_ci(np.full((3, 4), np.nan)))
    assert tuple(bootstrap_ci(np.array([[np.nan, 2.5]]))) == (2.5, 2.5, 2.5)  # one cell: no spread
    assert tuple(bootstrap_ci(np.full((3, 5), 0.25))) == pytest.approx((0.25, 0.25, 0.25))
    one_seed = bootstrap_ci(np.random.default_rng(0).normal(size=20))  # 1-d: one seed, classes only
    assert one_seed.n_seeds == 1 and one_seed.low < one_seed.mean < one_seed.high
    with pytest.raises(ValueError):
        bootstrap_ci(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError):
        bootstrap_ci(np.zeros((2, 2)), level=1.0)
    with pytest.raises(ValueError):
        paired_difference_ci(np.zeros((2, 3)), np.zeros((3, 2)))


def test_paired_difference_identical_rows_not_separated_shifted_rows_separated():
    rng = np.random.default_rng(3)
    # 3 seeds x 20 classes with strong class and seed effects shared by both rows (the pairing removes them)
    base = 0.3 + rng.normal(0, 0.2, (3, 1)) + rng.normal(0, 0.2, (1, 20))
    a = base + rng.normal(0, 0.02, (3, 20))
    same = paired_difference_ci(a, a.copy())
    assert isinstance(same, PairedCI) and tuple(same) == (0.0, 0.0, 0.0, False)

    shifted = paired_difference_ci(a + 0.1 + rng.normal(0, 0.02, (3, 20)), a)
    mean, low, high, separated = shifted
    assert separated and 0 < low < 0.1 < high and mean == pytest.approx(0.1, abs=0.02)
    assert paired_difference_ci(a, a + 0.1).separated  # negative side too

    # a tiny shift under cell noise is not separated, and neither are rows that differ only by noise
    noisy = paired_difference_ci(a + rng.normal(0, 0.2, (3, 20)), a + rng.normal(0, 0.2, (3, 20)))
    assert not noisy.separated and noisy.low < 0 < noisy.high
    # a NaN in either row drops that cell
    b = a.copy(); b[1, 4] = np.nan
    assert paired_difference_ci(a + 0.1, b).dropped_cells == 1


def test_summarize_seeds_keeps_a_share_inside_its_range_and_leaves_kid_unbounded():
    # Three seeds of a share near 0 (most classes 0, one class 1/16 in one seed): the expanded interval reaches
    # below 0 unless intersected with [0, 1]; KID's unbiased estimate may be negative and keeps its lower end.
    share = [[0.0] * 9 + [0.0625], [0.0] * 10, [0.0] * 10]
    kid = [[-0.5, 0.2, 0.1], [0.3, -0.2, 0.0], [0.1, 0.1, -0.4]]
    evals = [{"metrics": {"memorized_share_shots": float(np.mean(share[s])), "kid_domain": float(np.mean(kid[s])),
                          "fid_domain": f},
              "per_class": {"memorized_share_shots": share[s]}}
             for s, f in zip(range(3), [1.0, 2.0, 30.0])]
    raw = bootstrap_ci(np.asarray(share))
    assert raw.low < 0  # what the clip is for
    out = summarize_seeds(evals)
    assert out["memorized_share_shots_ci_low"] == 0.0
    assert out["memorized_share_shots_ci_high"] == pytest.approx(raw.high)
    assert out["fid_domain_ci_low"] == 0.0 < out["fid_domain_ci_high"]
    kid_raw = bootstrap_ci(np.asarray([[np.mean(r)] for r in kid]))
    assert out["kid_domain_ci_low"] == pytest.approx(kid_raw.low) and kid_raw.low < 0
    assert metric_bounds("recall_domain_real") == (0.0, 1.0)
    assert metric_bounds("inception_score_domain_shots")[0] == 1.0
    assert metric_bounds("kid_domain") == (-math.inf, math.inf)


def test_a_lift_is_a_paired_difference_inside_the_lifts_declared_range():
    """``lift_ci`` (the lift over the untrained control read by the protocol, compare and the sweep's summary): the
    paired difference with its interval intersected with ``lift_<metric>``'s declared range. Two classes with a
    large spread expand past [-1, 1] (the 2-class digits sweep printed [-2.571, 2.471]); a lift of a share cannot."""
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    raw = paired_difference_ci(a, b)
    assert raw.low < -1.0 and raw.high > 1.0  # the case the intersection is for
    d = lift_ci(a, b, "class_hit")
    assert (d.mean, d.low, d.high, d.separated) == (raw.mean, -1.0, 1.0, raw.separated)
    assert metric_bounds("lift_class_hit") == (-1.0, 1.0)
    shifted = lift_ci(np.full((3, 8), 0.9) + np.linspace(0, 0.05, 8), np.full((3, 8), 0.1), "class_hit")
    assert shifted.separated and -1.0 <= shifted.low <= shifted.mean <= shifted.high <= 1.0
    wide = lift_ci(np.array([50.0, 0.0]), np.array([0.0, 50.0]), "diversity")  # diversity's lift is unbounded
    assert wide.low < -50.0 and wide.high > 50.0


def test_gap_closed_is_missing_where_there_is_no_gap_to_close():
    """``gap_closed`` = lift / augmented lift only where the augmented control is separated above the untrained one
    (for class_hit); an augmented lift <= 0, ~0, or covering 0 gives NaN with its reason, never a number (before,
    a separated negative augmented lift gave a share with its sign flipped)."""
    from orchestrator.evaluation.stats import gap_closed

    share, why = gap_closed(0.1, (0.4, 0.3, 0.5, True), "class_hit")
    assert share == pytest.approx(0.25) and why is None
    for augmented, needle in [((-0.2, -0.3, -0.1, True), "worse"), ((0.0, 0.0, 0.0, True), "is 0"),
                              ((1e-12, 1e-12, 1e-12, True), "is 0"), ((0.1, -0.1, 0.3, False), "not separated"),
                              ((None, None, None, False), "unknown")]:
        share, why = gap_closed(0.1, augmented, "class_hit")
        assert math.isnan(share) and needle in why, (augmented, why)
    assert math.isnan(gap_closed(math.nan, (0.4, 0.3, 0.5, True), "class_hit")[0])
    # a metric without a direction: a separated augmented lift of either sign spans a gap
    assert gap_closed(-0.1, (-0.4, -0.5, -0.3, True), "memorized_share")[0] == pytest.approx(0.25)
    lift = lift_ci(np.array([0.5, 0.6, 0.55]), np.array([0.5, 0.5, 0.5]), "class_hit")
    augmented = lift_ci(np.array([0.4, 0.45, 0.42]), np.array([0.5, 0.5, 0.5]), "class_hit")  # augmented < untrained
    assert augmented.separated and augmented.mean < 0 and math.isnan(gap_closed(lift.mean, augmented, "class_hit")[0])
