"""``python -m orchestrator compare``: best trial per method and dataset from MLflow.

Reads runs straight from MLflow (an experiment, or the children of a sweep's parent run) so it
works on anything ``train`` or ``sweep`` recorded, on a laptop or against the cluster's server.
Only FINISHED runs that carry the metric are ranked: a failed or still-running trial's last value
is not a result. Two more kinds of run are left out of the ranking, each counted:

- a sweep's parent run (tag ``sweep_role=parent``, or any run whose children are not
  re-evaluations): it repeats the best trial's numbers;
- an ``evaluate`` re-run (tag ``evaluates``): picking the best of several eval seeds of one model
  would select on evaluation noise.

Runs are ranked by a validation metric by default (``val_fid_domain``; a sweep's children by the metric the sweep
ranked them by, ``default_metric``): choosing the "best" run
by its novel-class score would select on the test classes. A ``val_*`` metric's value is its best
over the run's history (what checkpoint selection used), not its last; the table then shows the
chosen run's novel-class metrics.

Replicates, budgets and paired differences:

- A ``train --replicates N`` parent (tag ``replicate_role=parent``) is one row: its metrics are the
  parent's ``<metric>_mean``, printed as ``mean [ci_low, ci_high]``; its seed children are not ranked on
  their own (counted as ``replicate_child``). A ``val_*`` ranking metric, which the parent does not
  hold, is the mean over its children of each child's best value, with its interval over seeds. In a
  (method, dataset) group that has a replicate parent, only replicate parents compete: a single run's
  lucky seed must not outrank a mean over seeds.
- Every row shows its budget (``meta_steps``, ``tasks_seen``, ``images_seen``, ``train_seconds``; the
  mean over seeds for a replicate parent). A row is flagged when a budget counter differs by more than
  10% from more than half of the other rows of its dataset (two rows that differ are both flagged). The
  counters checked are those of the budget the runs were given: ``meta_steps`` and ``tasks_seen`` when
  all ran on ``--steps``, ``train_seconds`` when all ran on ``--budget-minutes``, all three when mixed or
  unknown. ``images_seen`` is shown, never flagged: images per task differ between methods by design.
- Paired differences: ``--pair RUN_A RUN_B`` (repeatable), or by default the best row of each dataset
  against every other row of that dataset. Two rows pair only when they were evaluated on the same
  novel classes under the same (training seed, evaluation seed) set; the difference of ``--diff-metric``
  (default: the ranking metric without ``val_``) is then ``stats.paired_difference_ci`` over the
  per-class values of ``per_class_<figure>.json`` (or over seeds alone for a pooled metric), and an
  interval that covers 0 is printed as "not separated".

Placement between controls: for each row, ``class_hit``, ``diversity`` and ``memorized_share`` minus the
untrained control's (``_scratch``), paired over seeds and classes with ``stats.paired_difference_ci``, and the share of
the gap between the untrained and the augmented control (``_augmented``) the row closes (shown when that gap is
separated from 0); so class-specificity bought by collapse (diversity down) or copying (memorized_share up) shows.

Comparability: every evaluation records ``cmp.*`` tags (``evaluation.comparability``: data, split, image
size, feature network, protocol settings, shots). Rows are ranked within one comparability group only: a table per
group, never one "best" across groups, and no paired difference across groups (``--pair`` across groups is refused,
naming the keys that differ). Runs recorded before these tags form their own group, said so.

Heavy imports (MLflow, matplotlib) happen inside ``run`` so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError
from orchestrator.evaluation import registry

# Shown in the printed table (whichever exist), after the selection metric; rows carry every variant of FID and
# KID (feature spaces, per class, controls) as well. Both from the metrics' declarations (evaluation/registry.py).
TABLE_METRICS = registry.table_columns()


# The ranking metric of an experiment's runs when --metric is not given. A sweep's children are ranked by the metric the
# sweep itself ranked them by (default_metric), never by a second default that could disagree with the sweep's.
DEFAULT_METRIC = "val_fid_domain"


def default_metric(client, parent_id: str | None) -> str:
    """The ranking metric when ``--metric`` is not given: for a sweep's parent run, the metric the sweep ranked its
    trials by (its ``sweep.metric`` param: the search space's metric, which also selected each trial's checkpoint);
    otherwise (an experiment, or a parent without that param) :data:`DEFAULT_METRIC`."""
    if parent_id:
        return client.get_run(parent_id).data.params.get("sweep.metric") or DEFAULT_METRIC
    return DEFAULT_METRIC


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--experiment", default=None,
                     help="MLflow experiment whose runs are compared (default: fewshot-generation)")
    src.add_argument("--parent", metavar="RUN_ID", default=None,
                     help="a sweep's parent run: compare its child runs and log the plot to it")
    p.add_argument("--metric", default=None,
                   help="metric that picks the best run (default: with --parent, the metric the sweep ranked its trials "
                        f"by, its sweep.metric param; otherwise {DEFAULT_METRIC}: validation classes, best value of each "
                        "run's history; a novel-class metric such as fid_domain selects on test classes)")
    p.add_argument("--mode", choices=("min", "max"), default=None,
                   help="whether lower or higher --metric is better (default: its declared direction, "
                        "evaluation/registry.py: fid/kid/mse min, class_hit/ssim/accuracy/recall max)")
    p.add_argument("--out", type=Path, default=Path("compare.png"), help="plot PNG (default compare.png)")
    p.add_argument("--pair", nargs=2, action="append", metavar=("RUN_A", "RUN_B"), default=None,
                   help="paired difference RUN_A - RUN_B with its 95%% interval (repeatable; default: the best row "
                        "of each dataset against every other row); replicate parents or single runs")
    p.add_argument("--curves", action="store_true",
                   help="also draw each row's validation class_hit and FID against meta-steps and training seconds "
                        "(mean and band over seeds, untrained control dashed) into OUT's stem + _curves.png, and "
                        "print each method's time to signal (orchestrator.curves)")
    p.add_argument("--diff-metric", default=None,
                   help="metric of the paired differences (default: --metric without val_, e.g. fid_domain)")


def variant_label(method: str, params: dict[str, str]) -> str:
    """``transfer[arch=infogan]``: the method plus the values of its ``variant_keys`` (architectures,
    ablation switches), so that different models of one method are ranked as separate rows."""
    import methods

    try:
        keys = methods.get(method).variant_keys
    except KeyError:  # a run of a method this checkout does not have
        keys = ()
    parts = [f"{k}={params[k]}" for k in keys if k in params]
    return f"{method}[{','.join(parts)}]" if parts else method


def metric_mode(metric: str) -> str | None:
    """'min' or 'max' from the metric's declaration (``val_fid_domain`` → min, ``val_recall_domain`` → max;
    ``evaluation.registry``), or None for an undeclared metric or one without a direction (a count, a spread)."""
    try:
        return registry.mode(metric)
    except registry.UnknownMetric:
        return None


def _finite(v: Any) -> float | None:
    """JSON has no NaN/inf: such values become null."""
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


class _Rows(list):
    """The rows list; printed as a one-line summary by the CLI's plain (non --json) output,
    since the table itself is already on stdout. JSON serialises it as a plain list."""

    what = "rows (table above)"

    def __str__(self) -> str:
        return f"{len(self)} {self.what}"


class _Pairs(_Rows):
    what = "paired differences (above)"


def _search(client, experiment_ids: list[str], filter_string: str = "") -> list:
    """Every active run matching, across pages, oldest first."""
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=1000, order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _check_store(uri: str) -> None:
    """A SQLite URI whose file is missing would be created empty by MLflow: refuse instead."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise UserError(f"no MLflow database at {path}: pass the --tracking-uri your train/sweep runs used "
                            f"(e.g. sqlite:///$PWD/mlflow.db) or run compare from that directory")


def _collect(client, uri: str, args: argparse.Namespace) -> tuple[list, str, str | None]:
    """The candidate runs, a description of where they came from, and the parent run id if any."""
    from mlflow.exceptions import MlflowException

    if args.parent:
        try:
            parent = client.get_run(args.parent)
        except MlflowException:
            raise UserError(f"parent run {args.parent!r} not found in {uri}: pass the parent_run_id that "
                            f"sweep --json printed (or a run id from the MLflow UI) with the same --tracking-uri"
                            ) from None
        runs = _search(client, [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{args.parent}'")
        if not runs:
            raise UserError(f"run {args.parent} has no child runs: pass a sweep's parent run id, "
                            f"or compare a whole experiment with --experiment NAME")
        return runs, f"children of {args.parent}", args.parent
    from orchestrator.tracking import DEFAULT_EXPERIMENT

    name = args.experiment or DEFAULT_EXPERIMENT
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments())
        raise UserError(f"experiment {name!r} not found in {uri}: pass --experiment with one of "
                        f"{', '.join(names) or '(none: nothing recorded yet)'}, or the right --tracking-uri")
    return _search(client, [exp.experiment_id]), f"experiment {name}", None


class _Unit:
    """One rankable thing: a single run, or a replicate parent with its finished seed runs (``members``)."""

    def __init__(self, run, members: list | None = None):
        self.run = run
        self.replicate = members is not None
        self.members = members if members is not None else [run]


def _is_replicate_parent(run) -> bool:
    return run.data.tags.get("replicate_role") == "parent"


def _children_of(client, run) -> list:
    """Child runs of ``run`` (any status), oldest first."""
    return _search(client, [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")


def _has_metric(unit: _Unit, metric: str) -> bool:
    if unit.replicate and _finite(unit.run.data.metrics.get(f"{metric}_mean")) is not None:
        return True
    return any(_finite(r.data.metrics.get(metric)) is not None for r in unit.members)


def _select(client, runs: list, metric: str) -> tuple[list[_Unit], dict[str, int]]:
    """The rankable units (single runs and replicate parents), and how many of each kind were skipped."""
    replicate_parents = {r.info.run_id for r in runs if _is_replicate_parent(r)}
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs if "evaluates" not in r.data.tags}
    kids: dict[str, list] = {}
    for r in runs:
        kids.setdefault(r.data.tags.get("mlflow.parentRunId"), []).append(r)
    skipped = {"not_finished": 0, "missing_metric": 0, "sweep_parent": 0, "re_evaluation": 0, "replicate_child": 0}
    kept = []
    for r in runs:
        if r.data.tags.get("mlflow.parentRunId") in replicate_parents:
            skipped["replicate_child"] += 1  # represented by its parent's mean and interval
        elif r.info.status != "FINISHED":
            skipped["not_finished"] += 1
        elif _is_replicate_parent(r):
            children = kids.get(r.info.run_id) or _children_of(client, r)  # --parent SWEEP: grandchildren
            unit = _Unit(r, [k for k in children if k.info.status == "FINISHED" and "evaluates" not in k.data.tags])
            if _has_metric(unit, metric):
                kept.append(unit)
            else:
                skipped["missing_metric"] += 1
        elif r.info.run_id in parents or r.data.tags.get("sweep_role") == "parent":
            skipped["sweep_parent"] += 1
        elif "evaluates" in r.data.tags:
            skipped["re_evaluation"] += 1
        elif _finite(r.data.metrics.get(metric)) is None:
            skipped["missing_metric"] += 1
        else:
            kept.append(_Unit(r))
    return kept, skipped


def _value(client, run, metric: str, mode: str) -> float | None:
    """A ``val_*`` metric: its best logged value (the one checkpoint selection used); else the latest."""
    if not metric.startswith("val_"):
        return _finite(run.data.metrics.get(metric))
    values = [v for v in (_finite(m.value) for m in client.get_metric_history(run.info.run_id, metric))
              if v is not None]
    return (min if mode == "min" else max)(values) if values else None


def _row_keys(names) -> list[str]:
    """The metrics a row carries, of those recorded (``names``): every variant of FID and KID, sorted, then the
    table's other columns in table order."""
    return sorted(k for k in names if registry.rides_along(k)) + [k for k in TABLE_METRICS if k in names]


def _row_metrics(run, metric: str, value: float | None) -> dict[str, float | None]:
    m = run.data.metrics
    keys = _row_keys(m)
    return {metric: value, **{k: _finite(m[k]) for k in dict.fromkeys(keys) if k != metric}}


def _unit_value(client, unit: _Unit, metric: str, mode: str) -> tuple[float | None, tuple[float, float] | None]:
    """The ranking value of a unit and, for a replicate parent, its 95% interval over seeds (and classes)."""
    if not unit.replicate:
        return _value(client, unit.run, metric, mode), None
    m = unit.run.data.metrics
    if _finite(m.get(f"{metric}_mean")) is not None:
        return float(m[f"{metric}_mean"]), (float(m.get(f"{metric}_ci_low", math.nan)),
                                            float(m.get(f"{metric}_ci_high", math.nan)))
    values = [v for v in (_value(client, k, metric, mode) for k in unit.members) if v is not None]
    if not values:
        return None, None
    import numpy as np

    from orchestrator.evaluation.stats import bootstrap_ci

    ci = bootstrap_ci(np.asarray(values, dtype=np.float64)[:, None])  # [seeds, 1]: over seeds
    return ci.mean, (ci.low, ci.high)


def _unit_metrics(unit: _Unit, metric: str, value: float | None,
                  interval: tuple[float, float] | None) -> tuple[dict[str, float | None], dict[str, list]]:
    """The row's metrics (a replicate parent's ``<metric>_mean``) and their ``[ci_low, ci_high]``."""
    if not unit.replicate:
        return _row_metrics(unit.run, metric, value), {}
    m = unit.run.data.metrics
    names = [k[:-len("_mean")] for k in m if k.endswith("_mean") and f"{k[:-len('_mean')]}_ci_low" in m]
    keys = _row_keys(names)
    metrics = {metric: value, **{k: _finite(m[f"{k}_mean"]) for k in dict.fromkeys(keys) if k != metric}}
    intervals = {k: [_finite(m[f"{k}_ci_low"]), _finite(m[f"{k}_ci_high"])] for k in keys if k != metric}
    if interval is not None:
        intervals[metric] = [_finite(interval[0]), _finite(interval[1])]
    return metrics, intervals


BUDGET_KEYS = ("meta_steps", "tasks_seen", "images_seen", "train_seconds")
# Flagged when they differ by more than BUDGET_TOLERANCE from most other rows of a dataset (budget_flags).
# images_seen is shown, not flagged: a task's images (shots + queries) differ between methods by design.
FLAGGED_BUDGET_KEYS = ("meta_steps", "tasks_seen", "train_seconds")
BUDGET_TOLERANCE = 0.10


def _unit_budget(unit: _Unit) -> dict[str, float | None]:
    """Each budget counter of the run, or its mean over a replicate parent's seed runs (None if unrecorded)."""
    out: dict[str, float | None] = {}
    for key in BUDGET_KEYS:
        values = [v for v in (_finite(r.data.metrics.get(key)) for r in unit.members) if v is not None]
        out[key] = sum(values) / len(values) if values else None
    return out


def budget_keys(kinds: list[str | None]) -> tuple[str, ...]:
    """The counters that measure the budget the rows were given: ``meta_steps`` and ``tasks_seen`` when every row
    ran on ``--steps``, ``train_seconds`` when every row ran on ``--budget-minutes``, all three otherwise."""
    if kinds and all(k == "steps" for k in kinds):
        return ("meta_steps", "tasks_seen")
    if kinds and all(k == "minutes" for k in kinds):
        return ("train_seconds",)
    return FLAGGED_BUDGET_KEYS


def _budget_kind(run) -> str | None:
    """``steps`` or ``minutes``: what the run's config budgeted (None when the run has no such params)."""
    try:
        if float(run.data.params.get("steps", "nan")) > 0:
            return "steps"
        if float(run.data.params.get("budget_minutes", "nan")) > 0:
            return "minutes"
    except ValueError:
        pass
    return None


def budget_flags(budgets: list[dict[str, float | None]], tolerance: float = BUDGET_TOLERANCE,
                 keys: tuple[str, ...] = FLAGGED_BUDGET_KEYS) -> list[list[str]]:
    """For each row (rows of one dataset), the budget counters of ``keys`` on which it differs by
    more than ``tolerance`` (relative to the other row's value) from more than half of the other rows, e.g.
    ``["meta_steps 150 vs 300"]`` (300: the median of the others). So with two rows both are flagged when they
    differ, and with several the odd one out is. A counter the others recorded and this row did not is flagged
    ``"<key> not recorded"``; a row alone gets no flag."""
    import statistics

    flags: list[list[str]] = [[] for _ in budgets]
    for key in keys:
        for i, b in enumerate(budgets):
            others = [o[key] for j, o in enumerate(budgets) if j != i and o.get(key) is not None]
            v = b.get(key)
            if not others:
                continue
            if v is None:
                flags[i].append(f"{key} not recorded")
                continue
            differ = sum(abs(v - o) > tolerance * abs(o) for o in others)
            if differ * 2 > len(others):
                flags[i].append(f"{key} {v:.4g} vs {statistics.median(others):.4g}")
    return flags


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _cell(row: dict[str, Any], c: str) -> str:
    """``mean [low, high]`` where the row has an interval for ``c``, else the value."""
    iv = row.get("intervals", {}).get(c)
    if iv is not None and row["metrics"].get(c) is not None:
        return f"{_fmt(row['metrics'][c])} [{_fmt(iv[0])}, {_fmt(iv[1])}]"
    return _fmt(row["metrics"].get(c))


def _table(rows: list[dict[str, Any]], metric: str, mode: str) -> str:
    cols = [metric] + [k for k in TABLE_METRICS if k != metric and any(k in r["metrics"] for r in rows)]
    head = (["method", "dataset", "runs", "best run", "seeds"]
            + [f"{c} ({mode})" if c == metric else c for c in cols]
            + ["meta_steps", "tasks_seen", "images_seen", "train_s", "budget", "run id"])
    body = [[r["method"], r["dataset"], str(r["n_runs"]), r["run_name"] or "-", str(r["seeds"])]
            + [_cell(r, c) for c in cols]
            + [_fmt(r["budget"].get(k)) for k in BUDGET_KEYS]
            + ["UNEQUAL: " + ", ".join(r["budget_flags"]) if r["budget_flags"] else "ok", r["run_id"]]
            for r in rows]
    widths = [max(len(line[i]) for line in [head] + body) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [head] + body)


# ------------------------------------------------------------------------- paired differences ----

def _figure_stem(run) -> str:
    from orchestrator.kinds import ClassifierKind, GeneratorKind

    figure = ClassifierKind.figure if run.data.tags.get("kind") == "classifier" else GeneratorKind.figure
    return figure.rsplit(".", 1)[0]


_PER_CLASS_FILES: dict[tuple[str, str], dict] = {}  # (uri, run id) -> its per_class_<figure>.json, read once


def _seed_cells(uri: str, unit: _Unit, metric: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (training seed, evaluation seed) of the unit: the novel classes, the metric's per-class values (None
    when the evaluation kept none for it) and its headline value, from ``per_class_<figure>.json``."""
    from orchestrator import tracking

    cells = {}
    for r in unit.members:
        key = (r.data.params.get("seed", r.data.tags.get("seed", "?")),
               r.data.params.get("eval_seed", r.data.tags.get("eval_seed", "?")))
        if (uri, r.info.run_id) not in _PER_CLASS_FILES:
            try:
                _PER_CLASS_FILES[(uri, r.info.run_id)] = tracking.load_json_artifact(
                    uri, r.info.run_id, f"per_class_{_figure_stem(r)}.json")
            except UserError:  # a run recorded before per-class files, or logged by hand: its headline value only
                _PER_CLASS_FILES[(uri, r.info.run_id)] = {}
        saved = _PER_CLASS_FILES[(uri, r.info.run_id)]
        classes = saved.get("classes") or None
        values = (saved.get("per_class") or {}).get(metric)
        if classes is None or values is None or len(values) != len(classes):
            values = None
        headline = (saved.get("metrics") or {}).get(metric, r.data.metrics.get(metric))
        cells[key] = {"classes": classes, "values": values, "headline": math.nan if headline is None else headline}
    return cells


def paired_difference(uri: str, a: _Unit, b: _Unit, metric: str) -> dict[str, Any]:
    """``a - b`` of ``metric`` with its 95% interval, or a ``note`` saying why the two cannot be paired."""
    out: dict[str, Any] = {"a": a.run.info.run_id, "b": b.run.info.run_id, "metric": metric, "difference": None,
                           "ci_low": None, "ci_high": None, "separated": False, "n_seeds": 0, "n_classes": 0,
                           "note": ""}
    return _paired(_seed_cells(uri, a, metric), _seed_cells(uri, b, metric), out)


def _paired(ca: dict, cb: dict, out: dict[str, Any], lift_of: str | None = None) -> dict[str, Any]:
    """``paired_difference`` on the seed cells of the two sides (``_seed_cells``); fills and returns ``out``.
    ``lift_of``: the sides are ``<lift_of>`` (or its augmented control) and ``<lift_of>_scratch``, so the difference
    is a lift (``stats.lift_ci``: its interval within the lift's declared range)."""
    import numpy as np

    from orchestrator.evaluation.stats import lift_ci, paired_difference_ci

    metric = out["metric"]
    if set(ca) != set(cb):
        out["note"] = (f"not paired: different (seed, eval_seed) sets {sorted(ca)} and {sorted(cb)}")
        return out
    keys = sorted(ca)
    rows = [c[k] for c in (ca, cb) for k in keys]
    known = [frozenset(r["classes"]) for r in rows if r["classes"] is not None]
    if len(set(known)) > 1:
        out["note"] = "not paired: evaluated on different novel classes"
        return out
    if len(known) == len(rows) and all(r["values"] is not None for r in rows):
        order = sorted(known[0])  # every row in one class order: cell (s, c) of a and b is the same class c

        def grid(c: dict) -> np.ndarray:
            return np.array([[dict(zip(c[k]["classes"], c[k]["values"]))[x] for x in order] for k in keys],
                            dtype=np.float64)

        grid_a, grid_b = grid(ca), grid(cb)
    else:  # a pooled metric (FID, KID, accuracy): one value per seed, paired over seeds
        grid_a = np.array([[ca[k]["headline"]] for k in keys], dtype=np.float64)
        grid_b = np.array([[cb[k]["headline"]] for k in keys], dtype=np.float64)
    d = lift_ci(grid_a, grid_b, lift_of) if lift_of else paired_difference_ci(grid_a, grid_b)
    out.update({"difference": _finite(d.mean), "ci_low": _finite(d.low), "ci_high": _finite(d.high),
                "separated": bool(d.separated), "n_seeds": int(d.n_seeds), "n_classes": int(d.n_classes)})
    if d.n_cells <= 1:
        out["note"] = "one value per row: no interval, cannot be separated"
    elif not d.separated:
        out["note"] = "not separated"
    else:
        mode = metric_mode(metric)
        better = None if mode is None else ((d.mean < 0) == (mode == "min"))
        out["note"] = "separated" + ("" if better is None else f": {'a' if better else 'b'} is better")
    return out


def placement(uri: str, unit: _Unit) -> dict[str, dict[str, Any]]:
    """The unit placed between its controls, for each metric of ``protocol.PLACED`` that it recorded with controls:
    ``{metric: {"lift": paired difference metric - metric_scratch (``paired_difference``'s dict: difference,
    ci_low, ci_high, separated, note), "augmented_lift": the same for metric_augmented - metric_scratch,
    "gap_closed": lift / augmented lift (``stats.gap_closed``; None when there is no gap: the augmented lift is
    missing, not separated from 0, ~0 or on the worse side of 0)}}``.
    Paired over the unit's (seed, eval_seed) cells and classes, from its ``per_class_<figure>.json`` files."""
    from orchestrator.evaluation.protocol import PLACED
    from orchestrator.evaluation.stats import gap_closed

    out: dict[str, dict[str, Any]] = {}
    for base in PLACED:
        scratch = _seed_cells(uri, unit, f"{base}_scratch")
        if all(math.isnan(c["headline"]) for c in scratch.values()):
            continue  # no untrained control recorded (a classifier, or an evaluation without controls)
        mine = _seed_cells(uri, unit, base)
        blank = {"a": unit.run.info.run_id, "b": unit.run.info.run_id, "difference": None, "ci_low": None,
                 "ci_high": None, "separated": False, "n_seeds": 0, "n_classes": 0, "note": ""}
        lift = _paired(mine, scratch, {**blank, "metric": f"{base} - {base}_scratch"}, lift_of=base)
        augmented = _seed_cells(uri, unit, f"{base}_augmented")
        aug = (None if all(math.isnan(c["headline"]) for c in augmented.values())
               else _paired(augmented, scratch, {**blank, "metric": f"{base}_augmented - {base}_scratch"}, lift_of=base))
        gap, why = None, None
        if aug is not None:  # stats.gap_closed: None (missing) where there is no gap to share, with the reason
            share, why = gap_closed(lift["difference"], (aug["difference"], aug["ci_low"], aug["ci_high"],
                                                         aug["separated"]), base)
            gap = None if math.isnan(share) else share
        out[base] = {"lift": lift, "augmented_lift": aug, "gap_closed": gap, "gap_note": why}
    return out


def _fmt_placement(label: str, place: dict[str, dict[str, Any]]) -> str:
    parts = []
    for base, p in place.items():
        lift, aug = p["lift"], p["augmented_lift"]
        text = f"{base} - {base}_scratch {_fmt(lift['difference'])}"
        if lift["ci_low"] is not None and lift["n_classes"] * max(lift["n_seeds"], 1) > 1:
            text += f" [{_fmt(lift['ci_low'])}, {_fmt(lift['ci_high'])}]"
        if aug is None:
            text += "  (no augmented control recorded)"
        elif p["gap_closed"] is None:
            text += f"  no gap share: {p.get('gap_note') or 'augmented control not separated from 0'}"
        else:
            text += f"  gap closed {_fmt(p['gap_closed'])} (augmented control {_fmt(aug['difference'])})"
        parts.append(f"    {text}")
    return "\n".join([f"  {label}:", *parts])


def _unit_record(unit: _Unit) -> dict[str, str] | None:
    """The unit's comparability record (``cmp.*`` tags; a replicate parent without them: its first seed run's)."""
    from orchestrator.evaluation.comparability import from_tags

    record = from_tags(unit.run.data.tags)
    if record is None and unit.replicate and unit.members:  # a parent recorded before it carried its seeds' record
        from orchestrator.evaluation.comparability import combined

        record = combined([from_tags(m.data.tags) for m in unit.members])
    return record


def _cmp_key(record: dict[str, str] | None, run_id: str | None = None) -> tuple | None:
    """The unit's comparability group: its record's grouping keys; with ``run_id`` (as ``run`` groups), a record
    with an unknown key (missing or mixed: ``comparability.complete``) is comparable with nothing, so that run is a
    group of its own."""
    from orchestrator.evaluation.comparability import complete, grouping

    if record is None:
        return None
    if run_id is not None and not complete(record):
        return ("incomplete", run_id)
    return tuple(sorted(grouping(record).items()))


def _short(v: str | None) -> str:
    return "-" if v is None else (v[:12] + "..." if len(v) > 15 else v)


def _check_comparable(a_id: str, b_id: str, a: _Unit, b: _Unit) -> None:
    """``--pair`` across comparability groups is refused (UserError naming the differing ``cmp.*`` keys)."""
    from orchestrator.evaluation.comparability import differing_keys, unknown_keys

    ra, rb = _unit_record(a), _unit_record(b)
    keys = differing_keys(ra, rb)
    unknown = [k for k in unknown_keys(ra, rb) if k not in keys]
    if not keys and not unknown:
        return
    if unknown and not keys:
        raise UserError(f"--pair {a_id} {b_id}: not comparable, nothing says how they compare in "
                        f"{', '.join(f'cmp.{k} ({_short(ra.get(k))} vs {_short(rb.get(k))})' for k in unknown)} "
                        f"(missing or mixed over seeds): pair runs whose records hold those keys")
    if keys == ["record"]:
        which = a_id if ra is None else b_id
        raise UserError(f"--pair {a_id} {b_id}: not comparable: run {which} has no comparability record (recorded "
                        f"before cmp.* tags), so nothing says it was measured like the other; re-evaluate it "
                        f"(python -m orchestrator evaluate {which}) or pair runs of one comparability group")
    diff = ", ".join(f"cmp.{k} ({_short(ra.get(k))} vs {_short(rb.get(k))})" for k in keys)
    raise UserError(f"--pair {a_id} {b_id}: not comparable, they differ in {diff}: pair runs of one comparability "
                    f"group (one table of compare)")


def _group_header(no: int, record: dict[str, str] | None, first: dict[str, str] | None, n_rows: int) -> str:
    """The line above a comparability group's table: what sets it apart from the first group."""
    from orchestrator.evaluation.comparability import differing_keys

    if record is None:
        return (f"comparability group {no} ({n_rows} row(s)): runs recorded before comparability tags or never "
                f"evaluated on novel classes (e.g. stopped early by ASHA; no cmp.* record): compared only with each other")
    if no == 1 or first is None:
        return (f"comparability group {no} ({n_rows} row(s)): {record.get('dataset')}, split seed "
                f"{record.get('split_seed')}, image size {record.get('image_size')}, {record.get('features')} "
                f"features {_short(record.get('features_sha256'))}, protocol {record.get('protocol')}/"
                f"{record.get('protocol_variant')}")
    from orchestrator.evaluation.comparability import unknown_keys

    keys = differing_keys(record, first)
    keys += [k for k in unknown_keys(record, first) if k not in keys]
    diff = ", ".join(f"{k}={_short(record.get(k))}" for k in keys)
    return f"comparability group {no} ({n_rows} row(s)): differs from group 1 in {diff}; not ranked against it"


def _fmt_pair(p: dict[str, Any]) -> str:
    name = f"{p['a_label']} - {p['b_label']}"
    if p["difference"] is None and p["note"].startswith("not paired"):
        return f"  {name}: {p['note']}"
    size = f"{p['n_seeds']} seed(s) x {p['n_classes']} class(es)" if p["n_classes"] > 1 else f"{p['n_seeds']} seed(s)"
    if p["note"].startswith("one value"):
        return f"  {name}: {_fmt(p['difference'])}  ({p['note']}; {size})"
    return (f"  {name}: {_fmt(p['difference'])} [{_fmt(p['ci_low'])}, {_fmt(p['ci_high'])}]  {p['note']}  "
            f"({size})")


def _pair_unit(client, uri: str, run_id: str, units: dict[str, _Unit]) -> _Unit:
    """The unit of a ``--pair`` run id: a row's unit, or any run of the store (a replicate parent with its seeds)."""
    if run_id in units:
        return units[run_id]
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UserError(f"--pair {run_id}: no such run in {uri}; pass run ids from the table's 'run id' column "
                        f"(or a train/replicates --json run_id)") from None
    if run.info.status != "FINISHED":
        raise UserError(f"--pair {run_id}: the run is {run.info.status}, not FINISHED; pair finished runs only")
    if _is_replicate_parent(run):
        return _Unit(run, [k for k in _children_of(client, run) if k.info.status == "FINISHED"
                           and "evaluates" not in k.data.tags])
    return _Unit(run)


def _plot(series: dict[str, list[float]], best: dict[str, int], metric: str, mode: str, title: str,
          out: Path) -> None:
    """One line per method (per dataset when there are several): the metric of each run in start
    order, its running best dashed, the chosen run starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pick = min if mode == "min" else max
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, ys in series.items():
        xs = list(range(1, len(ys) + 1))
        line, = ax.plot(xs, ys, marker="o", label=label)
        running = [pick(ys[:i + 1]) for i in range(len(ys))]
        ax.plot(xs, running, linestyle="--", color=line.get_color(), alpha=0.6)
        ax.plot([best[label] + 1], [ys[best[label]]], marker="*", markersize=15, color=line.get_color())
    values = [v for ys in series.values() for v in ys]
    if min(values) > 0 and max(values) / min(values) > 50:
        ax.set_yscale("log")  # FIDs of scratch controls and adapted models differ by orders of magnitude
    ax.set_xlabel("run / trial (in start order)")
    ax.set_ylabel(f"{metric} ({'lower' if mode == 'min' else 'higher'} is better)")
    ax.set_title(f"{title}\n(dashed: best so far, star: the run in the table)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def run(args: argparse.Namespace, uri: str) -> dict[str, Any]:
    """Rank, print, plot; log the plot to the parent run when comparing a sweep."""
    if args.metric is not None and (args.mode or metric_mode(args.metric)) is None:  # before reading the store
        raise UserError(f"--metric {args.metric}: cannot tell whether lower or higher is better; add --mode min or "
                        f"--mode max")
    _check_store(uri)
    _PER_CLASS_FILES.clear()  # read each run's per-class file once per invocation, never a stale copy
    from orchestrator import tracking

    from mlflow.exceptions import MlflowException

    client = tracking.client(uri)
    try:
        runs, source, parent_id = _collect(client, uri, args)
        metric = args.metric or default_metric(client, parent_id)
    except MlflowException as err:  # e.g. a tracking server that is down or refuses the request
        raise UserError(f"cannot read MLflow at {uri} ({str(err).splitlines()[0][:200]}): check --tracking-uri "
                        f"and that the server is up (mlflow server / the tunnel in docs/scale_out.md)") from None
    mode = args.mode or metric_mode(metric)  # a default metric always has a declared direction
    if not runs:
        raise UserError(f"{source} has no runs yet: train or sweep into it first (train --experiment NAME), or "
                        f"pass --experiment with an experiment that holds runs")
    kept, skipped = _select(client, runs, metric)
    if not kept:
        present = sorted({k for r in runs if r.info.status == "FINISHED" for k in r.data.metrics
                          if not k.startswith(("val_", "loss"))})
        raise UserError(f"no finished run in {source} has metric {metric!r} ({len(runs)} runs; skipped "
                        f"{', '.join(f'{v} {k}' for k, v in skipped.items() if v) or 'none'}): pass --metric "
                        f"with one they have ({', '.join(present[:12]) or 'none recorded'}) or wait for runs to finish")
    diff_metric = args.diff_metric or (metric[len("val_"):] if metric.startswith("val_") else metric)
    by_id = {u.run.info.run_id: u for u in kept}
    asked = [(_pair_unit(client, uri, a, by_id), _pair_unit(client, uri, b, by_id)) for a, b in (args.pair or [])]
    for (a_id, b_id), (a, b) in zip(args.pair or [], asked):
        _check_comparable(a_id, b_id, a, b)

    records = {}  # comparability group key -> the record (None: runs recorded before cmp.* tags)
    groups: dict[tuple[Any, str, str], list[_Unit]] = {}
    for u in kept:
        r = u.run
        record = _unit_record(u)
        cmp_key = _cmp_key(record, r.info.run_id)
        records[cmp_key] = record
        key = (cmp_key, variant_label(r.data.tags.get("method", "-"), r.data.params), r.data.tags.get("dataset", "-"))
        groups.setdefault(key, []).append(u)
    # number the comparability groups in order of first appearance (oldest run first)
    group_no = {k: i + 1 for i, k in enumerate(dict.fromkeys(_cmp_key(_unit_record(u), u.run.info.run_id)
                                                              for u in kept))}
    pick = min if mode == "min" else max
    rows = _Rows()
    units: list[_Unit] = []
    series: dict[str, list[float]] = {}
    best_index: dict[str, int] = {}
    several_datasets = len({d for _, _, d in groups}) > 1
    several_groups = len(group_no) > 1
    for (cmp_key, method, dataset), group in sorted(groups.items(), key=lambda kv: (group_no[kv[0][0]], kv[0][1:])):
        if any(u.replicate for u in group):  # a mean over seeds is not outranked by one run's lucky seed
            skipped["single_beside_replicates"] = skipped.get("single_beside_replicates", 0) + sum(
                not u.replicate for u in group)
            group = [u for u in group if u.replicate]
        scored = [(u, *_unit_value(client, u, metric, mode)) for u in group]
        scored = [(u, float(v), iv) for u, v, iv in scored if v is not None]
        if not scored:
            continue
        values = [v for _, v, _ in scored]
        i = values.index(pick(values))  # first of equals: the earlier run
        best, value, interval = scored[i]
        metrics, intervals = _unit_metrics(best, metric, value, interval)
        rows.append({"method": method, "dataset": dataset, "run_id": best.run.info.run_id,
                     "run_name": best.run.info.run_name, "n_runs": len(scored), "value": value,
                     "replicates": best.replicate, "seeds": len(best.members), "metrics": metrics,
                     "intervals": intervals, "budget": _unit_budget(best), "budget_kind": _budget_kind(best.run),
                     "comparability_group": group_no[cmp_key], "comparability": records[cmp_key],
                     "placement": placement(uri, best)})
        units.append(best)
        label = f"{method} / {dataset}" if several_datasets else method
        label = f"{label} (group {group_no[cmp_key]})" if several_groups else label
        series[label], best_index[label] = values, i
    for dataset, grp in {(r["dataset"], r["comparability_group"]) for r in rows}:
        mine = [r for r in rows if r["dataset"] == dataset and r["comparability_group"] == grp]
        keys = budget_keys([r["budget_kind"] for r in mine])
        for r, flags in zip(mine, budget_flags([r["budget"] for r in mine], keys=keys)):
            r["budget_flags"] = flags

    print(f"{source}: {len(kept)} runs ranked by {metric} ({mode}); skipped "
          f"{sum(skipped.values())} ({', '.join(f'{v} {k}' for k, v in skipped.items() if v) or 'none'})")
    for no in sorted({r["comparability_group"] for r in rows}):
        mine = [r for r in rows if r["comparability_group"] == no]
        if several_groups:
            print(_group_header(no, mine[0]["comparability"], rows[0]["comparability"], len(mine)))
        print(_table(mine, metric, mode), flush=True)
    placed = [(r, r["placement"]) for r in rows if r["placement"]]
    if placed:
        print("placement between the untrained control (_scratch) and the augmented control (_augmented): each "
              "metric minus the untrained control's, 95% interval paired over seeds x classes, and the share of the "
              "augmented control's lift the row reaches:")
        print("\n".join(_fmt_placement(f"{r['method']} ({r['dataset']})" + (
            f", comparability group {r['comparability_group']}" if several_groups else ""), pl)
            for r, pl in placed), flush=True)

    if not asked:  # the best row of each dataset and comparability group against every other row of it
        for dataset, grp in sorted({(r["dataset"], r["comparability_group"]) for r in rows}):
            idx = [i for i, r in enumerate(rows) if r["dataset"] == dataset and r["comparability_group"] == grp]
            if len(idx) > 1:
                top = next(i for i in idx if rows[i]["value"] == pick(rows[j]["value"] for j in idx))
                asked += [(units[top], units[j]) for j in idx if j != top]
    labels = {u.run.info.run_id: f"{r['method']} ({r['dataset']})" for u, r in zip(units, rows)}
    pairs = _Pairs()
    for a, b in asked:
        p = paired_difference(uri, a, b, diff_metric)
        for side, u in (("a", a), ("b", b)):
            p[f"{side}_label"] = labels.get(u.run.info.run_id) or (
                f"{variant_label(u.run.data.tags.get('method', '-'), u.run.data.params)} {u.run.info.run_name}")
        pairs.append(p)
    if pairs:
        direction = {"min": "lower is better", "max": "higher is better"}.get(metric_mode(diff_metric) or "", "")
        print(f"paired differences of {diff_metric} (a - b, 95% interval{', ' + direction if direction else ''}; "
              f"an interval covering 0 is not separated):")
        print("\n".join(_fmt_pair(p) for p in pairs), flush=True)

    out = Path(args.out)
    curves = None
    if getattr(args, "curves", False):
        from orchestrator import curves as curves_mod

        curves = curves_mod.report(uri, [(f"{r['method']} ({r['dataset']})", u.members) for u, r in zip(units, rows)],
                                   out.with_name(f"{out.stem}_curves.png"))
    _plot(series, best_index, metric, mode, f"{metric} per run, {source}", out)
    artifact = None
    if parent_id:
        tracking.log_file(uri, parent_id, out, "compare")
        artifact = f"compare/{out.name}"
    return {"source": source, "parent_run_id": parent_id, "metric": metric, "mode": mode, "rows": rows,
            "diff_metric": diff_metric, "pairs": pairs, "n_runs": len(kept), "n_skipped": sum(skipped.values()), "skipped": skipped,
            "plot": str(out.resolve()), "artifact": artifact, "curves": curves}
