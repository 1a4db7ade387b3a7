"""``python -m orchestrator sweep METHOD``: Ray Tune + OptunaSearch + ASHA over Ray Train trials.

How it fits together (Ray 2.60, Train V2):

- The driver validates everything (method, ``--space`` file, ``--set`` keys, data) before it
  starts Ray or creates an MLflow run, then creates one MLflow **parent run** for the sweep
  (tags ``sweep_name``, ``sweep_role=parent``; artifacts ``search_space/<file>``, ``sweep.json``,
  ``split.json``) and runs a Tune ``Tuner`` with ``OptunaSearch`` (TPE, seeded by ``--seed``) and
  ``ASHAScheduler`` on the search space's metric (``val_class_hit`` in the generators' spaces), with
  ``time_attr="step"`` (the meta-step the workers report).
- Two objectives (``--objectives M1,M2`` or the space's ``metrics:``): Optuna multi-objective
  (``OptunaSearch(metric=[...], mode=[...])``), no ASHA (it ranks on one metric), the first objective
  primary (checkpoints are selected on it); the Pareto front over the trials' selected checkpoints is
  recorded on the parent (``pareto_front.json`` and a table in its note) and ``pick_from_front`` picks
  the configuration reported as best and re-trained by ``--replicates``.
- The sweep ends with one line (``best_trial_summary``): the best trial's novel-class ``class_hit``
  against chance, the untrained and augmented controls, and its sample grid.
- A trial's config: harness defaults < method defaults < ``select_metric`` = the space's metric <
  the space's ``fixed:`` < CLI flags (``--dataset``, ``--steps``, ``--budget-minutes`` ...) < ``--set``
  < the trial's searched values (``--set`` on a searched key is refused). Defaults: 4 trials of
  1 minute each (a space's ``fixed:`` ``steps``/``budget_minutes`` replace the minute, as
  ``search_spaces/mfh.yaml`` does), as many at a time as the cluster's CPUs hold.
- Each trial is a Tune *function* trainable (``_trial``) that requests no CPU (``{"cpu": 0,
  "memory": 1}``) and builds a ``TorchTrainer`` through the run lifecycle (``orchestrator.lifecycle``) with Ray Tune's
  ``TuneReportCallback``: every ``eval_every`` steps the workers' ``ray.train.report`` (losses and
  ``val_*``) reaches Tune, so ASHA decides on it. The trial's own MLflow **child run**
  (``mlflow.parentRunId`` = the parent, tag ``tune_trial_id``) records what a ``train`` run
  records: params, ``split.json``, ``config.json``, per-step losses, ``val_*`` metrics and sample
  grids, then, after fit, the novel-class evaluation of the checkpoint selected on validation
  classes and ``checkpoint/model.pt``. ``evaluate RUN_ID`` and ``generate RUN_ID`` work on it.
- A trial that ASHA stops is killed by Tune, so its child run is closed by the driver after
  the sweep: ``FINISHED`` with tags ``stopped_early=true`` and ``stopped_at_step``, with its best
  validation checkpoint logged as ``checkpoint/model.pt``. It is evaluated on novel classes only
  if it turns out to be the best trial (trials rank by their best validation value, so a trial
  stopped after a good early checkpoint can win); the others lost on validation.
- The Optuna study is kept in a journal file, ``<storage>/<sweep name>/optuna.journal`` (one study per
  sweep, named after it; path in the parent's tags ``optuna_storage``/``optuna_study`` and printed at
  start), so ``optuna-dashboard FILE`` and ``optuna.load_study`` open it. TPE runs with
  ``constant_liar`` when trials run concurrently. After the sweep the study's parameter-importance and
  parallel-coordinate plots are logged to the parent run (``optuna/*.png``).
- Resume: the sweep's name is printed at start. After Ctrl-C (Tune saves its state and returns)
  or a killed driver, ``sweep METHOD --resume NAME`` finds the parent run by its tag, reloads
  ``sweep.json`` (method, config, space, resources: only these are used) and calls
  ``Tuner.restore(..., resume_unfinished=True, resume_errored=True)``. The restored searcher reopens the same
  study file, so the study continues. A re-run trial looks up
  its child run by ``tune_trial_id`` before creating one, and its ``TorchTrainer`` (same name and
  storage path) continues from its last checkpoint. A child whose trial was already finished is
  not trained again. Children of trials Tune has no record of (a driver killed before Tune saved
  a newly started trial) are deleted (MLflow's soft delete), so the parent ends with exactly one
  child per trial.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from orchestrator.data import registry as datasets
from orchestrator.errors import UserError

DEFAULT_TRIALS = 4
SWEEP_ARTIFACT = "sweep.json"  # on the parent run: what --resume continues (method, config, space, resources)
PARETO_ARTIFACT = "pareto_front.json"  # on a multi-objective sweep's parent run
SEARCHES = ("tpe", "random")
SCHEDULERS = ("asha", "none")
DEFAULT_BUDGET_MINUTES = 1.0
TRIAL_TAG = "tune_trial_id"
# Pick rule of a multi-objective sweep (pick_from_front): a Pareto point qualifies when each non-primary objective
# is within this share of the front's best value on it (|v - best| <= tol * |best|).
PARETO_TOLERANCE = 0.25


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", nargs="?", help="method key, e.g. figr")
    p.add_argument("--trials", type=int, help=f"number of trials (default {DEFAULT_TRIALS})")
    p.add_argument("--concurrency", type=int,
                   help="trials at once (default: as many as the cluster's CPUs/GPUs hold)")
    p.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers of each trial")
    p.add_argument("--cpus-per-worker", type=float, default=1)
    p.add_argument("--gpus-per-worker", type=float, default=0, help="> 0 trains on GPUs with NCCL")
    p.add_argument("--budget-minutes", type=float,
                   help=f"meta-training budget per trial (default {DEFAULT_BUDGET_MINUTES} unless --steps)")
    p.add_argument("--steps", type=int, help="meta-training steps per trial")
    p.add_argument("--space", help="search-space YAML (default: search_spaces/METHOD.yaml)")
    p.add_argument("--dataset", help=datasets.help_text())
    p.add_argument("--data-root", help="local folder holding the dataset's files")
    p.add_argument("--seed", type=int, default=0, help="seed of the Optuna sampler (TPE or random)")
    p.add_argument("--search", choices=SEARCHES, default="tpe",
                   help="Optuna sampler: tpe (default) or random (the baseline a tuned search must beat)")
    p.add_argument("--startup-trials", type=int,
                   help="TPE's random start-up trials before it models the results "
                        "(default max(2, trials // 3); Optuna's own 10 would make a small sweep pure random)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="asha",
                   help="asha (default): stop trials that trail at each rung; none: every trial runs its budget "
                        "(a multi-objective sweep runs without ASHA: it ranks trials on one metric)")
    p.add_argument("--objectives", metavar="M1,M2",
                   help="search several validation metrics at once (Optuna multi-objective), e.g. "
                        "val_class_hit,val_fid_domain: the first is primary (checkpoints are selected on it, and the "
                        "re-trained configuration is the Pareto point best on it among those within "
                        f"{PARETO_TOLERANCE:.0%} of the front's best on every other objective); replaces the space's metric")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a non-searched config value for every trial")
    p.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    p.add_argument("--experiment", default=None, help="MLflow experiment name")
    p.add_argument("--max-failures", type=int, default=1, help="worker failures each trial survives")
    p.add_argument("--resume", metavar="NAME", help="continue an interrupted sweep (its name is printed at start)")
    p.add_argument("--use-saved-space", action="store_true",
                   help="with --resume: continue with the search space saved when the sweep started although its "
                        "file was edited since (without it, an edited file is refused)")
    p.add_argument("--replicates", type=int, default=1,
                   help="after the search, re-train the best configuration with N fresh seeds as Tune trials under "
                        "the sweep's parent run (a replicate parent with each metric's mean and 95%% interval)")


def trial_run_name(method: str, trial_id: str, config: dict[str, Any]) -> str:
    """A readable MLflow run name for a sweep trial: method, Tune's trial number, the searched values
    (``mfh-t003-lr1e-3-mslots16`` for trial ``..._00003`` with ``lr=0.001, memory_slots=16``); the full values are
    the run's ``searched.*`` tags and params."""
    def key(k: str) -> str:
        parts = k.split("_")
        return "".join(p[:1] for p in parts[:-1]) + parts[-1][:5]

    def value(v: Any) -> str:
        if isinstance(v, float) and v != 0 and (abs(v) < 0.01 or abs(v) >= 1e4):
            mantissa, exp = f"{v:.2e}".split("e")
            return f"{float(mantissa):g}e{int(exp)}"
        return f"{v:g}" if isinstance(v, float) else str(v)

    tail = trial_id.rsplit("_", 1)[-1]
    number = f"t{int(tail):03d}" if tail.isdigit() else trial_id
    return "-".join([method, number, *(f"{key(k)}{value(v)}" for k, v in sorted(config.items()))])[:250]


def _log(msg: str) -> None:
    from orchestrator.kinds import log

    log(msg)


def _absolute_uri(uri: str) -> str:
    """Trials run in their own working directory: a relative SQLite path must not move with them."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def _join(storage: str, *parts: str) -> str:
    from orchestrator.settings import join

    return join(storage, *parts)


def new_sweep_name(method: str) -> str:
    return f"sweep-{method}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


# ---------------------------------------------------------------- MLflow lookups


def find_parent(uri: str, name: str):
    from mlflow.entities import ViewType

    c = _client(uri)
    exps = [e.experiment_id for e in c.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    runs = c.search_runs(exps, f"tags.sweep_name = '{name}' and tags.sweep_role = 'parent'") if exps else []
    if not runs:
        raise UserError(f"--resume {name}: no sweep of that name in {uri}; pass the name the sweep printed at "
                        f"start (tag sweep_name of its parent run) and the same --tracking-uri")
    return runs[0]


def children(uri: str, parent_run: str, experiment_id: str) -> list:
    """The parent's child runs, without replicate parents (``sweep --replicates``: not trials of the sweep)."""
    runs = _client(uri).search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run}'",
                                    max_results=10000)
    return [r for r in runs if r.data.tags.get("replicate_role") != "parent"]


def find_child(uri: str, parent_run: str, experiment_id: str, trial_id: str):
    """The child run of ``trial_id`` if one exists: a re-run trial reuses it instead of adding another."""
    runs = _client(uri).search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run}' and tags.{TRIAL_TAG} = '{trial_id}'")
    return runs[0] if runs else None


def _client(uri: str):
    from orchestrator import tracking

    return tracking.client(uri)


# ---------------------------------------------------------------- one trial (runs in a Tune actor)


def _trial(config: dict[str, Any], ctx: dict[str, Any] | None = None, data=None) -> None:
    """One Tune trial: a child MLflow run through the run lifecycle (fit, select, evaluate, record)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from orchestrator import lifecycle, tracking
    from orchestrator.recorder import backfill

    assert ctx is not None and data is not None
    trial_id = tune.get_context().get_trial_id()
    uri, parent, method = ctx["uri"], ctx["parent_run_id"], ctx["method"]
    cfg = {**ctx["config"], **config}
    ds, split, kind, aids = data
    prep = lifecycle.Prepared(method, cfg, ds, split, kind, aids)
    train_name = f"{ctx['sweep_name']}-{trial_id}"
    storage = ctx["trial_storage"]  # a local path or a URI (s3://...)

    existing = find_child(uri, parent, ctx["experiment_id"], trial_id)
    if existing is not None and existing.info.status == "FINISHED":
        # Finished before the driver died but after Tune last saved its state: do not train again.
        print(f"trial {trial_id}: child run {existing.info.run_id} already finished", flush=True)
        # Replay its validation history so Tune's record (searcher, scheduler, results) is complete again.
        histories = {metric: {int(m.step): float(m.value) for m in
                              tracking.client(uri).get_metric_history(existing.info.run_id, metric)}
                     for metric in ctx.get("metrics") or [ctx["metric"]]}
        for step in sorted(set().union(*histories.values())):
            tune.report({"step": step, **{k: h[step] for k, h in histories.items() if step in h}})
        return
    after = 0
    if existing is not None:
        run_id = existing.info.run_id
        after = backfill(uri, run_id, storage, train_name)
        tracking.client(uri).update_run(run_id, status="RUNNING")
        print(f"trial {trial_id}: continuing child run {run_id} after step {after}", flush=True)
    else:
        searched = {f"searched.{k}": str(v) for k, v in config.items()}
        run_id = lifecycle.open_run(uri, ctx["experiment"], trial_run_name(method, trial_id, config), prep, {
            "ray_run_name": train_name, "ray_storage_path": storage, "workers": str(ctx["workers"]),
            TRIAL_TAG: trial_id, "sweep_name": ctx["sweep_name"], "sweep_role": "trial", **searched},
            parent_run_id=parent)
        print(f"trial {trial_id}: MLflow child run {run_id}", flush=True)
    scale = lifecycle.Scale(ctx["workers"], ctx["cpus_per_worker"], ctx["gpus_per_worker"], ctx["max_failures"])
    # A sweep's trial is finished by resuming the sweep (its driver re-runs the trial into this child run); a
    # replicate seed (no sweep resume) by resuming its own run.
    hint = (f"python -m orchestrator sweep {method} --resume {ctx['sweep_name']} --tracking-uri {uri}"
            if ctx.get("resumable_sweep") else None)
    lifecycle.train_and_record(prep, uri=uri, run_id=run_id, name=train_name, storage=storage, scale=scale,
                               callbacks=[TuneReportCallback()], after=after, resume_hint=hint)
    tracking.set_tags(uri, run_id, {"stopped_early": "false"})


# ---------------------------------------------------------------- the driver


def run(args: argparse.Namespace, uri: str) -> dict[str, Any]:
    """Start (or with ``--resume`` continue) a sweep; end with ``compare``'s table of it and how to open MLflow."""
    uri = _absolute_uri(uri)
    summary = _resume(args, uri) if args.resume else _start(args, uri)
    _print_compare(uri, summary)
    _log(f"open it in MLflow's UI: {ui_hint(uri, summary['parent_run_id'])}")
    line = best_trial_summary(uri, summary)
    if line:
        print(line, flush=True)
    return summary


def best_trial_summary(uri: str, summary: dict[str, Any]) -> str | None:
    """The sweep's last words: its best trial's novel-class ``class_hit`` against chance, the untrained control
    (``class_hit_scratch``) and the augmented control (``class_hit_augmented``, "n/a" where the run has none),
    the paired lift over the untrained control with its 95% interval over the novel classes, a verdict, and
    the path of the trial's sample grid. None when the best trial has no ``class_hit`` (a classifier's sweep)."""
    from orchestrator import lifecycle, tracking
    from orchestrator.evaluation.stats import lift_ci
    from orchestrator.kinds import kind_of

    run_id = summary.get("best_run_id")
    if not run_id or run_id == "None":
        return None
    run = tracking.client(uri).get_run(run_id)
    m = run.data.metrics
    if "class_hit" not in m:
        return None
    figure = kind_of(summary["method"]).figure  # the novel-class figure and its per-class file

    def f(key: str) -> str:
        return f"{m[key]:.3f}" if key in m and math.isfinite(m[key]) else "n/a"

    lift, verdict = "", "not above the untrained control at this budget"
    try:
        per = tracking.load_json_artifact(uri, run_id, lifecycle.per_class_artifact(figure))["per_class"]
        import numpy as np

        a = np.array(per["class_hit"], dtype=float)
        b = np.array(per["class_hit_scratch"], dtype=float)
        d = lift_ci(a, b, "class_hit")
        lift = f"; lift over untrained {d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}] over {a.size} novel classes"
        if d.separated and d.mean > 0:
            verdict = "above the untrained control (interval excludes 0)"
        elif d.mean > 0:
            verdict = "above the untrained control on the point estimate only (interval covers 0): not a result"
    except (UserError, KeyError, ValueError):
        if "class_hit_scratch" in m and m["class_hit"] > m["class_hit_scratch"]:
            verdict = "above the untrained control on the point estimate only: not a result"
    artifacts = run.info.artifact_uri
    grid = f"{artifacts.removeprefix('file://')}/{lifecycle.samples_artifact(figure)}"
    return (f"summary: best trial {summary.get('best_trial_id')} (run {run_id}, one seed): novel class_hit "
            f"{f('class_hit')} vs chance {f('chance')}, untrained control {f('class_hit_scratch')}, augmented "
            f"control {f('class_hit_augmented')}{lift}: {verdict}. Sample grid: {grid}")


def ui_hint(uri: str, parent_run_id: str) -> str:
    """The command (for a SQLite store) and the page that show a sweep's runs in MLflow's UI.

    MLflow 3.17's UI opens an experiment on its GenAI views unless the page asks for model training
    (``workflowType=machine_learning``), so the link names the runs page with it.
    """
    from orchestrator import tracking

    exp = tracking.client(uri).get_run(parent_run_id).info.experiment_id
    page = f"#/experiments/{exp}/runs?workflowType=machine_learning"
    if uri.startswith("sqlite:///"):
        # --workers 1: MLflow 3.17 serves the UI with 4 uvicorn workers, and on a busy 2-core machine each missed
        # uvicorn's 5 s health check while importing and was killed and restarted in a loop (never answering).
        return f"mlflow ui --backend-store-uri {uri} --workers 1  (then http://127.0.0.1:5000/{page})"
    return f"{uri.rstrip('/')}/{page}"


def _print_compare(uri: str, summary: dict[str, Any]) -> None:
    """Print ``compare --parent`` of the sweep (its best trial's row) and log its plot to the parent run.

    A sweep with no finished trial holding the metric has nothing to compare: said in one line.
    """
    from orchestrator import compare

    p = argparse.ArgumentParser()
    compare.add_arguments(p)
    with tempfile.TemporaryDirectory() as tmp:
        # No --metric: compare ranks a sweep's children by the metric the sweep ranked by (compare.default_metric),
        # as a user's own `compare --parent` does.
        cargs = p.parse_args(["--parent", summary["parent_run_id"], "--out", str(Path(tmp, "compare.png"))])
        try:
            compare.run(cargs, uri)
        except UserError as err:
            _log(f"compare: {err}")


def _validate_scale(trials: int, concurrency: int | None, workers: int, cpus: float, gpus: float) -> None:
    if trials < 1:
        raise UserError(f"--trials {trials}: need at least 1 trial")
    if concurrency is not None and concurrency < 1:
        raise UserError(f"--concurrency {concurrency}: need at least 1 trial at a time")
    if workers < 1:
        raise UserError(f"--workers-per-trial {workers}: need at least 1 worker")
    if cpus <= 0 or gpus < 0:
        raise UserError("--cpus-per-worker must be > 0 and --gpus-per-worker >= 0")


def _start(args: argparse.Namespace, uri: str) -> dict[str, Any]:
    import methods

    from orchestrator import config as config_mod
    from orchestrator import search_space
    from orchestrator import tracking
    from orchestrator import lifecycle
    from orchestrator.kinds import method_class
    from orchestrator.settings import default_storage

    if not args.method:
        raise UserError(f"which method? e.g. python -m orchestrator sweep figr ({', '.join(methods.available())})")
    if getattr(args, "use_saved_space", False):
        raise UserError("--use-saved-space continues an interrupted sweep: pass it with --resume NAME")
    cls = method_class(args.method)
    trials = DEFAULT_TRIALS if args.trials is None else args.trials
    _validate_scale(trials, args.concurrency, args.workers_per_trial, args.cpus_per_worker, args.gpus_per_worker)
    if args.startup_trials is not None and args.startup_trials < 1:
        raise UserError(f"--startup-trials {args.startup_trials}: need at least 1 random start-up trial")
    if args.replicates < 1:
        raise UserError(f"--replicates {args.replicates}: pass 2 or more seeds to re-train the best configuration "
                        f"with (or leave --replicates out)")
    space_path = Path(args.space) if args.space else search_space.default_path(args.method)
    space = search_space.load(space_path, cls.default_config)
    if args.objectives:
        space = space.with_objectives([m.strip() for m in args.objectives.split(",") if m.strip()])
    for item in args.set:
        key = item.split("=", 1)[0].strip()
        if key in space.params:
            raise UserError(f"--set {item}: {key} is searched by {space_path}; remove it from params there "
                            f"(or put it under fixed:) to hold it constant")
    steps = args.steps
    budget = args.budget_minutes
    flags: dict[str, Any] = {"dataset": args.dataset, "data_root": args.data_root}
    if steps is not None or budget is not None:  # a flag replaces the space's fixed budget as a whole
        flags.update(steps=steps if steps is not None else 0, budget_minutes=budget if budget is not None else 0.0)
    elif not {"steps", "budget_minutes"} & set(space.fixed):  # the space file may set the default budget
        flags.update(steps=0, budget_minutes=DEFAULT_BUDGET_MINUTES)
    # Checkpoints are chosen on the metric the sweep ranks by (unless --set select_metric=... says otherwise).
    overrides = {"select_metric": space.metric, **space.fixed, **{k: v for k, v in flags.items() if v is not None}}
    cfg = config_mod.resolve(cls.default_config, overrides, args.set, cls.harness_defaults)
    cfg = lifecycle.finish_config(cfg)
    name = new_sweep_name(args.method)
    storage = default_storage()
    sweep = {
        "name": name, "method": args.method, "config": cfg, "space": space.to_dict(), "space_file": str(space_path),
        "trials": trials, "concurrency": args.concurrency, "workers_per_trial": args.workers_per_trial,
        "cpus_per_worker": args.cpus_per_worker, "gpus_per_worker": args.gpus_per_worker, "seed": args.seed,
        "max_failures": args.max_failures, "experiment": args.experiment or tracking.DEFAULT_EXPERIMENT,
        "search": args.search, "scheduler": args.scheduler, "replicates": args.replicates,
        "startup_trials": args.startup_trials if args.startup_trials is not None else max(2, trials // 3),
        "storage": storage, "tune_path": _join(storage, name), "optuna_storage": study_file(storage, name),
    }
    prep = lifecycle.prepare(args.method, cfg)  # the same pre-start validation as train
    split = prep.split
    started = _ensure_ray(args.address)
    stack = _signals()  # after ray.init (orchestrator.interrupt): SIGTERM stops the trials as Ctrl-C does
    try:
        lifecycle.check_cluster_fits(lifecycle.Scale(args.workers_per_trial, args.cpus_per_worker,
                                                     args.gpus_per_worker))
        parent_params = {k: v for k, v in cfg.items() if k not in space.params}
        parent_params.update({f"sweep.{k}": sweep[k] for k in ("trials", "concurrency", "workers_per_trial",
                                                               "cpus_per_worker", "gpus_per_worker", "seed",
                                                               "search", "scheduler", "startup_trials")})
        parent_params.update({"sweep.metric": space.metric, "sweep.mode": space.mode,
                              **({"sweep.objectives": ",".join(space.metrics),
                                  "sweep.pareto_tolerance": PARETO_TOLERANCE} if space.multi else {}),
                              "sweep.space_file": str(space_path),
                              **{f"space.{k}": json.dumps(p.describe()) for k, p in space.params.items()}})
        parent = tracking.start_run(uri, sweep["experiment"], name, parent_params, {
            "sweep_name": name, "sweep_role": "parent", "method": args.method, "dataset": cfg["dataset"],
            "split_seed": str(split.seed), "seed": str(args.seed), "tune_path": sweep["tune_path"],
            "optuna_storage": sweep["optuna_storage"], "optuna_study": name,
            "features": prep.aids.description, "command": lifecycle.command_line()})
        sweep["parent_run_id"] = parent
        sweep["split"] = split.to_dict()
        tracking.describe_run(uri, parent, title=f"**sweep {name}**: {trials} trials of {args.method} on {cfg['dataset']}, "
                                                 f"searching {', '.join(space.params)} ({_objectives_text(space)})")
        tracking.log_file(uri, parent, space_path, "search_space")
        tracking.log_dict(uri, parent, sweep, SWEEP_ARTIFACT)
        tracking.log_dict(uri, parent, split.to_dict(), lifecycle.SPLIT_ARTIFACT)
        _log(f"sweep {name}: {trials} trials of {args.method} on {cfg['dataset']}, searching "
             f"{', '.join(space.params)} ({_objectives_text(space)}); MLflow parent run {parent} in {uri}")
        _log(f"interrupted? continue with: python -m orchestrator sweep {args.method} --resume {name}")
        _log(f"Optuna study {name} kept in {sweep['optuna_storage']} (open it with: "
             f"optuna-dashboard {sweep['optuna_storage']})")
        print(f"sweep name: {name}", flush=True)
        return _tune(sweep, uri, prep, restore=False)
    finally:
        if started:
            import ray

            ray.shutdown()
        stack.close()


def _resume(args: argparse.Namespace, uri: str) -> dict[str, Any]:
    from orchestrator import tracking
    from orchestrator.data import Split

    changed = [flag for flag, value in (("--trials", args.trials), ("--steps", args.steps),
                                         ("--budget-minutes", args.budget_minutes), ("--space", args.space),
                                         ("--dataset", args.dataset), ("--data-root", args.data_root),
                                         ("--concurrency", args.concurrency), ("--set", args.set),
                                         ("--startup-trials", args.startup_trials),
                                         ("--search", args.search != "tpe"),
                                         ("--scheduler", args.scheduler != "asha"),
                                         ("--replicates", args.replicates != 1),
                                         ("--objectives", args.objectives)) if value]
    if changed:
        raise UserError(f"--resume {args.resume} continues the sweep exactly as it was started (its sweep.json); "
                        f"drop {', '.join(changed)}")
    parent_run = find_parent(uri, args.resume)
    sweep = tracking.load_json_artifact(uri, parent_run.info.run_id, SWEEP_ARTIFACT)
    if args.method and args.method != sweep["method"]:
        raise UserError(f"--resume {args.resume}: that sweep searches {sweep['method']}, not {args.method}")
    _check_saved_space(sweep, args.resume, getattr(args, "use_saved_space", False))
    from ray import tune

    if not tune.Tuner.can_restore(sweep["tune_path"]):
        raise UserError(f"--resume {args.resume}: no Ray Tune state under {sweep['tune_path']}; it was written "
                        f"by the machine that ran the sweep (set FSIG_STORAGE to shared storage on a cluster)")
    from orchestrator import lifecycle

    prep = lifecycle.prepare(sweep["method"], sweep["config"], sweep["split"])
    assert prep.split.to_dict() == Split.from_dict(sweep["split"]).to_dict()
    started = _ensure_ray(args.address)
    stack = _signals()
    try:
        from orchestrator.interrupt import TAG

        tracking.client(uri).update_run(sweep["parent_run_id"], status="RUNNING")
        if TAG in parent_run.data.tags:  # interrupted before: it is being continued now
            tracking.client(uri).delete_tag(sweep["parent_run_id"], TAG)
        _log(f"resuming sweep {sweep['name']} (MLflow parent run {sweep['parent_run_id']}) from {sweep['tune_path']}")
        return _tune(sweep, uri, prep, restore=True)
    finally:
        if started:
            import ray

            ray.shutdown()
        stack.close()


def _signals():
    """SIGTERM and SIGINT handled from here on (``interrupt.on_signals``); ``close()`` restores the previous handlers.
    Inside ``Tuner.fit`` Tune's own Ctrl-C handler stops the trials, saves Tune's state and returns; SIGTERM is given
    to that handler too, and ``_finish`` then ends the sweep as interrupted by the signal received."""
    from contextlib import ExitStack

    from orchestrator.interrupt import on_signals

    stack = ExitStack()
    stack.enter_context(on_signals(graceful_sigint=True))
    return stack


def _interrupted(sweep: dict[str, Any], uri: str, signum: int, done: str = ""):
    """Mark the sweep's parent run KILLED with ``fsig.interrupted=true`` (its running children KILLED) and return the
    ``Interrupted`` whose one line names the command that continues it."""
    from orchestrator import tracking
    from orchestrator.interrupt import TAG, Interrupted

    err = Interrupted(signum)
    try:
        _close_running_children(uri, sweep, "KILLED")
        tracking.end_run(uri, sweep["parent_run_id"], "KILLED")
        tracking.set_tags(uri, sweep["parent_run_id"], {TAG: "true"})
    except Exception as store_err:  # noqa: BLE001 - the line must still come out
        _log(f"could not mark sweep {sweep['name']} KILLED ({store_err.__class__.__name__})")
    return err.with_message(
        f"interrupted by {err.signal_name}: sweep {sweep['name']} is KILLED ({TAG}=true){done}; continue it with "
        f"python -m orchestrator sweep {sweep['method']} --resume {sweep['name']} --tracking-uri {uri}")


def _check_saved_space(sweep: dict[str, Any], name: str, use_saved: bool) -> None:
    """A resumed sweep searches the space saved in its ``sweep.json`` (Tune's and Optuna's restored state were
    built on it). If the file it was read from (``sweep["space_file"]``) now parses to a different space, refuse
    (``UserError``) unless ``use_saved`` (``--use-saved-space``); say on stderr which space is used whenever the
    file is not the saved space (edited and accepted, or gone). Comments and formatting do not count: the parsed
    spaces are compared; a file edited into an invalid space counts as changed."""
    from orchestrator import search_space

    defaults = _method_defaults(sweep["method"])
    saved = search_space.parse(sweep["space"], sweep["space_file"], defaults).to_dict()
    path = Path(sweep["space_file"])
    if not path.is_file():  # gone (or another working directory): the saved space is the only one there is
        _log(f"search space: the one saved when sweep {name} started (its file {path} is not there now)")
        return
    try:
        loaded = search_space.load(path, defaults)
        if "metrics" in saved and not loaded.multi:  # the objectives came from --objectives, not from the file
            loaded = loaded.with_objectives(list(saved["metrics"]))
        now = loaded.to_dict()
    except UserError:  # edited into a space that no longer validates
        keys = ["it is no longer a valid search space"]
    else:
        if json.dumps(now, sort_keys=True, default=str) == json.dumps(saved, sort_keys=True, default=str):
            return
        sp, np_ = saved.get("params", {}), now.get("params", {})
        keys = sorted(f"params.{k}" for k in {**sp, **np_} if sp.get(k) != np_.get(k))
        keys += sorted(k for k in {**saved, **now} if k != "params" and saved.get(k) != now.get(k))
        keys = [f"{', '.join(keys)} changed"]
    if not use_saved:
        raise UserError(f"--resume {name}: {path} was edited since the sweep started ({keys[0]}); "
                        f"a resumed sweep searches the space it started with: add --use-saved-space to continue with "
                        f"that one, or start a new sweep to search the edited file")
    _log(f"search space: the one saved when sweep {name} started, not the edited {path} ({keys[0]})")


def _ensure_ray(address: str | None) -> bool:
    from orchestrator.lifecycle import ensure_ray

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")  # a killed driver loses at most ~5 s of Tune state
    return ensure_ray(address)


def _auto_concurrency(sweep: dict[str, Any]) -> int:
    import ray

    res = ray.cluster_resources()
    per_trial_cpu = sweep["workers_per_trial"] * sweep["cpus_per_worker"]
    fits = int(res.get("CPU", 1) // per_trial_cpu)
    if sweep["gpus_per_worker"]:
        fits = min(fits, int(res.get("GPU", 0) // (sweep["workers_per_trial"] * sweep["gpus_per_worker"])))
    return max(1, min(fits, sweep["trials"]))


def trial_trainable(sweep: dict[str, Any], uri: str, prep):
    """The Tune trainable of a sweep trial (``_trial`` with its context and data), with its resources; also what
    ``orchestrator.replicates`` runs one seed with. ``sweep``: the sweep dict (``parent_run_id``, ``config``,
    ``split``, ``name``, ``experiment``, ``storage``, per-trial resources, ``space.metric``)."""
    from ray import tune

    from orchestrator import tracking

    ctx = {
        "uri": uri, "parent_run_id": sweep["parent_run_id"], "method": sweep["method"], "config": sweep["config"],
        "split": sweep["split"], "sweep_name": sweep["name"], "experiment": sweep["experiment"],
        "experiment_id": tracking.experiment_id(uri, sweep["experiment"]),
        "trial_storage": _join(sweep["storage"], "sweep_trials", sweep["name"]),
        "workers": sweep["workers_per_trial"], "cpus_per_worker": sweep["cpus_per_worker"],
        "gpus_per_worker": sweep["gpus_per_worker"], "max_failures": sweep["max_failures"],
        "metric": (sweep["space"].get("metrics") or [sweep["space"]["metric"]])[0],
        "metrics": sweep["space"].get("metrics"), "resumable_sweep": "tune_path" in sweep,  # replicates have no Tune state to resume
    }
    import ray

    fn = tune.with_parameters(_trial, ctx=ctx, data=(prep.ds, prep.split, prep.kind, prep.aids))
    # The trial's driver function needs no CPU (its TorchTrainer's workers hold them); an empty
    # request is rejected and a fractional CPU would cost a core's worth of scheduling on small boxes.
    # It is pinned to the sweep driver's node (Ray's built-in ``node:<ip>`` resource), so the trial and
    # its Ray Train controller (placed on the trial's node) record from where the driver runs: workers on
    # other nodes never need to reach the tracking store.
    node = f"node:{ray.util.get_node_ip_address()}"
    return tune.with_resources(fn, {"cpu": 0, "memory": 1, node: 0.001})


def _tune(sweep: dict[str, Any], uri: str, prep, *, restore: bool) -> dict[str, Any]:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator import search_space, tracking

    space = search_space.parse(sweep["space"], sweep["space_file"], _method_defaults(sweep["method"]))
    cfg = sweep["config"]
    trainable = trial_trainable(sweep, uri, prep)
    parent = sweep["parent_run_id"]
    try:
        if restore:
            tuner = tune.Tuner.restore(sweep["tune_path"], trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            concurrency = sweep["concurrency"] or _auto_concurrency(sweep)
            steps = int(cfg["steps"])
            grace = max(1, int(cfg["eval_every"]))
            # ASHA ranks trials on one metric, so a multi-objective sweep runs every trial to its budget (FIFO): a
            # trial behind on the primary objective may be on the Pareto front by another.
            scheduler = ASHAScheduler(time_attr="step", max_t=max(steps, grace) if steps > 0 else 10 ** 9,
                                      grace_period=grace, reduction_factor=2, stop_last_trials=False) \
                if sweep.get("scheduler", "asha") == "asha" and not space.multi else None  # None: FIFO
            # The study lives in a journal file beside the sweep (one study per sweep name): only this driver's
            # OptunaSearch writes it, optuna-dashboard and optuna.load_study read it, and a resumed sweep's
            # restored searcher reopens the same file (Tune pickles the searcher with its storage).
            # Multi-objective: OptunaSearch takes the lists (a study with one direction per objective; it is told each
            # trial's last reported values) and the Tuner gets no single metric.
            objective = {"metric": list(space.metrics), "mode": list(space.modes)} if space.multi else {}
            searcher = OptunaSearch(sampler=_sampler(sweep, concurrency), study_name=sweep["name"],
                                    storage=study_storage(sweep["optuna_storage"]), **objective)
            tuner = tune.Tuner(
                trainable, param_space=space.to_tune(),
                tune_config=tune.TuneConfig(metric=None if space.multi else space.metric,
                                            mode=None if space.multi else space.mode,
                                            search_alg=searcher, scheduler=scheduler,
                                            num_samples=int(sweep["trials"]), max_concurrent_trials=concurrency),
                run_config=tune.RunConfig(name=sweep["name"], storage_path=sweep["storage"],
                                          failure_config=tune.FailureConfig(max_failures=0)),
            )
            stopping = f"ASHA on {space.metric} every {grace} steps" if scheduler else \
                "no early stopping" + (" (multi-objective: ASHA needs one metric)" if space.multi else "")
            _log(f"{concurrency} trial(s) at a time, {sweep['workers_per_trial']} worker(s) each; "
                 f"{sweep.get('search', 'tpe')} search; {stopping}")
        import signal

        ours = signal.getsignal(signal.SIGINT)
        try:
            grid = tuner.fit()
        finally:  # Tune leaves its Ctrl-C handler installed after fit: ours again, so a later signal still stops us
            if threading.current_thread() is threading.main_thread() and ours is not None:
                signal.signal(signal.SIGINT, ours)
    except KeyboardInterrupt as err:
        from orchestrator.interrupt import as_interrupted

        raise _interrupted(sweep, uri, as_interrupted(err).signum) from None
    except BaseException:
        _close_running_children(uri, sweep, "FAILED")
        tracking.end_run(uri, parent, "FAILED")
        raise
    _release_placement_groups()
    summary = _finish(sweep, uri, grid, space, prep)
    if int(sweep.get("replicates", 1)) > 1:
        summary["replicates"] = _replicate_best(sweep, uri, prep, summary)
    return summary


def _replicate_best(sweep: dict[str, Any], uri: str, prep, summary: dict[str, Any]) -> dict[str, Any]:
    """``sweep --replicates N``: the best configuration re-trained with N fresh seeds (the sweep's seed + 1 ... + N:
    not the seed the search selected on) through ``replicates.replicate``, nested under the sweep's parent run."""
    from orchestrator import lifecycle
    from orchestrator.replicates import replicate

    if summary.get("best_config") is None:
        raise UserError(f"sweep {sweep['name']}: no trial has a {summary['metric']} value ({summary['trials_errored']} "
                        f"of {summary['trials_planned']} trials errored), so there is no best configuration to replicate; "
                        f"see the trials' errors above, or give the trials a budget that reaches eval_every (--steps)")
    cfg = {**sweep["config"], **summary["best_config"]}
    n, base = int(sweep["replicates"]), int(cfg["seed"])
    best = lifecycle.Prepared(sweep["method"], cfg, prep.ds, prep.split, prep.kind, prep.aids)
    scale = lifecycle.Scale(sweep["workers_per_trial"], sweep["cpus_per_worker"], sweep["gpus_per_worker"],
                            sweep["max_failures"])
    _log(f"sweep {sweep['name']}: replicating the best configuration with {n} seeds")
    out = replicate(best, seeds=[base + 1 + i for i in range(n)], scale=scale, uri=uri,
                    experiment=sweep["experiment"], parent_run_id=sweep["parent_run_id"],
                    tags={"replicates_of": str(summary["best_run_id"])})
    return out


def _sampler(sweep: dict[str, Any], concurrency: int = 1):
    """Seeded Optuna sampler: the same seed proposes the same first configs (TPE's start-up trials are random).

    With more than one trial at a time TPE runs with ``constant_liar``: trials still running count as
    bad results, so concurrent proposals spread out instead of piling onto one region.
    """
    import optuna

    seed = int(sweep["seed"])
    if sweep.get("search", "tpe") == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=int(sweep.get("startup_trials", 10)),
                                      constant_liar=concurrency > 1)


def study_file(storage: str, name: str) -> str:
    """Path of sweep ``name``'s Optuna journal: ``<storage>/<name>/optuna.journal`` (beside Tune's state).

    A journal file needs a local or shared file system; for a URI storage (``s3://...``) it is kept
    under ``./.orchestrator/optuna/`` on the driver's machine instead.
    """
    if "://" in storage:
        return str((Path.cwd() / ".orchestrator" / "optuna" / f"{name}.journal").resolve())
    return str(Path(storage, name, "optuna.journal"))


def study_storage(path: str):
    """Optuna's ``JournalStorage`` on the file ``path`` (created with its folder if missing).

    Why a journal file and not SQLite: one file, no database server, append-only writes under a
    file lock, and readable by ``optuna-dashboard PATH`` and ``optuna.load_study`` while the sweep runs.
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(path))


def _record_study(sweep: dict[str, Any], uri: str, parent: str, finished: bool) -> None:
    """Log the study's parameter-importance and parallel-coordinate plots (PNG) to the parent run.

    ``finished``: the sweep ran all its trials, so a study trial still RUNNING was asked by a driver
    that died before Tune saved it (Tune re-proposed it); it is marked FAIL so the study holds no
    phantom running trial. Plots Optuna cannot draw (importances need two completed trials with
    distinct values) are skipped with a log line saying why.
    """
    import warnings

    import matplotlib

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState

    from orchestrator import tracking

    path = sweep.get("optuna_storage")
    if not path or not Path(path).is_file():
        _log("no Optuna study file for this sweep: no study plots")
        return
    study = optuna.load_study(study_name=sweep["name"], storage=study_storage(path))
    if finished:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            study.tell(t.number, state=TrialState.FAIL)
    c = tracking.client(uri)
    plots = {"optuna/param_importances.png": optuna.visualization.matplotlib.plot_param_importances,
             "optuna/parallel_coordinate.png": optuna.visualization.matplotlib.plot_parallel_coordinate}
    for artifact, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = plot(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(9, 5)
            fig.tight_layout()
            c.log_figure(parent, fig, artifact)
            plt.close(fig)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # too few completed trials
            _log(f"Optuna plot {artifact} skipped: {str(err).splitlines()[0] if str(err) else type(err).__name__}")


def _release_placement_groups() -> None:
    """Free the worker placement groups of trials Tune killed (ASHA stop, Ctrl-C).

    Ray Train V2 creates them from its controller actor, so they are scoped to this driver's job
    and outlive a killed trial; Train's ``PlacementGroupCleaner`` removes them only where the
    State API (the dashboard) is up. Once ``Tuner.fit`` has returned no trial of this job is
    running, so every placement group this job still holds is one of those.
    """
    import ray
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    job = ray.get_runtime_context().get_job_id()
    for pg_id, info in placement_group_table().items():
        if pg_id.endswith(job) and info.get("state") in ("CREATED", "PENDING", "RESCHEDULING"):
            try:
                remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
                _log(f"released placement group {pg_id} of a stopped trial")
            except Exception as err:  # noqa: BLE001 - already gone
                _log(f"placement group {pg_id}: {err.__class__.__name__}")


def _close_running_children(uri: str, sweep: dict[str, Any], status: str) -> None:
    """Leave no child RUNNING when the driver gives up (a resume sets them RUNNING again)."""
    from orchestrator import tracking

    exp_id = tracking.experiment_id(uri, sweep["experiment"])
    for run in children(uri, sweep["parent_run_id"], exp_id):
        if run.info.status == "RUNNING":
            tracking.end_run(uri, run.info.run_id, status)


def _method_defaults(method: str) -> dict[str, Any]:
    from orchestrator.kinds import method_class

    return method_class(method).default_config


def _finish(sweep: dict[str, Any], uri: str, grid, space, prep) -> dict[str, Any]:
    """Close every child run (stopped-early ones by hand), pick the best trial, record it on the parent."""
    from orchestrator import tracking

    parent, metric, mode = sweep["parent_run_id"], space.metric, space.mode
    trials = list(grid._experiment_analysis.trials)
    by_id = {t.trial_id: t for t in trials}
    # Statuses as Tune saved them (what a restore will see): after Ctrl-C, Tune's clean-up marks the
    # trials it stops TERMINATED in memory, but the state it saved just before says RUNNING/PENDING.
    status = {t.trial_id: t.status for t in trials}
    try:
        from ray.tune import ExperimentAnalysis

        status.update({t.trial_id: t.status for t in ExperimentAnalysis(sweep["tune_path"]).trials})
    except Exception as err:  # noqa: BLE001 - the in-memory statuses are the fallback
        _log(f"could not read Tune's saved state ({err.__class__.__name__}); using in-memory trial statuses")
    results = {}
    for r in grid:
        tid = (r.metrics or {}).get("trial_id")
        if tid is None and r.path:
            tid = next((t.trial_id for t in trials if str(t.path) == str(r.path)), None)
        if tid:
            results[tid] = r
    c = tracking.client(uri)
    exp_id = tracking.experiment_id(uri, sweep["experiment"])
    interrupted = len(trials) < int(sweep["trials"]) or any(v not in ("TERMINATED", "ERROR") for v in status.values())

    child_of: dict[str, str] = {}
    stopped, errored = 0, 0
    for run in children(uri, parent, exp_id):
        tid = run.data.tags.get(TRIAL_TAG)
        trial = by_id.get(tid)
        run_id = run.info.run_id
        if trial is None:
            # Started by a driver that died before Tune saved the trial; Tune re-proposed it under a new id.
            _log(f"deleting orphan child run {run_id} (trial {tid} is unknown to Tune)")
            c.delete_run(run_id)
            continue
        child_of[tid] = run_id
        current = c.get_run(run_id)
        run_status, trial_status = current.info.status, status[tid]
        ran_to_end = current.data.tags.get("stopped_early") == "false"
        # A trial ASHA stops is torn down mid-fit: its run is left RUNNING, or FAILED when the teardown
        # raised inside the trial's own handler; either way Tune calls it TERMINATED.
        if trial_status == "TERMINATED" and run_status != "FINISHED" and not ran_to_end:
            _close_stopped(uri, run_id, results.get(tid), metric)
        elif run_status == "RUNNING" and trial_status == "ERROR":
            tracking.end_run(uri, run_id, "FAILED")
        elif run_status == "RUNNING":  # interrupted: resume sets it RUNNING again
            tracking.end_run(uri, run_id, "KILLED")
        if trial_status == "ERROR":
            errored += 1
        if c.get_run(run_id).data.tags.get("stopped_early") == "true":
            stopped += 1

    completed = sum(v == "TERMINATED" for v in status.values())
    # The best trial by its best validation value, read from MLflow: a trial resumed from a checkpoint
    # reported to Tune only after the resume, but its child run holds the whole history.
    # A trial's value is the one at the checkpoint it selects (loop.select_step, the rule train uses); trials tie
    # to the first one listed.
    from orchestrator.loop import select_step

    best_tid, best_value, best_config = None, None, None
    for tid, run_id in child_of.items():
        history = {int(m.step): float(m.value) for m in c.get_metric_history(run_id, metric)}
        step = select_step(history, metric)
        if step is None:
            continue
        v = history[step]
        if best_value is None or (v < best_value if mode == "min" else v > best_value):
            best_tid, best_value = tid, v
            best_config = {k: by_id[tid].config[k] for k in space.params if k in by_id[tid].config}
    front_lines: tuple[str, ...] = ()
    if space.multi:  # the configuration re-trained is picked from the Pareto front (pick_from_front), not by one metric
        points = [p for p in (trial_point(uri, run_id, tid, space) for tid, run_id in child_of.items()) if p]
        for p in points:
            p["config"] = {k: by_id[p["trial_id"]].config[k] for k in space.params if k in by_id[p["trial_id"]].config}
        front = pareto_front(points, space.metrics, space.modes)
        picked = pick_from_front(front, space.metrics, space.modes) if front else None
        best_tid = picked["trial_id"] if picked else None
        best_value = picked["values"][space.metric] if picked else None
        best_config = picked["config"] if picked else None
        front_lines = _record_front(uri, parent, space, points, front, picked)
    summary: dict[str, Any] = {
        "sweep_name": sweep["name"], "parent_run_id": parent, "method": sweep["method"],
        "dataset": sweep["config"]["dataset"], "metric": metric, "mode": mode,
        "trials_planned": int(sweep["trials"]), "trials_completed": completed, "trials_stopped_early": stopped,
        "trials_errored": errored, "best_trial_id": best_tid, "best_run_id": child_of.get(best_tid),
        "best_config": best_config, "best_metric": best_value,
    }
    tracking.log_metrics(uri, parent, {"trials_completed": completed, "trials_stopped_early": stopped,
                                       "trials_errored": errored})
    if space.multi:
        summary["objectives"] = list(space.metrics)
        summary["pareto_front"] = [{"trial_id": p["trial_id"], "run_id": p["run_id"], **p["values"]} for p in front]
    if best_tid is not None:
        if not interrupted:  # a signal's grace period is no time for a novel-class evaluation: the resume does it
            _evaluate_if_stopped(sweep, uri, child_of[best_tid], prep)
        _record_best(uri, parent, summary)
    _record_study(sweep, uri, parent, finished=not interrupted)
    tracking.describe_run(uri, parent, title=(
        f"**sweep {sweep['name']}**: {sweep['method']} on {sweep['config']['dataset']}, {completed} of {sweep['trials']} "
        f"trials completed ({stopped} stopped early by ASHA, {errored} errored)"), lines=(
        f"best trial {best_tid} (run {child_of.get(best_tid)}): best {metric} {best_value} with {best_config}",
        *front_lines))
    if interrupted:  # Tune stopped on Ctrl-C, or on SIGTERM handed to its Ctrl-C handler (_signals)
        import signal

        from orchestrator.interrupt import received

        raise _interrupted(sweep, uri, received() or signal.SIGINT,
                           f" after {completed} of {sweep['trials']} trials")
    tracking.end_run(uri, parent, "FINISHED" if completed else "FAILED")
    _log(f"sweep {sweep['name']}: best trial {best_tid} ({metric}={best_value}) {best_config}")
    return summary


def _objectives_text(space) -> str:
    """'max val_class_hit' or, for a multi-objective space, every objective and which one is primary."""
    if space.multi:
        return (", ".join(f"{mo} {m}" for m, mo in zip(space.metrics, space.modes)) +
                f": multi-objective, primary {space.metric}")
    return f"{space.mode} {space.metric}"


def trial_point(uri: str, run_id: str, trial_id: str, space) -> dict[str, Any] | None:
    """One trial's objective values, read from its child run's metric histories, at its selected checkpoint.

    The step is the run's ``selected_step`` tag (its checkpoint, chosen on the primary objective), else the step
    ``loop.select_step`` picks from the primary objective's history (best value, ties to the later step).
    Returns ``{"trial_id", "run_id", "step", "values": {objective: float}}``, or None when any objective has no
    finite value at that step (an errored or unevaluated trial is not on any front).
    """
    from orchestrator import tracking

    c = tracking.client(uri)
    hist = {m: {int(h.step): float(h.value) for h in c.get_metric_history(run_id, m) if math.isfinite(h.value)}
            for m in space.metrics}
    primary = hist[space.metric]
    if not primary:
        return None
    tag = c.get_run(run_id).data.tags.get("selected_step")
    if tag is not None and tag.isdigit() and int(tag) in primary:
        step = int(tag)
    else:
        from orchestrator.loop import select_step

        step = select_step(primary, space.metric)
    if any(step not in h for h in hist.values()):
        return None
    return {"trial_id": trial_id, "run_id": run_id, "step": step, "values": {m: h[step] for m, h in hist.items()}}


def pareto_front(points: list[dict[str, Any]], metrics: tuple[str, ...] | list[str],
                 modes: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
    """The non-dominated ``points`` (each with ``values``: objective -> float), by Optuna's own Pareto computation
    (``Study.best_trials`` of a study with one direction per objective, ``"min"``/``"max"`` in ``modes``).
    Order: as in ``points``. An empty list gives an empty front."""
    import optuna

    if not points:
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize" if m == "max" else "minimize" for m in modes])
    for i, p in enumerate(points):
        study.add_trial(optuna.trial.create_trial(values=[float(p["values"][m]) for m in metrics],
                                                  user_attrs={"index": i}))
    keep = {t.user_attrs["index"] for t in study.best_trials}
    return [p for i, p in enumerate(points) if i in keep]


def pick_from_front(front: list[dict[str, Any]], metrics: tuple[str, ...] | list[str],
                    modes: tuple[str, ...] | list[str], tolerance: float = PARETO_TOLERANCE) -> dict[str, Any]:
    """The configuration a multi-objective sweep re-trains (``--replicates``) and reports as its best.

    Rule: among the Pareto points, those whose every non-primary objective is within ``tolerance`` of the
    front's best value on it (``|v - best| <= tolerance * |best|``) qualify; of them, the one best on the primary
    objective (``metrics[0]``) wins (ties: the better second objective, then the earlier point). The point best
    on the primary objective overall qualifies when nothing else does, so the rule always picks. E.g. with
    ``[val_class_hit, val_fid_domain]`` and 0.25: the highest validation class_hit among the points whose FID
    is at most 25% above the front's lowest. Raises ValueError on an empty front.
    """
    if not front:
        raise ValueError("an empty Pareto front has no point to pick")
    sign = {m: (1.0 if mo == "max" else -1.0) for m, mo in zip(metrics, modes)}

    def ok(p: dict[str, Any]) -> bool:
        for m in metrics[1:]:
            best = max(sign[m] * q["values"][m] for q in front) * sign[m]
            if abs(p["values"][m] - best) > tolerance * abs(best):
                return False
        return True

    qualified = [p for p in front if ok(p)] or front
    return max(qualified, key=lambda p: tuple(sign[m] * p["values"][m] for m in metrics[:2]))


def _record_front(uri: str, parent: str, space, points: list[dict], front: list[dict],
                  picked: dict | None) -> tuple[str, ...]:
    """``pareto_front.json`` on the parent run (every trial's point, the front, the rule, the pick); returns the
    run note's lines (a markdown table of the front)."""
    from orchestrator import tracking

    on_front = {p["trial_id"] for p in front}
    rule = (f"among Pareto points whose {', '.join(space.metrics[1:])} is within {PARETO_TOLERANCE:.0%} of the "
            f"front's best, the one best on {space.metric} (primary)")
    tracking.log_dict(uri, parent, {
        "objectives": list(space.metrics), "modes": list(space.modes), "primary": space.metric,
        "tolerance": PARETO_TOLERANCE, "rule": rule, "picked_trial_id": picked["trial_id"] if picked else None,
        "front": [p["trial_id"] for p in front],
        "trials": [{**{k: p[k] for k in ("trial_id", "run_id", "step", "values", "config")},
                    "on_front": p["trial_id"] in on_front} for p in points]}, PARETO_ARTIFACT)
    header = "| trial | step | " + " | ".join(space.metrics) + " | picked |"
    rows = [f"| {p['trial_id']} | {p['step']} | " + " | ".join(f"{p['values'][m]:.4g}" for m in space.metrics) +
            f" | {'yes' if picked and p['trial_id'] == picked['trial_id'] else ''} |" for p in front]
    return (f"Pareto front ({len(front)} of {len(points)} trials; {PARETO_ARTIFACT}); picked: {rule}", "",
            header, "|" + "---|" * (len(space.metrics) + 3), *rows, "")


def _evaluate_if_stopped(sweep: dict[str, Any], uri: str, run_id: str, prep) -> None:
    """The best trial may be one ASHA stopped (ranked by its best validation value, not its last):
    give it the novel-class evaluation its trial function did not live to run."""
    import tempfile

    from orchestrator import lifecycle, tracking
    from orchestrator.checkpoints import load_checkpoint
    from orchestrator.evaluation import registry

    run = tracking.client(uri).get_run(run_id)
    # Evaluated already: a novel-class evaluation records its kind's headline metrics (the registry's note headlines).
    if run.data.tags.get("stopped_early") != "true" or run.data.tags.get("selected_step") is None \
            or any(k in run.data.metrics for k in registry.note_headlines()):
        return
    with tempfile.TemporaryDirectory() as tmp:
        saved = load_checkpoint(tracking.download(uri, run_id, lifecycle.CHECKPOINT_ARTIFACT, tmp).parent)
    cfg = {**sweep["config"], **tracking.load_json_artifact(uri, run_id, lifecycle.CONFIG_ARTIFACT)["config"]}
    _log(f"best trial's child run {run_id} was stopped early: evaluating its step-{saved['step']} checkpoint")
    trial_prep = lifecycle.Prepared(sweep["method"], cfg, prep.ds, prep.split, prep.kind, prep.aids)
    lifecycle.evaluate_and_record(trial_prep, saved, uri=uri, run_id=run_id, seed=int(cfg["eval_seed"]),
                                  n_generate=int(cfg["n_generate"]))


def _record_best(uri: str, parent: str, summary: dict[str, Any]) -> None:
    from mlflow.exceptions import MlflowException

    from orchestrator import tracking

    tracking.log_metrics(uri, parent, {f"best_{summary['metric']}": summary["best_metric"]})
    tracking.set_tags(uri, parent, {"best_trial_id": summary["best_trial_id"],
                                    "best_run_id": str(summary["best_run_id"])})
    c = tracking.client(uri)
    for k, v in (summary["best_config"] or {}).items():
        try:
            c.log_param(parent, f"best.{k}", str(v))
        except MlflowException:  # params are immutable: a resumed sweep with a new best records it as a tag
            c.set_tag(parent, f"best.{k}", str(v))


def _close_stopped(uri: str, run_id: str, result, metric: str) -> None:
    """A trial ASHA stopped was killed mid-fit: log its best validation checkpoint and close its run."""
    from orchestrator import lifecycle, tracking
    from orchestrator.checkpoints import CHECKPOINT_FILE, load_checkpoint

    df = result.metrics_dataframe if result is not None else None
    last_step = None
    if df is not None and "step" in df and not df["step"].dropna().empty:
        last_step = int(df["step"].dropna().iloc[-1])
    tags = {"stopped_early": "true", "stopped_at_step": str(last_step)}
    if df is not None and "checkpoint_path" in df and metric in df:
        from orchestrator.loop import select_evaluation

        rows = df.dropna(subset=["checkpoint_path", metric])
        rows = rows[[Path(p, CHECKPOINT_FILE).is_file() for p in rows["checkpoint_path"]]]
        # The rule a finished trial's checkpoint is chosen by (best value, ties to the later step).
        steps = rows["step"] if "step" in rows else rows.index
        chosen = select_evaluation([(str(p), {"step": float(s) if math.isfinite(float(s)) else 0.0, metric: float(v)})
                                    for p, s, v in zip(rows["checkpoint_path"], steps, rows[metric])], metric)
        if chosen is not None:
            saved = load_checkpoint(Path(chosen[0]))
            lifecycle.log_model(uri, run_id, saved)
            tags["selected_step"] = str(int(saved["step"]))
    tracking.set_tags(uri, run_id, tags)
    tracking.end_run(uri, run_id, "FINISHED")
    _log(f"child run {run_id}: stopped early by ASHA at step {last_step}")
