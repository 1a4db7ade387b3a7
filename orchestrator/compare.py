"""``python -m orchestrator compare``: best trial per method and dataset from MLflow (issue #4).

Reads runs straight from MLflow (an experiment, or the children of a sweep's parent run) so it
works on anything ``train`` or ``sweep`` recorded, on a laptop or against the cluster's server.
Only FINISHED runs that carry the metric are ranked: a failed or still-running trial's last value
is not a result. Two more kinds of run are left out of the ranking, each counted:

- a sweep's parent run (tag ``sweep_role=parent``, or any run whose children are not
  re-evaluations): it repeats the best trial's numbers;
- an ``evaluate`` re-run (tag ``evaluates``): picking the best of several eval seeds of one model
  would select on evaluation noise.

Runs are ranked by a validation metric by default (``val_fid_domain``): choosing the "best" run
by its novel-class score would select on the test classes. A ``val_*`` metric's value is its best
over the run's history (what checkpoint selection used), not its last; the table then shows the
chosen run's novel-class metrics.

Heavy imports (MLflow, matplotlib) happen inside ``run`` so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError

# Shown in the printed table (whichever exist), after the selection metric. Rows carry every
# fid_* / kid_* (controls included) as well.
TABLE_METRICS = ("fid_inception", "fid_domain", "kid_inception", "kid_domain", "class_hit",
                 "class_hit_scratch", "chance", "diversity", "mse", "ssim")
_ROW_METRICS = ("class_hit", "class_hit_scratch", "chance", "diversity", "mse", "ssim")
_LOWER = ("fid", "kid", "mse", "loss")
_HIGHER = ("hit", "ssim", "accuracy", "acc", "score")  # score: inception_score, mode_score


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--experiment", default=None,
                     help="MLflow experiment whose runs are compared (default: fewshot-generation)")
    src.add_argument("--parent", metavar="RUN_ID", default=None,
                     help="a sweep's parent run: compare its child runs and log the plot to it")
    p.add_argument("--metric", default="val_fid_domain",
                   help="metric that picks the best run (default val_fid_domain: validation classes, best "
                        "value of each run's history; a novel-class metric such as fid_domain selects on test classes)")
    p.add_argument("--mode", choices=("min", "max"), default=None,
                   help="whether lower or higher --metric is better (default: from its name; "
                        "fid/kid/mse/loss: min, class_hit/ssim/accuracy: max)")
    p.add_argument("--out", type=Path, default=Path("compare.png"), help="plot PNG (default compare.png)")


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
    """'min' or 'max' from the metric's name (``val_fid_domain`` → min), or None if unknown."""
    tokens = metric.lower().split("_")
    if any(t in _LOWER for t in tokens):
        return "min"
    if any(t in _HIGHER for t in tokens):
        return "max"
    return None


def _finite(v: Any) -> float | None:
    """JSON has no NaN/inf: such values become null."""
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


class _Rows(list):
    """The rows list; printed as a one-line summary by the CLI's plain (non --json) output,
    since the table itself is already on stdout. JSON serialises it as a plain list."""

    def __str__(self) -> str:
        return f"{len(self)} rows (table above)"


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


def _select(runs: list, metric: str) -> tuple[list, dict[str, int]]:
    """The rankable runs, and how many of each kind were skipped."""
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs if "evaluates" not in r.data.tags}
    skipped = {"not_finished": 0, "missing_metric": 0, "sweep_parent": 0, "re_evaluation": 0}
    kept = []
    for r in runs:
        if r.info.status != "FINISHED":
            skipped["not_finished"] += 1
        elif r.info.run_id in parents or r.data.tags.get("sweep_role") == "parent":
            skipped["sweep_parent"] += 1
        elif "evaluates" in r.data.tags:
            skipped["re_evaluation"] += 1
        elif _finite(r.data.metrics.get(metric)) is None:
            skipped["missing_metric"] += 1
        else:
            kept.append(r)
    return kept, skipped


def _value(client, run, metric: str, mode: str) -> float | None:
    """A ``val_*`` metric: its best logged value (the one checkpoint selection used); else the latest."""
    if not metric.startswith("val_"):
        return _finite(run.data.metrics.get(metric))
    values = [v for v in (_finite(m.value) for m in client.get_metric_history(run.info.run_id, metric))
              if v is not None]
    return (min if mode == "min" else max)(values) if values else None


def _row_metrics(run, metric: str, value: float | None) -> dict[str, float | None]:
    m = run.data.metrics
    keys = sorted(k for k in m if k.startswith(("fid_", "kid_"))) + [k for k in _ROW_METRICS if k in m]
    return {metric: value, **{k: _finite(m[k]) for k in dict.fromkeys(keys) if k != metric}}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _table(rows: list[dict[str, Any]], metric: str, mode: str) -> str:
    cols = [metric] + [k for k in TABLE_METRICS if k != metric and any(k in r["metrics"] for r in rows)]
    head = (["method", "dataset", "runs", "best run"] + [f"{c} ({mode})" if c == metric else c for c in cols]
            + ["run id"])
    body = [[r["method"], r["dataset"], str(r["n_runs"]), r["run_name"] or "-"]
            + [_fmt(r["metrics"].get(c)) for c in cols] + [r["run_id"]] for r in rows]
    widths = [max(len(line[i]) for line in [head] + body) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [head] + body)


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
    metric = args.metric
    mode = args.mode or metric_mode(metric)
    if mode is None:
        raise UserError(f"--metric {metric}: cannot tell whether lower or higher is better; add --mode min or --mode max")
    _check_store(uri)
    from orchestrator import tracking

    from mlflow.exceptions import MlflowException

    client = tracking.client(uri)
    try:
        runs, source, parent_id = _collect(client, uri, args)
    except MlflowException as err:  # e.g. a tracking server that is down or refuses the request
        raise UserError(f"cannot read MLflow at {uri} ({str(err).splitlines()[0][:200]}): check --tracking-uri "
                        f"and that the server is up (mlflow server / the tunnel in docs/scale_out.md)") from None
    if not runs:
        raise UserError(f"{source} has no runs yet: train or sweep into it first (train --experiment NAME), or "
                        f"pass --experiment with an experiment that holds runs")
    kept, skipped = _select(runs, metric)
    if not kept:
        present = sorted({k for r in runs if r.info.status == "FINISHED" for k in r.data.metrics
                          if not k.startswith(("val_", "loss"))})
        raise UserError(f"no finished run in {source} has metric {metric!r} ({len(runs)} runs; skipped "
                        f"{', '.join(f'{v} {k}' for k, v in skipped.items() if v) or 'none'}): pass --metric "
                        f"with one they have ({', '.join(present[:12]) or 'none recorded'}) or wait for runs to finish")

    groups: dict[tuple[str, str], list] = {}
    for r in kept:
        key = (variant_label(r.data.tags.get("method", "-"), r.data.params), r.data.tags.get("dataset", "-"))
        groups.setdefault(key, []).append(r)
    pick = min if mode == "min" else max
    rows = _Rows()
    series: dict[str, list[float]] = {}
    best_index: dict[str, int] = {}
    several_datasets = len({d for _, d in groups}) > 1
    for (method, dataset), group in sorted(groups.items()):
        scored = [(r, _value(client, r, metric, mode)) for r in group]
        group = [r for r, v in scored if v is not None]
        values = [float(v) for _, v in scored if v is not None]
        i = values.index(pick(values))  # first of equals: the earlier run
        best = group[i]
        rows.append({"method": method, "dataset": dataset, "run_id": best.info.run_id,
                     "run_name": best.info.run_name, "n_runs": len(group), "value": values[i],
                     "metrics": _row_metrics(best, metric, values[i])})
        label = f"{method} / {dataset}" if several_datasets else method
        series[label], best_index[label] = values, i

    print(f"{source}: {len(kept)} runs ranked by {metric} ({mode}); skipped "
          f"{sum(skipped.values())} ({', '.join(f'{v} {k}' for k, v in skipped.items() if v) or 'none'})")
    print(_table(rows, metric, mode), flush=True)

    out = Path(args.out)
    _plot(series, best_index, metric, mode, f"{metric} per run, {source}", out)
    artifact = None
    if parent_id:
        tracking.log_file(uri, parent_id, out, "compare")
        artifact = f"compare/{out.name}"
    return {"source": source, "parent_run_id": parent_id, "metric": metric, "mode": mode, "rows": rows,
            "n_runs": len(kept), "n_skipped": sum(skipped.values()), "skipped": skipped,
            "plot": str(out.resolve()), "artifact": artifact}
