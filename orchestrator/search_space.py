"""Search spaces as data: ``search_spaces/<method>.yaml``, loaded and checked before anything starts.

File format (YAML)::

    metric: val_class_hit       # required (or metrics:); a validation metric reported during training (val_*)
    mode: max                   # optional; min or max (default: the metric's declared direction,
                                #   orchestrator/evaluation/registry.py: FID min, class_hit max)
    # or, to search two objectives at once (Optuna multi-objective; each one's direction is what it means):
    # metrics: [val_class_hit, val_fid_domain]   # the FIRST is the primary objective (see sweep.pick_from_front)
    params:                     # required; at least one searched hyperparameter of the method
      inner_lr:    {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}
      gp_weight:   {distribution: uniform, low: 1.0, high: 20.0}
      inner_steps: {distribution: int, low: 3, high: 10}          # inclusive; optional log: true
      arch:        {distribution: choice, values: [dcgan, resnet]}
    fixed:                      # optional; non-searched overrides of the run config for every trial
      width: 8

Rules (each broken rule is a ``UserError`` naming the file, the key and the reason):

- a searched key must be one of the method's ``default_config`` keys, and the distribution must
  produce its type (``int`` for an int default, ``uniform``/``loguniform`` for a float,
  ``choice`` values that parse as the default's type);
- ``low < high`` (``low <= high`` for ``int``); ``loguniform`` needs ``low > 0``;
- ``fixed`` keys may be any key of the resolved run config (harness or method) and are parsed as
  the default's type, like ``--set``; a key may not be both searched and fixed;
- the metric must be a validation metric (``val_*``): novel classes never select anything;
- ``metrics:`` (two or more distinct validation metrics, instead of ``metric:``/``mode:``) makes the sweep
  multi-objective; its first entry is the *primary* objective: checkpoints are selected on it, and the
  configuration re-trained is picked from the Pareto front by it (``orchestrator.sweep.pick_from_front``).

Precedence of a trial's config: harness defaults < method defaults < ``fixed`` < CLI flags <
``--set`` < the trial's searched values (``--set`` on a searched key is refused by ``sweep``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import config as config_mod
from orchestrator.errors import UserError
from orchestrator.evaluation import registry

DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
_TOP_KEYS = {"metric", "mode", "metrics", "params", "fixed"}
_PARAM_KEYS = {"distribution", "low", "high", "values", "log"}


@dataclass(frozen=True)
class Param:
    name: str
    distribution: str
    low: float | int | None = None
    high: float | int | None = None
    values: tuple = ()
    log: bool = False

    def to_tune(self):
        """The Ray Tune domain (OptunaSearch converts it to the matching Optuna distribution)."""
        from ray import tune

        if self.distribution == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.distribution == "uniform":
            return tune.uniform(self.low, self.high)
        if self.distribution == "int":  # Tune's upper bound is exclusive; ours is inclusive
            return (tune.lograndint if self.log else tune.randint)(int(self.low), int(self.high) + 1)
        return tune.choice(list(self.values))

    def describe(self) -> dict[str, Any]:
        if self.distribution == "choice":
            return {"distribution": "choice", "values": list(self.values)}
        out = {"distribution": self.distribution, "low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        return out


@dataclass(frozen=True)
class SearchSpace:
    """A checked search space. ``metric``/``mode``: the (primary) objective; ``metrics``/``modes``: every
    objective, in order (one entry for a single-objective sweep, the primary first)."""

    path: str
    metric: str
    mode: str
    params: dict[str, Param]
    fixed: dict[str, Any] = field(default_factory=dict)
    metrics: tuple[str, ...] = ()
    modes: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.metrics:
            object.__setattr__(self, "metrics", (self.metric,))
            object.__setattr__(self, "modes", (self.mode,))

    @property
    def multi(self) -> bool:
        """Whether the sweep searches several objectives at once (Optuna multi-objective)."""
        return len(self.metrics) > 1

    def to_tune(self) -> dict[str, Any]:
        return {name: p.to_tune() for name, p in self.params.items()}

    def to_dict(self) -> dict[str, Any]:
        head: dict[str, Any] = {"metrics": list(self.metrics)} if self.multi else {"metric": self.metric,
                                                                                  "mode": self.mode}
        return {**head, "params": {k: p.describe() for k, p in self.params.items()}, "fixed": dict(self.fixed)}

    def with_objectives(self, metrics: list[str], where: str = "--objectives") -> SearchSpace:
        """This space searching ``metrics`` instead (``sweep --objectives``); checked like the file's ``metrics:``."""
        from dataclasses import replace

        names, modes = objectives(where, metrics)
        return replace(self, metric=names[0], mode=modes[0], metrics=names, modes=modes)


def objectives(where: str, metrics: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Check a list of objectives (validation metrics); returns (names, modes), modes from each metric's direction.

    Raises UserError (naming ``where``) for a non-list, fewer than two, a repeat, or a non-validation metric."""
    if not isinstance(metrics, (list, tuple)) or len(metrics) < 2 or not all(isinstance(m, str) and m for m in metrics):
        raise UserError(f"{where}: expected two or more validation metrics, e.g. [val_class_hit, val_fid_domain]")
    if len(set(metrics)) != len(metrics):
        raise UserError(f"{where}: {', '.join(metrics)} names an objective twice; list each once")
    return tuple(metrics), tuple(_natural_mode(where, m) for m in metrics)


def _natural_mode(where: str, metric: str) -> str:
    """``metric``'s declared direction (``min``/``max``, from orchestrator/evaluation/registry.py); UserError naming
    ``where`` when it is not a validation metric, not declared, or has no better direction."""
    if not metric.startswith("val_"):
        raise UserError(f"{where}: metric: {metric!r} is not reported during training; use a validation "
                        f"metric (val_fid_domain, val_class_hit, ...): novel classes never select")
    try:
        natural = registry.mode(metric)
    except registry.UnknownMetric:
        raise UserError(f"{where}: metric: {metric!r} is not a declared metric; use one the kind reports during "
                        f"training (val_fid_domain, val_class_hit, val_accuracy, ...) or declare it in "
                        f"orchestrator/evaluation/registry.py") from None
    if natural is None:
        raise UserError(f"{where}: metric: {metric} has no better direction ({registry.spec(metric).meaning}); "
                        f"optimise a metric that has one (val_fid_domain, val_class_hit, val_accuracy, ...)")
    return natural


def default_path(method: str) -> Path:
    """``search_spaces/<method>.yaml`` in the working directory, else in this checkout."""
    rel = Path("search_spaces") / f"{method}.yaml"
    if rel.is_file():
        return rel
    return Path(__file__).resolve().parents[1] / rel


def _number(path, key: str, field_: str, value: Any, want_int: bool) -> float | int:
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{path}: params.{key}.{field_}: expected a number, got {value!r}; fix the value")
    if want_int and not (isinstance(value, int) or float(value).is_integer()):
        raise UserError(f"{path}: params.{key}.{field_}: the int distribution needs whole numbers, got {value!r}")
    return int(value) if want_int else float(value)


def _param(path, key: str, spec: Any, default: Any) -> Param:
    where = f"{path}: params.{key}"
    if not isinstance(spec, dict):
        raise UserError(f"{where}: expected a mapping like {{distribution: uniform, low: 0, high: 1}}, got {spec!r}")
    unknown = set(spec) - _PARAM_KEYS
    if unknown:
        raise UserError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
                        f"allowed: {', '.join(sorted(_PARAM_KEYS))}")
    dist = spec.get("distribution")
    if dist not in DISTRIBUTIONS:
        raise UserError(f"{where}: unknown distribution {dist!r}; choose one of {', '.join(DISTRIBUTIONS)}")
    kind = type(default).__name__
    if dist == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: choice needs a non-empty list 'values', e.g. values: [{default!r}]")
        parsed = []
        for v in values:
            try:
                parsed.append(config_mod.parse_value(key, str(v), default))
            except UserError:
                raise UserError(f"{where}: choice value {v!r} is not a {kind} (the type of {key}'s default "
                                f"{default!r}); fix the value") from None
        return Param(key, dist, values=tuple(parsed))
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        raise UserError(f"{where}: {dist} needs a numeric hyperparameter but {key} is a {kind}; use choice")
    if dist == "int" and not isinstance(default, int):
        raise UserError(f"{where}: int gives whole numbers but {key} is a {kind}; use uniform or loguniform")
    if dist in ("uniform", "loguniform") and isinstance(default, int):
        raise UserError(f"{where}: {dist} gives floats but {key} is an int; use int (optionally with log: true)")
    for f in ("low", "high"):
        if f not in spec:
            raise UserError(f"{where}: missing '{f}' (the {dist} distribution needs low and high)")
    low = _number(path, key, "low", spec["low"], dist == "int")
    high = _number(path, key, "high", spec["high"], dist == "int")
    log = spec.get("log", dist == "loguniform")
    if not isinstance(log, bool):
        raise UserError(f"{where}: log must be true or false, got {log!r}")
    if dist != "int" and "log" in spec:
        raise UserError(f"{where}: 'log' only applies to int; use distribution loguniform for floats")
    if low > high or (dist != "int" and low == high):
        raise UserError(f"{where}: low ({low}) must be {'<=' if dist == 'int' else '<'} high ({high}); "
                        f"swap them or fix the range")
    if (dist == "loguniform" or log) and low <= 0:
        raise UserError(f"{where}: a log scale needs low > 0, got low={low}")
    return Param(key, dist, low=low, high=high, log=bool(log) and dist == "int")


def parse(data: Any, path: str | Path, method_defaults: dict[str, Any]) -> SearchSpace:
    """Validate an already-loaded YAML document against a method's default config."""
    path = str(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping with metric, mode, params (and optional fixed); "
                        f"see search_spaces/figr.yaml")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise UserError(f"{path}: unknown top-level key(s) {', '.join(sorted(map(str, unknown)))}; "
                        f"allowed: {', '.join(sorted(_TOP_KEYS))}")
    multi: dict[str, Any] = {}
    if "metrics" in data:
        if "metric" in data or "mode" in data:
            raise UserError(f"{path}: metrics: is given with metric:/mode:; keep one (metrics: lists every objective, "
                            f"each searched in its own direction)")
        names, modes = objectives(f"{path}: metrics", data["metrics"])
        multi = {"metrics": names, "modes": modes}
        data = {**data, "metric": names[0]}
    metric = data.get("metric")
    if not isinstance(metric, str) or not metric:
        raise UserError(f"{path}: metric: missing; name the validation metric to optimise, e.g. metric: val_class_hit")
    natural = _natural_mode(path, metric)
    mode = data.get("mode", natural)
    if mode not in ("min", "max"):
        raise UserError(f"{path}: mode: {mode!r} is not min or max")
    if mode != natural:
        raise UserError(f"{path}: mode: {mode} contradicts {metric} ({natural} is better, the way checkpoints "
                        f"are selected); use mode: {natural}")
    params = data.get("params")
    if not isinstance(params, dict) or not params:
        raise UserError(f"{path}: params: missing or empty; list at least one hyperparameter to search")
    parsed: dict[str, Param] = {}
    for key, spec in params.items():
        if key not in method_defaults:
            raise UserError(f"{path}: params.{key}: the method has no hyperparameter {key!r}; "
                            f"valid keys: {', '.join(sorted(method_defaults))}")
        parsed[key] = _param(path, key, spec, method_defaults[key])
    fixed_raw = data.get("fixed") or {}
    if not isinstance(fixed_raw, dict):
        raise UserError(f"{path}: fixed: expected a mapping of config key to value, e.g. fixed: {{width: 8}}")
    full = {**config_mod.HARNESS_DEFAULTS, **method_defaults}
    fixed: dict[str, Any] = {}
    for key, value in fixed_raw.items():
        if key not in full:
            raise UserError(f"{path}: fixed.{key}: unknown config key; valid keys: {', '.join(sorted(full))}")
        if key in parsed:
            raise UserError(f"{path}: fixed.{key}: also searched under params; keep it in one of the two")
        try:
            fixed[key] = config_mod.parse_value(key, str(value), full[key])
        except UserError:
            raise UserError(f"{path}: fixed.{key}: {value!r} is not a {type(full[key]).__name__} "
                            f"(like {full[key]!r}); fix the value") from None
    return SearchSpace(path=path, metric=metric, mode=mode, params=parsed, fixed=fixed, **multi)


def load(path: str | Path, method_defaults: dict[str, Any]) -> SearchSpace:
    """Read and validate a search-space file; every problem is a ``UserError`` naming the file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"search space {p} does not exist: write it (see search_spaces/figr.yaml) or pass --space FILE")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{p}: not valid YAML ({str(err).splitlines()[0]}); fix the syntax") from None
    return parse(data, p, method_defaults)
