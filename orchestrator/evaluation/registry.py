"""Every recorded metric declared once: its names, direction, natural range, display and meaning.

A metric's function lives in ``evaluation/metrics.py``; everything the harness needs to know *about* it
lives in one :class:`Metric` declaration below (in the spirit of stylegan2-ada-pytorch's
``metrics/metric_main.py``: one registration per metric). The readers:

- ``stats.metric_bounds``: the range an interval over replicates is intersected with;
- ``kinds.higher_is_better`` (checkpoint selection), ``search_space.parse`` (a sweep's mode) and
  ``compare.metric_mode`` (ranking, "a is better"): all through :func:`mode`;
- ``tracking.NOTE_HEADLINES`` / ``NOTE_CONTROLS`` (a run's description) and ``compare``'s table columns
  and row metrics: through :func:`note_headlines`, :func:`table_columns` and :func:`rides_along`.

A recorded name is ``[best_][val_]STEM[CONTROL][_computed][_mean|_ci_low|_ci_high]``:

- ``STEM`` matches one of a declaration's ``templates`` (regular expressions; ``{feature}`` stands for
  the feature space: one word, ``domain`` or ``inception`` today), e.g. ``fid_{feature}`` and
  ``fid_{feature}_per_class``;
- ``CONTROL`` (declarations with ``controls=True`` only) is one of :data:`CONTROLS`, the yardsticks the
  protocol scores on the same classes (``_unadapted``, ``_scratch``, ``_shots``, ``_real``, ``_augmented``);
- ``val_``: measured on the validation classes during training; ``best_``: a sweep parent's best value;
- ``_computed``: the 0/1 flag beside a metric that could not be computed (no direction, range [0, 1]);
- ``_mean`` / ``_ci_low`` / ``_ci_high``: a replicate parent's mean and interval (the metric's own
  direction and range).

This module imports only the standard library: ``compare`` and ``tracking`` read it without torch.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from orchestrator.errors import UserError

__all__ = ["CONTROLS", "FEATURES", "KINDS", "Metric", "MetricName", "UnknownMetric", "bounds", "declared",
           "mode", "note_headlines", "parse", "register", "rides_along", "spec", "table_columns"]

FEATURES = ("domain", "inception")  # feature spaces of the generator protocol, in display order
# Controls scored on the same classes, shots and seeds as the method (evaluation/protocol.py), in display order;
# "_augmented": the shots under classic seeded augmentation, the bar a few-shot generator should clear (issue 21).
CONTROLS = ("_unadapted", "_scratch", "_shots", "_real", "_augmented")
KINDS = ("generator", "classifier")
REPLICATE_SUFFIXES = ("_mean", "_ci_low", "_ci_high")
FLAG_SUFFIX = "_computed"
_UNIT = (0.0, 1.0)
_NONNEG = (0.0, math.inf)
_ANY = (-math.inf, math.inf)
_BOTH = KINDS


class UnknownMetric(UserError, KeyError):
    """A name no declaration matches (a ``KeyError`` for lookups, a ``UserError`` for the CLI: exit 2)."""

    __str__ = Exception.__str__  # one line without KeyError's quotes


@dataclass(frozen=True)
class Metric:
    """One metric's declaration.

    ``name``: the base name (``fid``); ``templates``: regular expressions of the recorded stems
    (``{feature}`` = a feature space); ``direction``: ``"max"`` (higher is better), ``"min"`` or None (a
    count, a setting, a spread, a flag: nothing to rank by); ``bounds``: the natural range ``(lo, hi)``;
    ``meaning``: one line; ``kinds``: which kinds of method emit it; ``controls``: whether the control
    suffixes apply; ``note``: shown in a run's description with its controls; ``table``: the control
    suffixes (``""`` = the method itself) shown as columns of ``compare``'s table; ``row``: every recorded
    variant (feature space, ``_per_class``, control) rides along in ``compare``'s rows.
    """

    name: str
    templates: tuple[str, ...]
    direction: str | None
    bounds: tuple[float, float]
    meaning: str
    kinds: tuple[str, ...] = ("generator",)
    controls: bool = True
    note: bool = False
    table: tuple[str, ...] = ()
    row: bool = False

    def __post_init__(self) -> None:
        if self.direction not in ("max", "min", None):
            raise ValueError(f"{self.name}: direction must be 'max', 'min' or None, got {self.direction!r}")
        if not self.bounds[0] < self.bounds[1]:
            raise ValueError(f"{self.name}: bounds {self.bounds} must have lo < hi")
        if not set(self.kinds) <= set(KINDS):
            raise ValueError(f"{self.name}: kinds {self.kinds} must be among {KINDS}")
        if not set(self.table) <= {"", *CONTROLS}:
            raise ValueError(f"{self.name}: table {self.table} must be '' or control suffixes")

    def names(self) -> tuple[str, ...]:
        """The recorded stems of the literal templates, features expanded in :data:`FEATURES` order."""
        literal = [t for t in self.templates if re.fullmatch(r"[a-z0-9_{}]+", t)]
        return tuple(t.replace("{feature}", f) for t in literal for f in (FEATURES if "{feature}" in t else ("",)))

    def headline_names(self) -> tuple[str, ...]:
        """The recorded stems of the first template (``fid_domain``, ``fid_inception``: not ``_per_class``)."""
        first = self.templates[0]
        return tuple(first.replace("{feature}", f) for f in (FEATURES if "{feature}" in first else ("",)))


_REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add a declaration (its ``name`` once); returns it. Declaration order is display order."""
    if metric.name in _REGISTRY:
        raise ValueError(f"metric {metric.name!r} is declared twice")
    _REGISTRY[metric.name] = metric
    _pattern.cache_clear()
    parse.cache_clear()
    return metric


def declared() -> tuple[Metric, ...]:
    """Every declaration, in declaration (display) order."""
    return tuple(_REGISTRY.values())


@dataclass(frozen=True)
class MetricName:
    """A parsed recorded name: its declaration and the parts around the stem.

    ``feature``: the feature space or ""; ``control``: a :data:`CONTROLS` suffix or ""; ``val``: measured on
    validation classes; ``best``: a sweep's best value; ``flag``: the ``_computed`` flag; ``replicate``:
    ``_mean``/``_ci_low``/``_ci_high`` or "".
    """

    name: str
    metric: Metric
    stem: str
    feature: str = ""
    control: str = ""
    val: bool = False
    best: bool = False
    flag: bool = False
    replicate: str = ""

    @property
    def direction(self) -> str | None:
        return None if self.flag else self.metric.direction

    @property
    def bounds(self) -> tuple[float, float]:
        return _UNIT if self.flag else self.metric.bounds


@lru_cache(maxsize=1)
def _pattern() -> re.Pattern:
    """One regular expression of every declaration (a named group per declaration), tried in order."""
    feature = "(?P<feature{i}>[a-z0-9]+)"  # FEATURES, or a feature space added later (one word)
    alternatives = []
    for i, m in enumerate(_REGISTRY.values()):
        stems = "|".join(f"(?:{t})".replace("{feature}", feature.format(i=f'{i}_{j}'))
                         for j, t in enumerate(m.templates))
        controls = f"(?P<control{i}>{'|'.join(CONTROLS)})?" if m.controls else ""
        alternatives.append(f"(?P<m{i}>{stems}){controls}")
    return re.compile(r"(?P<best>best_)?(?P<val>val_)?(?:" + "|".join(alternatives) + ")"
                      + f"(?P<flag>{FLAG_SUFFIX})?(?P<rep>{'|'.join(REPLICATE_SUFFIXES)})?")


@lru_cache(maxsize=4096)
def parse(name: str) -> MetricName:
    """Parse a recorded metric name (``val_recall_domain``, ``fid_inception_per_class_scratch_mean``, ...).

    Returns a :class:`MetricName`. Raises :class:`UnknownMetric` (a ``KeyError`` and a ``UserError``) when no
    declaration matches, naming how to declare one. Source: ours.
    """
    match = _pattern().fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise UnknownMetric(f"metric {name!r} is not declared: declare it in orchestrator/evaluation/registry.py "
                            f"(docs/adding_a_method.md, 'Adding a metric') or use a declared one such as "
                            f"val_fid_domain, val_class_hit, val_accuracy")
    groups = match.groupdict()
    metrics = list(_REGISTRY.values())
    i = next(i for i in range(len(metrics)) if groups.get(f"m{i}") is not None)
    feature = next((v for k, v in groups.items() if k.startswith(f"feature{i}_") and v), "")
    return MetricName(name=name, metric=metrics[i], stem=groups[f"m{i}"], feature=feature,
                      control=groups.get(f"control{i}") or "", val=bool(groups["val"]), best=bool(groups["best"]),
                      flag=bool(groups["flag"]), replicate=groups["rep"] or "")


def spec(name: str) -> Metric:
    """The declaration of a recorded metric name; :class:`UnknownMetric` (KeyError, UserError) if undeclared."""
    return parse(name).metric


def mode(name: str) -> str | None:
    """``"max"`` (higher is better), ``"min"`` or None (no direction: a count, a spread, a flag) of a recorded
    name; :class:`UnknownMetric` if undeclared."""
    return parse(name).direction


def bounds(name: str) -> tuple[float, float]:
    """The natural range ``(lo, hi)`` of a recorded name (``_computed`` flags: [0, 1]); :class:`UnknownMetric`
    if undeclared."""
    return parse(name).bounds


def note_headlines() -> tuple[str, ...]:
    """The names a run's description shows (each beside its :data:`CONTROLS`), in display order."""
    return tuple(n for m in _REGISTRY.values() if m.note for n in m.headline_names())


def table_columns() -> tuple[str, ...]:
    """``compare``'s table columns after the ranking metric (whichever a row has), in display order."""
    return tuple(n + c for m in _REGISTRY.values() for n in m.headline_names() for c in m.table)


def rides_along(name: str) -> bool:
    """Whether a recorded name is one of the variants every ``compare`` row carries beside the table columns:
    any feature space, ``_per_class``, control or ``_computed`` flag of a ``row`` metric (FID, KID), not its
    ``val_``/``best_``/replicate forms. Undeclared names do not."""
    try:
        parsed = parse(name)
    except UnknownMetric:
        return False
    return parsed.metric.row and not (parsed.val or parsed.best or parsed.replicate)


# ------------------------------------------------------------------ the generator protocol ----
# evaluation/protocol.py: pooled over classes, per class (mean over classes), and for each control.

register(Metric("fid", ("fid_{feature}", "fid_{feature}_per_class"), "min", _NONNEG,
                "Fréchet distance of generated vs real features, pooled over classes (_per_class: each class's "
                "own, mean over classes)", note=True, table=("",), row=True))
register(Metric("kid", ("kid_{feature}",), "min", _ANY,
                "kernel inception distance, pooled; its unbiased MMD² estimate is negative when the sets are closer "
                "than its noise", note=True, table=("",), row=True))
register(Metric("kid_std", ("kid_{feature}_std",), None, _NONNEG, "KID's spread over subsets", row=True))
register(Metric("class_hit", ("class_hit",), "max", _UNIT,
                "share of generated images whose nearest real-class centroid is their own class", note=True,
                table=("", "_scratch", "_augmented")))
register(Metric("chance", ("chance",), None, _UNIT, "class_hit by chance: 1 / evaluated classes",
                controls=False, table=("",)))
register(Metric("memorized_share", ("memorized_share",), None, _UNIT,
                "share of generated images closer to a shot than the class's reals are (memorized_nominal for "
                "images exchangeable with the reals, 1 for copies): neither end is better"))
register(Metric("memorized_nominal", ("memorized_nominal",), None, _UNIT,
                "memorized_share's expected value for images exchangeable with the reals", controls=False))
register(Metric("shot_distance_ratio", ("shot_distance_ratio",), None, _NONNEG,
                "median nearest-shot distance of the generated images over the reals'"))
register(Metric("precision", ("precision_{feature}",), "max", _UNIT,
                "share of generated images inside the reals' k-NN manifold (Naeem et al. 2020)"))
register(Metric("recall", ("recall_{feature}",), "max", _UNIT,
                "share of reals inside the generated images' k-NN manifold (Naeem et al. 2020)"))
register(Metric("density", ("density_{feature}",), "max", _NONNEG,
                "mean count of real k-NN balls holding a generated image, over k (Naeem et al. 2020)"))
register(Metric("coverage", ("coverage_{feature}",), "max", _UNIT,
                "share of reals whose k-NN ball holds a generated image (Naeem et al. 2020)"))
register(Metric("inception_score", ("inception_score_{feature}",), "max", (1.0, math.inf),
                "exp of the expected KL of p(y|x) from p(y), pooled (MT-GAN eq. 2)"))
register(Metric("mode_score", ("mode_score_{feature}",), "max", _NONNEG,
                "Inception Score penalised by the KL of the generated from the real class marginal (MT-GAN eq. 3)"))
register(Metric("diversity", ("diversity",), None, _NONNEG,
                "mean pairwise raw-feature distance within a class (copies score low, noise high)", note=True,
                table=("",)))
register(Metric("lpips_diversity", ("lpips_diversity",), None, _NONNEG,
                "mean LPIPS distance over seeded pairs of a class's images, mean over classes"))
register(Metric("mse", ("mse",), "min", _NONNEG, "pixel MSE of each generated image to its nearest real",
                table=("",)))
register(Metric("ssim", ("ssim",), "max", (-1.0, 1.0),
                "structural similarity of each generated image to its nearest real (a similarity: higher is better)",
                table=("",)))
register(Metric("diverged", ("diverged",), None, _UNIT, "1 when a generated image had a NaN/inf pixel"))
register(Metric("features_standardised", ("features_standardised",), None, _UNIT,
                "1 when features were standardised with the base classes' statistics", controls=False))
register(Metric("kid_subset_size", ("kid_subset_size",), None, _NONNEG, "KID's subset size", controls=False))
register(Metric("prdc_k", ("prdc_k",), None, _NONNEG, "PRDC's k nearest neighbours", controls=False))
register(Metric("counts", ("n_classes", "n_generated", "n_per_class", "n_reals"), None, _NONNEG,
                "evaluated classes, generated images (pooled, per class), real images (pooled)", controls=False))
register(Metric("shots", ("shots",), None, (1.0, math.inf), "conditioning images per class", controls=False))

# ------------------------------------------------------------------ the classification protocol ----
# orchestrator/classify.py: accuracy over seeded N-way K-shot episodes of the novel (val_: validation) classes.

register(Metric("accuracy", ("accuracy",), "max", _UNIT, "mean query accuracy over episodes",
                kinds=("classifier",), note=True))
register(Metric("accuracy_ci95", ("accuracy_ci95",), None, _UNIT, "half-width of accuracy's 95% interval",
                kinds=("classifier",)))
register(Metric("episodes", ("episodes",), None, _NONNEG, "evaluated episodes", kinds=("classifier",),
                controls=False))

# ------------------------------------------------------------------ training (orchestrator/loop.py) ----

register(Metric("loss", (r"(?:[a-z0-9]+_)*?loss",), "min", _ANY,
                "a method's training loss (d_loss, inner_g_loss, ...): what its optimiser lowers", kinds=_BOTH,
                controls=False))
register(Metric("throughput", ("tasks_per_s", "episodes_per_s"), None, _NONNEG,
                "tasks or episodes meta-trained per second", kinds=_BOTH, controls=False))
register(Metric("budget", ("meta_steps", "tasks_seen", "images_seen", "train_seconds", "eval_seconds"), None,
                _NONNEG, "the training budget spent", kinds=_BOTH, controls=False))

# ------------------------------------------------------------------ methods' own diagnostics ----
# Method.diagnostics(): names prefixed with the method key (methods/base.py).

register(Metric("mfh_diagnostics", (r"mfh_[a-z0-9_]+?",), None, _NONNEG,
                "MFH's memory usage and sample diversity (methods/mfh.py diagnostics)", controls=False))
register(Metric("mtgan_diagnostics", (r"mtgan_[a-z0-9_]+?",), None, _NONNEG,
                "MT-GAN's phase, step and SS deviation from identity (methods/mtgan.py diagnostics)", controls=False))

# ------------------------------------------------------------------ new declarations go here ----
# One register(Metric(...)) per metric, beside its function in evaluation/metrics.py (docs/adding_a_method.md).
# A derived figure such as a lift over a control (class_hit_lift = class_hit - class_hit_scratch) or the share of
# the gap between two controls that the method closes is a metric of its own: declare it here with its range and
# direction (a name ending in a control suffix would be read as that control of its stem).

# The placement of a method between its controls (protocol._placement): lift over the untrained control, paired by
# class (``_augmented``: the positive control's own lift), and the share of the augmented control's lift it closes.
register(Metric("lift_class_hit", ("lift_class_hit",), "max", (-1.0, 1.0),
                "class_hit - class_hit_scratch per class (_augmented: the augmented control's lift)", table=("",)))
register(Metric("lift_memorized_share", ("lift_memorized_share",), None, (-1.0, 1.0),
                "memorized_share - memorized_share_scratch per class: copying bought over the untrained control"))
register(Metric("lift_diversity", ("lift_diversity",), None, _ANY,
                "diversity - diversity_scratch per class: spread gained (or lost, by collapse) over the untrained "
                "control"))
register(Metric("gap_closed_class_hit", ("gap_closed_class_hit",), "max", _ANY,
                "mean lift_class_hit / mean lift_class_hit_augmented: 0 = the untrained control, 1 = the augmented "
                "shots; not computed when the augmented control's lift is not separated from 0", controls=False,
                table=("",)))
register(Metric("gap_closed", ("gap_closed_diversity", "gap_closed_memorized_share"), None, _ANY,
                "mean lift / mean augmented lift of diversity or memorized_share (read with the lifts: neither "
                "direction is better)", controls=False))
