"""Intervals over replicates: a two-level bootstrap over training seeds and evaluation classes (ours).

A protocol metric that has per-class values (``EvalResult.per_class``) evaluated under several
seeds forms a grid ``values[seed, class]``. The estimand is the metric's mean over seeds and
classes; its uncertainty has two sources: which seeds were trained (the outer level, usually few:
3-5) and which classes were drawn (the inner level). The protocol (docs/protocol.md) reports a mean
with a 95% interval over seeds and classes, and two methods differ only where the interval of
their paired difference excludes zero. :func:`bootstrap_ci` resamples classes within each seed and
seeds at the outer level:

1. Point estimate: the mean over seeds of each seed's mean over its (finite) classes; seeds weigh
   equally whatever number of classes each kept.
2. Each of ``n_boot`` replicates draws the seeds with replacement and, within the drawn seeds, the
   classes with replacement, and takes the same mean of means. ``design="crossed"`` (default) draws
   ONE class resample per replicate and applies it inside every drawn seed: the protocol evaluates
   the same novel classes under every seed, so a class's difficulty is shared by all seeds (a
   crossed design) and the class draw must be shared too (Owen, "The pigeonhole bootstrap", Annals
   of Applied Statistics 1(2), 2007). ``design="nested"`` draws the classes independently inside
   each drawn seed (Davison & Hinkley, *Bootstrap Methods and their Application*, 1997, §3.8): right
   when every seed saw its own draw of classes, too narrow when classes are shared (measured below).
3. The interval is the percentile interval of the replicates with its two half-widths scaled for
   the few units at each level (in the spirit of Hesterberg's expanded percentile interval, "What
   teachers should know about the bootstrap", The American Statistician 69(4), 2015): by
   ``sqrt(n/(n-1))`` per level (a bootstrap variance of a mean of n is (n-1)/n of the unbiased one)
   and by ``t_df / z`` with ``df`` the Welch-Satterthwaite degrees of freedom of the seed and class
   components (seed means' and class means' variances). With 3 seeds the plain percentile interval
   under-covers (below): it cannot reach beyond the range of 3 seed means. ``expand=False`` gives the plain percentile interval.

With one seed the outer level cannot be resampled: the interval is over classes only
(``CI.n_seeds`` says so); with one finite cell it is that point.

NaN handling: a NaN cell (the metric was not computed for that class under that seed) is dropped;
a seed (row) or a class (column) with no finite cell is dropped; all three counts are on the result
(``dropped_cells``, ``dropped_seeds``, ``dropped_classes``). Nothing is imputed.

Coverage of a known mean on synthetic crossed data y[s, c] = 1 + a_s + b_c + e_sc (3-10 seeds,
10-20 classes): crossed + expanded 0.94-1.00 (conservative when the seed x class interaction
dominates, as the pigeonhole bootstrap is known to be); plain percentile as low as 0.72 with 3
seeds; ``design="nested"`` on shared classes as low as 0.71. ``tests/test_stats.py`` checks the
crossed + expanded coverage lies within [0.88, 0.99] on a crossed and on a nested case.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from orchestrator.evaluation import registry

__all__ = ["CI", "PairedCI", "bootstrap_ci", "gap_closed", "lift_ci", "metric_bounds", "paired_difference_ci", "summarize_seeds"]


def metric_bounds(name: str) -> tuple[float, float]:
    """The range ``(low, high)`` a recorded metric called ``name`` can take; ``(-inf, inf)`` when undeclared.

    Read from the metric's declaration (``evaluation.registry``): ``recall_domain_shots`` -> [0, 1];
    ``fid_domain_per_class`` -> >= 0; ``inception_score_domain`` -> >= 1; KID (an unbiased MMD² estimate,
    negative when the two sets are closer than the estimator's noise) is unbounded; a ``_computed`` flag is in
    [0, 1]. :func:`summarize_seeds` intersects an interval with it, so that a share never gets a lower end
    below 0: intersecting with the parameter's own range cannot lose coverage (the true value lies in it),
    unlike clipping to the range of the observed cells, which undoes the expansion above (tests/test_stats.py).
    Undeclared names (a test double's diagnostics) are left as computed.
    """
    try:
        return registry.bounds(name)
    except registry.UnknownMetric:
        return (-math.inf, math.inf)


class CI(tuple):
    """``(mean, low, high)`` as a tuple (unpacks into three floats), with counts as attributes.

    Attributes: ``mean``, ``low``, ``high`` (floats; NaN when no cell was finite), ``level``,
    ``design``, ``n_seeds``, ``n_classes`` and ``n_cells`` (kept after dropping NaN),
    ``dropped_cells`` (every NaN cell, those of dropped rows/columns included), ``dropped_seeds``
    and ``dropped_classes`` (rows / columns without a finite cell).
    """

    def __new__(cls, mean: float, low: float, high: float, **info: Any) -> "CI":
        self = super().__new__(cls, (float(mean), float(low), float(high)))
        self.__dict__.update(info)
        return self

    def __getnewargs__(self) -> tuple:  # pickle: rebuild from the values; attributes come back as state
        return tuple(self)

    mean = property(lambda self: self[0])
    low = property(lambda self: self[1])
    high = property(lambda self: self[2])

    def __repr__(self) -> str:
        return (f"CI(mean={self[0]:.6g}, low={self[1]:.6g}, high={self[2]:.6g}, "
                f"n_seeds={self.__dict__.get('n_seeds')}, dropped_cells={self.__dict__.get('dropped_cells')})")


class PairedCI(tuple):
    """``(mean, low, high, separated)`` of a paired difference a - b, with the counts of :class:`CI`."""

    def __new__(cls, mean: float, low: float, high: float, separated: bool, **info: Any) -> "PairedCI":
        self = super().__new__(cls, (float(mean), float(low), float(high), bool(separated)))
        self.__dict__.update(info)
        return self

    def __getnewargs__(self) -> tuple:  # pickle: rebuild from the values; attributes come back as state
        return tuple(self)

    mean = property(lambda self: self[0])
    low = property(lambda self: self[1])
    high = property(lambda self: self[2])
    separated = property(lambda self: self[3])


def _grid(values: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """``values`` as float64 [n_seeds, n_classes] without all-NaN rows and columns, and the drop counts."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2:
        raise ValueError(f"values must be [n_seeds, n_classes], got shape {v.shape}")
    finite = np.isfinite(v)
    rows, cols = finite.any(1), finite.any(0)
    counts = {"dropped_cells": int((~finite).sum()), "dropped_seeds": int((~rows).sum()),
              "dropped_classes": int((~cols).sum())}
    return v[rows][:, cols], counts


def _ratio_means(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.where(counts > 0, counts, 1.0), np.nan)


def _replicates(v: np.ndarray, n_boot: int, rng: np.random.Generator, design: str) -> np.ndarray:
    """Bootstrap replicates [n_boot] of the mean of seed means of ``v`` [S, C] (NaN cells excluded)."""
    S, C = v.shape
    finite = np.isfinite(v)
    w, m = np.where(finite, v, 0.0), finite.astype(np.float64)
    seed_draws = rng.multinomial(S, np.full(S, 1.0 / S), size=n_boot).astype(np.float64)  # [B, S]
    if design == "crossed":
        class_draws = rng.multinomial(C, np.full(C, 1.0 / C), size=n_boot).astype(np.float64)  # [B, C]
        row_means = _ratio_means(class_draws @ w.T, class_draws @ m.T)  # [B, S]
    else:  # nested: each seed's classes drawn independently, among that seed's finite cells
        row_means = np.empty((n_boot, S))
        for s in range(S):
            cells = v[s][finite[s]]
            draws = rng.multinomial(len(cells), np.full(len(cells), 1.0 / len(cells)), size=n_boot)
            row_means[:, s] = draws @ cells / len(cells)
    ok = np.isfinite(row_means)  # a drawn seed may have no finite cell among the drawn classes
    weights = seed_draws * ok
    return _ratio_means((weights * np.where(ok, row_means, 0.0)).sum(1), weights.sum(1))


def _scale(v: np.ndarray, level: float, design: str) -> float:
    """Half-width factor: sqrt(unbiased / bootstrap variance) * t_df / z (Welch-Satterthwaite df)."""
    from scipy import stats

    S, C = v.shape
    comps = []  # (bootstrap-style variance of the mean at this level, number of units)
    if S > 1:
        comps.append((float(np.var(np.nanmean(v, axis=1))) / S, S))
    if C > 1 and (design == "crossed" or S == 1):
        comps.append((float(np.var(np.nanmean(v, axis=0))) / C, C))
    raw = sum(c for c, _ in comps)
    if not comps or raw <= 0.0:
        return 1.0
    unbiased = [(c * n / (n - 1.0), n) for c, n in comps]
    total = sum(c for c, _ in unbiased)
    df = total ** 2 / sum(c ** 2 / (n - 1.0) for c, n in unbiased if c > 0)
    z = stats.norm.ppf(0.5 + level / 2.0)
    return math.sqrt(total / raw) * float(stats.t.ppf(0.5 + level / 2.0, df)) / z


def bootstrap_ci(values: np.ndarray, level: float = 0.95, n_boot: int = 2000, seed: int = 0,
                 expand: bool = True, design: str = "crossed") -> CI:
    """Mean and two-level bootstrap interval of ``values`` [n_seeds, n_classes] (see the module docstring).

    Args:
      values: float array [n_seeds, n_classes] of one metric, cell (s, c) = class c under seed s, classes
        in the same order in every row (a 1-d array is one seed); NaN cells are dropped.
      level: interval coverage in (0, 1).
      n_boot: bootstrap replicates (>= 100).
      seed: the resampling RNG's seed (deterministic given it).
      expand: scale the percentile half-widths for few seeds/classes (module docstring, step 3).
      design: "crossed" (the same classes under every seed: one class draw per replicate, shared) or
        "nested" (each seed its own classes: independent class draws per seed).
    Returns: :class:`CI` ``(mean, low, high)`` in the metric's units; all NaN when no cell is finite;
      ``low == high == mean`` with a single finite cell (no spread can be estimated: see ``n_cells``).
    Raises: ValueError for a bad shape, level, n_boot or design.
    Source: ours (two-stage bootstrap: Davison & Hinkley 1997 §3.8; crossed: Owen 2007; expansion after
      Hesterberg 2015 with Welch-Satterthwaite degrees of freedom).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 100:
        raise ValueError(f"n_boot must be >= 100, got {n_boot}")
    if design not in ("crossed", "nested"):
        raise ValueError(f"design must be 'crossed' or 'nested', got {design!r}")
    v, counts = _grid(values)
    finite = np.isfinite(v)
    info = dict(level=level, design=design, n_seeds=int(v.shape[0]), n_classes=int(v.shape[1]),
                n_cells=int(finite.sum()), **counts)
    if not finite.any():
        return CI(math.nan, math.nan, math.nan, **info)
    mean = float(np.mean(np.nanmean(v, axis=1)))
    if finite.sum() == 1:
        return CI(mean, mean, mean, **info)
    reps = _replicates(v, n_boot, np.random.default_rng(seed), design)
    reps = reps[np.isfinite(reps)]
    alpha = 1.0 - level
    q_low, q_high = np.quantile(reps, [alpha / 2.0, 1.0 - alpha / 2.0])
    f = _scale(v, level, design) if expand else 1.0
    low = mean - f * max(mean - float(q_low), 0.0)
    high = mean + f * max(float(q_high) - mean, 0.0)
    return CI(mean, low, high, **info)


def paired_difference_ci(a: np.ndarray, b: np.ndarray, level: float = 0.95, n_boot: int = 2000, seed: int = 0,
                         expand: bool = True, design: str = "crossed") -> PairedCI:
    """Interval of the mean paired difference ``a - b`` of two rows evaluated on the same seeds and classes.

    Args: ``a``, ``b``: float arrays [n_seeds, n_classes] of one metric, cell (s, c) of both from the
      same seed s and class c (same order). A cell NaN in either is dropped. ``level``, ``n_boot``,
      ``seed``, ``expand``, ``design``: as :func:`bootstrap_ci`.
    Returns: :class:`PairedCI` ``(mean, low, high, separated)``: the per-cell difference put through
      :func:`bootstrap_ci`; ``separated`` is True only when the interval excludes 0 (``low > 0`` or
      ``high < 0``); a NaN or single-cell interval is never separated.
    Raises: ValueError when the shapes differ (and as :func:`bootstrap_ci`).
    Source: ours.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired rows must have one shape, got {a.shape} and {b.shape}")
    ci = bootstrap_ci(a - b, level=level, n_boot=n_boot, seed=seed, expand=expand, design=design)
    separated = bool(ci.n_cells > 1 and (ci.low > 0.0 or ci.high < 0.0))  # False for NaN
    return PairedCI(ci.mean, ci.low, ci.high, separated, **dict(ci.__dict__))


def lift_ci(values: np.ndarray, scratch: np.ndarray, metric: str, level: float = 0.95, n_boot: int = 2000,
            seed: int = 0) -> PairedCI:
    """The lift of ``metric`` over the untrained control: the paired difference ``values - scratch`` with its
    interval intersected with the declared range of ``lift_<metric>`` (``metric_bounds``: a lift of a share lies in
    [-1, 1], which the small-sample expansion of few classes can reach past, e.g. [-2.571, 2.471] on 2 classes).

    Args: ``values``: ``metric`` of the method (or of the augmented control: its own lift), ``scratch``:
      ``<metric>_scratch``, both float arrays [n_seeds, n_classes] (or one seed's [n_classes]) on the same seeds and
      classes; ``metric``: the base name (``class_hit``, ``diversity``, ``memorized_share``); ``level``, ``n_boot``,
      ``seed``: as :func:`bootstrap_ci`.
    Returns: :class:`PairedCI`; ``separated`` is judged on the interval before the intersection (0 lies in every
      lift's range, so the intersection never changes it). The one definition of a lift that the protocol's
      placement, ``compare`` and the sweep's summary read. Raises: as :func:`paired_difference_ci`.
    """
    d = paired_difference_ci(values, scratch, level=level, n_boot=n_boot, seed=seed)
    lo, hi = metric_bounds(f"lift_{metric}")
    low, high = (float(v) for v in np.clip([d.low, d.high], lo, hi))  # NaN stays NaN
    return PairedCI(d.mean, low, high, d.separated, **dict(d.__dict__))


GAP_EPS = 1e-9  # an augmented lift this close to 0 leaves no gap to close (the share would be lift / ~0)


def gap_closed(lift: float | None, augmented: tuple, metric: str) -> tuple[float, str | None]:
    """The share of the gap from the untrained to the augmented control that a method closes: ``lift / augmented
    lift`` (0 = the untrained control, 1 = as far as classic augmentation, > 1 beyond it), or NaN with the reason
    when there is no gap to share.

    Args: ``lift``: the method's mean lift over the untrained control (``lift_ci(...).mean``; None or NaN: unknown);
      ``augmented``: the augmented control's lift as ``(mean, low, high, separated)`` (a :class:`PairedCI` from
      :func:`lift_ci`; None entries: not paired); ``metric``: the base name, whose declared direction decides which
      side of 0 the augmented lift must lie on.
    Returns: ``(share, None)``, or ``(nan, reason)`` when the augmented lift is not separated from 0 (its interval
      covers 0), is within ``GAP_EPS`` of 0, or lies on the worse side of 0 for a metric with a direction (a
      ``class_hit`` augmented lift <= 0: classic augmentation is no better than an untrained model, so a share of
      that "gap" would flip sign and mean nothing). NaN is recorded as missing (``<name>_computed`` = 0), never as a
      number. Source: ours.
    """
    mean, low, high, separated = augmented
    if lift is None or mean is None or not math.isfinite(float(lift)) or not math.isfinite(float(mean)):
        return math.nan, "the lift or the augmented control's lift is unknown"
    where = "(lift {:.3g} [{}, {}])".format(mean, *("n/a" if v is None else f"{v:.3g}" for v in (low, high)))
    if not separated:
        return math.nan, f"the augmented control's {metric} is not separated from the untrained control's {where}"
    if abs(mean) <= GAP_EPS:
        return math.nan, f"the augmented control's {metric} lift is 0 {where}: no gap to close"
    direction = registry.mode(metric)
    if (direction == "max" and mean <= 0) or (direction == "min" and mean >= 0):
        return math.nan, (f"the augmented control's {metric} is worse than the untrained control's {where}: "
                          f"no gap to close")
    return float(lift) / float(mean), None


def summarize_seeds(evaluations: list[dict[str, Any]], level: float = 0.95) -> dict[str, float]:
    """``<metric>_mean``, ``<metric>_ci_low``, ``<metric>_ci_high`` of every metric all ``evaluations`` hold.

    Args: ``evaluations``: one dict per seed (a training seed of ``train --replicates``, or an evaluation seed of
      ``evaluate --eval-seed 0 1 2``), as the lifecycle writes ``per_class_<figure>.json``: ``metrics`` (name ->
      float) and ``per_class`` (name -> one float per novel class, the same classes in the same order for every
      seed). ``level``: the interval's coverage.
    Returns: for each metric name in every dict's ``metrics``: the :func:`bootstrap_ci` of the grid
      [seeds, classes] of its per-class values where every seed has them (with one length), else of the grid
      [seeds, 1] of its headline values (pooled metrics: FID, KID, IS, accuracy), intersected with the metric's
      range (:func:`metric_bounds`: a share's interval stays within [0, 1]). NaN where nothing was finite.
    Source: ours.
    """
    names = sorted(set.intersection(*(set(e["metrics"]) for e in evaluations))) if evaluations else []
    out: dict[str, float] = {}
    for name in names:
        rows = [(e.get("per_class") or {}).get(name) for e in evaluations]
        if all(r is not None for r in rows) and len({len(r) for r in rows}) == 1 and len(rows[0]) > 0:
            grid = np.asarray(rows, dtype=np.float64)  # [seeds, classes]
        else:
            grid = np.asarray([[e["metrics"][name]] for e in evaluations], dtype=np.float64)  # [seeds, 1]
        mean, low, high = bootstrap_ci(grid, level=level)[:3]
        low, high = (float(v) for v in np.clip([low, high], *metric_bounds(name)))  # the metric's range; NaN stays
        out.update({f"{name}_mean": mean, f"{name}_ci_low": low, f"{name}_ci_high": high})
    return out
