"""``train METHOD --replicates N``: N training seeds as concurrent Ray Tune trials, one MLflow parent run.

Each replicate is a Tune trial of a grid over the run's ``seed`` (seed, seed+1, ...), run by the sweep's
trial function through the same run lifecycle as ``train`` (its own child run: record, selection,
novel-class evaluation), with the sweep's per-trial resources. The parent then holds, for every
protocol metric, the mean and a 95% interval over seeds and novel classes: the two-level bootstrap of
``orchestrator.evaluation.stats.bootstrap_ci`` (classes resampled once per replicate and shared across
seeds, seeds at the outer level) on the children's per-class values, or over seeds alone for pooled
metrics (FID, KID, IS, Mode Score). Logged as ``<metric>_mean``, ``<metric>_ci_low``, ``<metric>_ci_high``.
"""
from __future__ import annotations

import math
import time
import uuid
from typing import Any

from orchestrator import lifecycle, tracking
from orchestrator.errors import UserError
from orchestrator.kinds import log
from orchestrator.settings import default_storage


def aggregate(children: list[dict[str, Any]]) -> dict[str, float]:
    """``<metric>_mean/_ci_low/_ci_high`` over the children's ``per_class_*.json`` contents.

    ``children``: one dict per seed with ``per_class`` (metric -> list over classes) and ``metrics``; the
    computation is ``orchestrator.evaluation.stats.summarize_seeds`` (shared with ``evaluate --eval-seed``).
    """
    from orchestrator.evaluation.stats import summarize_seeds

    return summarize_seeds(children)


def _copy_comparability(uri: str, parent: str, children: list) -> None:
    """The parent's summary holds the children's metrics: it carries their combined comparability record (``cmp.*``
    tags and ``comparability.json``; ``comparability.combined``): a key the children disagree on is recorded as
    ``mixed:...`` and named in the tag ``cmp_mixed``, so the parent never claims a comparability it lacks and is
    never taken for comparable on that key (a dropped key would have compared equal to another record's missing
    one). One config and one evaluation seed make the children agree on every key."""
    from orchestrator.evaluation.comparability import ARTIFACT, MIXED_PREFIX, as_tags, combined, from_tags

    record = combined([from_tags(k.data.tags) for k in children])
    if record is None:
        return
    mixed = [k for k, v in record.items() if v.startswith(MIXED_PREFIX)]
    tracking.set_tags(uri, parent, {**as_tags(record), **({"cmp_mixed": ",".join(mixed)} if mixed else {})})
    tracking.log_dict(uri, parent, record, ARTIFACT)
    if mixed:
        log(f"replicate parent {parent}: its seeds were measured differently in {', '.join(mixed)} (recorded as "
            f"mixed: compare pairs it with nothing on those keys)")


def run_replicates(method: str, overrides: dict[str, Any], sets: list[str], *, n: int, scale: lifecycle.Scale,
                   uri: str, experiment: str, address: str | None, inception_weights: str | None) -> dict[str, Any]:
    """Train ``n`` seeds of one config as concurrent Tune trials under one MLflow parent run; see the module doc."""
    import ray

    if n < 2:
        raise UserError(f"--replicates {n}: pass 2 or more (1 is a plain train)")
    scale.check()
    cfg = lifecycle.resolve_config(method, overrides, sets)
    prep = lifecycle.prepare(method, cfg, inception_weights=inception_weights)
    started = lifecycle.ensure_ray(address)
    try:
        lifecycle.check_cluster_fits(scale)
        return replicate(prep, seeds=[int(cfg["seed"]) + i for i in range(n)], scale=scale, uri=uri,
                         experiment=experiment)
    finally:
        if started:
            ray.shutdown()


def replicate(prep: lifecycle.Prepared, *, seeds: list[int], scale: lifecycle.Scale, uri: str, experiment: str,
              parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Train ``prep.cfg`` once per seed of ``seeds`` as a Ray Tune grid and record the replicate parent run.

    Ray must be running (the caller started or joined it). Each seed is a trial of ``sweep.trial_trainable`` (the sweep's
    trial function: the run lifecycle in a child run, with the per-trial resources of ``scale``); the replicate
    parent (tags ``replicate_role=parent``, ``seeds``; nested under ``parent_run_id`` when given, e.g. a sweep's
    parent) then holds ``<metric>_mean/_ci_low/_ci_high`` for every protocol metric (:func:`aggregate`) and
    ``replicates.json``. Returns the JSON line's dict: ``run_id`` (the replicate parent), ``seeds``,
    ``child_run_ids`` and the summary. Raises ``UserError`` when a seed did not finish (the parent is FAILED).
    """
    import ray
    from ray import tune

    from orchestrator import sweep as sweep_mod

    method, cfg, n = prep.method, prep.cfg, len(seeds)
    name = f"replicates-{method}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    storage = default_storage()
    parent = lifecycle.open_run(uri, experiment, name, prep, {
        "sweep_name": name, "sweep_role": "parent", "replicate_role": "parent", "replicates": str(n),
        "seeds": ",".join(map(str, seeds)), **(tags or {})}, parent_run_id=parent_run_id)
    metric = cfg["select_metric"] if cfg["select_metric"] != "last" else "meta_steps"
    sweep = {"name": name, "method": method, "config": cfg, "split": prep.split.to_dict(),
             "experiment": experiment, "storage": storage, "workers_per_trial": scale.workers,
             "cpus_per_worker": scale.cpus_per_worker, "gpus_per_worker": scale.gpus_per_worker,
             "max_failures": scale.max_failures, "space": {"metric": metric}, "parent_run_id": parent}
    res = ray.cluster_resources()
    concurrency = max(1, min(n, int(res.get("CPU", 1) // (scale.workers * scale.cpus_per_worker))))
    log(f"{n} replicates of {method} (seeds {seeds}), {concurrency} at a time; MLflow parent run {parent}")
    try:
        tuner = tune.Tuner(sweep_mod.trial_trainable(sweep, uri, prep), param_space={"seed": tune.grid_search(seeds)},
                           tune_config=tune.TuneConfig(max_concurrent_trials=concurrency),
                           run_config=tune.RunConfig(name=name, storage_path=storage,
                                                     failure_config=tune.FailureConfig(max_failures=0)))
        grid = tuner.fit()
        errors = [r.error for r in grid if r.error is not None]
        exp_id = tracking.experiment_id(uri, experiment)
        kids = sweep_mod.children(uri, parent, exp_id)
        finished = [k for k in kids if k.info.status == "FINISHED"]
        if errors or len(finished) != n:
            raise UserError(f"replicates {name}: {len(finished)} of {n} seeds finished "
                            f"({str(errors[0]).splitlines()[0][:200] if errors else 'see the child runs'}); "
                            f"the parent run {parent} is FAILED")
        figure = prep.kind.figure.rsplit(".", 1)[0]
        per_seed = sorted(((int(k.data.params["seed"]), tracking.load_json_artifact(uri, k.info.run_id,
                                                                                     f"per_class_{figure}.json"))
                           for k in finished), key=lambda x: x[0])
        summary = aggregate([d for _, d in per_seed])
        _copy_comparability(uri, parent, finished)
        tracking.log_metrics(uri, parent, {k: v for k, v in summary.items() if math.isfinite(v)})
        tracking.log_dict(uri, parent, {"seeds": [s for s, _ in per_seed], "children": [k.info.run_id for k in finished],
                                        "summary": summary}, "replicates.json")
        shown = [m + c for m in tracking.NOTE_HEADLINES for c in ("", *tracking.NOTE_CONTROLS) if f"{m}{c}_mean" in summary]
        tracking.describe_run(uri, parent, lines=(
            f"{n} replicates (seeds {', '.join(map(str, seeds))}); mean and 95% interval over seeds and classes:\n"
            + "\n".join(f"- {m} {summary[m + '_mean']:.4g} [{summary[m + '_ci_low']:.4g}, {summary[m + '_ci_high']:.4g}]"
                         for m in shown),))
        tracking.end_run(uri, parent, "FINISHED")
    except BaseException:
        lifecycle._end_quietly(uri, parent, "FAILED")
        raise
    return {"run_id": parent, "method": method, "dataset": cfg["dataset"], "replicates": n, "seeds": list(seeds),
            "child_run_ids": [k.info.run_id for k in finished], **summary}
