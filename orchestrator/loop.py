"""The one Ray Train worker loop, for every kind of method, and ``fit`` around ``TorchTrainer``.

Each worker draws its own tasks or episodes (indices ``rank*b .. rank*b+b-1`` of a step, so the
union over W workers is what one worker drawing W·b would see), the method averages its gradients
through the harness's ``sync``, and every ``eval_every`` steps rank 0 scores the validation classes
and writes a checkpoint directory holding ``model.pt``, ``history.json`` (every step's losses since
the previous checkpoint, the budget counters, the validation metrics) and any validation figures.

Workers never write to the tracking store (``orchestrator.tracking`` refuses inside a worker): they
report, and ``orchestrator.recorder.Recorder``, a Ray Train ``UserCallback`` on the controller
(which Ray places on the driver's node), records what each *persisted* checkpoint holds. A restart
from the checkpoint at step s therefore re-trains and re-reports only steps after s, and each step
reaches the record once (ours, on Ray Train 2.60's documented callback).

Budgets: ``steps`` counts meta-steps; ``budget_minutes`` counts training seconds only (validation
and checkpointing excluded), so methods with costly validation get the same training time. A run
restored at or past its budget stops without training another step.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from orchestrator.checkpoints import load_checkpoint, save_checkpoint
from orchestrator.errors import UserError
from orchestrator.kinds import build_method, higher_is_better, kind_of
from orchestrator.settings import FATAL, HISTORY_FILE, SAMPLES_DIR, WORKER_ENV


def _budget_reached(step: int, train_s: float, steps: int, budget_s: float) -> bool:
    return (steps > 0 and step >= steps) or (budget_s > 0 and train_s >= budget_s)


def train_loop_per_worker(loop: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (Ray's ``train_loop_per_worker``); ``loop`` is ``fit``'s config."""
    import ray
    import ray.train
    import ray.train.torch

    from orchestrator.data import Split, TaskSampler
    from orchestrator.distributed import any_flags, any_true, broadcast_object, broadcast_params, gather_objects, grad_sync, world

    os.environ[WORKER_ENV] = "1"
    cfg = loop["config"]
    threads = max(1, int(loop["threads"]))
    torch.set_num_threads(threads)
    device = ray.train.torch.get_device()
    rank, size = world()
    ds = ray.get(loop["dataset_ref"])
    split = Split.from_dict(loop["split"])
    val_aid = ray.get(loop["val_aid_ref"])
    kind = kind_of(loop["method"])
    method = build_method(loop["method"], cfg, ds.image_shape, device, ds.num_classes)

    step, train_s, eval_s = 0, 0.0, 0.0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            saved = load_checkpoint(Path(d), device)
            history = json.loads((Path(d) / HISTORY_FILE).read_text()) if (Path(d) / HISTORY_FILE).is_file() else {}
        method.load_state_dict(saved["state"])
        step, train_s = int(saved["step"]), float(saved["elapsed_s"])
        eval_s = float(history.get("budget", {}).get("eval_seconds", 0.0))
        if rank == 0:
            print(f"resuming from checkpoint at step {step}", flush=True)
    broadcast_params(kind.synced(method))
    sync = grad_sync()
    nodes = gather_objects({"rank": rank, "node_ip": ray.util.get_node_ip_address(), "host": socket.gethostname(),
                            "pid": os.getpid()})

    b, steps = int(cfg["tasks_per_worker"]), int(cfg["steps"])
    budget_s = 60.0 * float(cfg["budget_minutes"])
    sampler = TaskSampler(ds, split.base, int(cfg["seed"]))
    per_item = kind.images_per_item(cfg)
    records: list[dict[str, Any]] = []  # every step since the last report (rank 0's losses)
    window: dict[str, list[float]] = {}
    window_start, window_steps = time.perf_counter(), 0

    stop = any_true(_budget_reached(step, train_s, steps, budget_s), device)
    while not stop:
        t0 = time.perf_counter()
        method.schedule(step, steps)
        batch = kind.batch(method, sampler, step, range(rank * b, rank * b + b), cfg, val_aid)
        losses = {k: float(v) for k, v in method.meta_train_step(batch, sync).items()}
        kind.after_step(method)
        step += 1
        train_s += time.perf_counter() - t0
        # one control all-reduce per step for both questions (the gradients' own is inside meta_train_step)
        diverged, stop = any_flags([not all(math.isfinite(v) for v in losses.values()),
                                    _budget_reached(step, train_s, steps, budget_s)], device)
        if diverged:
            # Deterministic: a restart from the last checkpoint would diverge again, so no retry (FailureConfig
            # retries only what the machinery lost); the driver turns this report into one line.
            bad = ", ".join(f"{k}={v}" for k, v in losses.items() if not math.isfinite(v)) or "on another worker"
            ray.train.report({"step": step, FATAL: f"training diverged at step {step} ({bad}): lower the learning "
                                                    f"rates (--set) or resume from an earlier run"})
            return
        window_steps += 1
        for k, v in losses.items():
            window.setdefault(k, []).append(v)
        record = {"step": step, "metrics": dict(losses)}
        if step % int(cfg["log_every"]) == 0 or stop:
            rate = window_steps * b * size / max(time.perf_counter() - window_start, 1e-9)
            record["metrics"][f"{kind.unit}_per_s"] = rate
            if rank == 0:
                total = f"/{steps}" if steps else f" ({train_s / 60:.1f}/{budget_s / 60:.1f} min)"
                shown = " ".join(f"{k}={sum(v) / len(v):.3g}" for k, v in window.items())
                print(f"step {step}{total}  {rate:.2f} {kind.unit}/s  {shown}", flush=True)
            window, window_start, window_steps = {}, time.perf_counter(), 0
        records.append(record)

        if step % int(cfg["eval_every"]) == 0 or stop:
            report: dict[str, Any] = {"step": step, **losses}
            ckpt = None
            if rank == 0:
                t_eval = time.perf_counter()
                tmpdir = tempfile.mkdtemp(prefix="fsig-ckpt-")
                samples = Path(tmpdir) / SAMPLES_DIR
                samples.mkdir()
                try:
                    val = kind.validate(method, ds, split, cfg, val_aid, step, samples if kind.val_figures else None)
                except UserError as err:  # bad data found late: deterministic, never retried
                    report[FATAL] = str(err)
                    val = {}
                eval_s += time.perf_counter() - t_eval
                budget = {"meta_steps": step, "tasks_seen": step * b * size,
                          "images_seen": step * b * size * per_item, "train_seconds": train_s, "eval_seconds": eval_s}
                report.update(val)
                report.update(budget)
                report[SCORE] = checkpoint_score(val, cfg["select_metric"])
            report = broadcast_object(report)
            if FATAL in report:
                if rank == 0:
                    shutil.rmtree(tmpdir, ignore_errors=True)
                ray.train.report({"step": step, FATAL: report[FATAL]})
                return
            if rank == 0:
                print(f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in val.items()), flush=True)
                history = {"records": records, "val": val, "budget": budget, "nodes": nodes,
                           "threads": threads, "step": step}
                (Path(tmpdir) / HISTORY_FILE).write_text(json.dumps(history))
                save_checkpoint(method.state_dict(), step, train_s, Path(tmpdir))
                ckpt = ray.train.Checkpoint.from_directory(tmpdir)
            extra = {"delete_local_checkpoint_after_upload": True} if ckpt is not None else {}
            ray.train.report(report, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_{step:07d}", **extra)
            records = []


def fit(method: str, cfg: dict[str, Any], ds, split, val_aid, *, workers: int, cpus_per_worker: float,
        gpus_per_worker: float, storage_path: str, name: str, max_failures: int = 1, callbacks: list | None = None,
        threads: int | None = None):
    """Run the data-parallel meta-training; returns Ray Train's ``Result``.

    ``callbacks`` go to Ray Train's ``RunConfig`` (the ``Recorder``; a sweep adds Ray Tune's
    ``TuneReportCallback`` so the workers' reports reach the enclosing Tune trial). Re-running with
    the same ``name`` and ``storage_path`` resumes from the latest checkpoint (Ray Train V2 restores
    its checkpoint manager from storage). ``threads``: torch threads per worker (default: its CPUs).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    select = cfg["select_metric"]
    # Ray keeps the best checkpoints by SCORE (finite always: Ray saves its checkpoint list as JSON, a NaN comes back
    # as null and the restored manager fails on it with "unsupported operand type(s) for *: 'float' and 'NoneType'").
    scoring = {} if select == "last" else {"checkpoint_score_attribute": SCORE, "checkpoint_score_order": "max"}
    resources = {"CPU": cpus_per_worker}
    if gpus_per_worker:
        resources["GPU"] = gpus_per_worker
    class Trainer(TorchTrainer):
        def _register_sigint_handler(self, controller) -> None:
            # Ray Train's own Ctrl-C handler would abort the fit and return as if it had ended; the command's handler
            # (orchestrator.interrupt) stays instead and stops the command as interrupted, for SIGINT as for SIGTERM.
            pass

    trainer = Trainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg, "method": method, "split": split.to_dict(), "dataset_ref": ray.put(ds),
            "val_aid_ref": ray.put(val_aid), "threads": threads or max(1, int(cpus_per_worker)),
        },
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=name, storage_path=str(storage_path),
            # Worker failures are retried (max_failures); a controller error is not: it is the Recorder saying the
            # tracking store took no record after MLflow's own retries (or a Ray Train bug), and Ray's default (-1,
            # retry forever) would re-train from the last checkpoint again and again.
            failure_config=FailureConfig(max_failures=max_failures, controller_failure_limit=0),
            checkpoint_config=CheckpointConfig(num_to_keep=3, **scoring),
            callbacks=callbacks or None,
        ),
    )
    return trainer.fit()


SCORE = "checkpoint_score"  # reported to Ray Train only (not recorded): its order of the checkpoints it keeps
WORST_SCORE = -1e300  # a NaN selection metric (e.g. FID not computable): finite, and below every real score


def checkpoint_score(val: dict[str, float], metric: str) -> float:
    """``val[metric]`` as a score where higher is better (negated for lower-is-better metrics); ``WORST_SCORE`` when the
    metric is missing or not finite, so such a checkpoint is kept last and never chosen over a scored one."""
    v = val.get(metric)
    if metric == "last" or v is None or not math.isfinite(float(v)):
        return WORST_SCORE
    return float(v) if higher_is_better(metric) else -float(v)


def best_checkpoint(result, metric: str):
    """The checkpoint chosen on validation classes (never novel ones); ``last`` (or none scored): the latest.
    A checkpoint whose metric is NaN is never chosen (``select_evaluation``)."""
    if metric == "last":
        return result.checkpoint, dict(result.metrics or {})
    chosen = select_evaluation(result.best_checkpoints or [], metric)
    return chosen if chosen is not None else (result.checkpoint, dict(result.metrics or {}))


def select_evaluation(evaluations: list[tuple[Any, dict[str, Any]]], metric: str) -> tuple[Any, dict[str, Any]] | None:
    """The evaluation whose validation ``metric`` is best, by the metric's direction (``kinds.higher_is_better``).

    ``evaluations``: ``(checkpoint, reported metrics)`` pairs, e.g. Ray Train's ``Result.best_checkpoints``;
    pairs without a finite ``metric`` value are ignored (a NaN never wins). Ties go to the latest ``step``
    (more training for the same validation value; e.g. ``class_hit`` is 1 at every step when the split has a
    single validation class, so selection then keeps the latest). Returns the chosen pair, or None when no pair
    has a finite value.
    """
    # Ray's restored checkpoint list can hold ``None`` for a score that was NaN when reported.
    scored = [(c, m) for c, m in evaluations
              if isinstance(m.get(metric), (int, float)) and math.isfinite(float(m[metric]))]
    if not scored:
        return None
    sign = 1.0 if higher_is_better(metric) else -1.0
    return max(scored, key=lambda cm: (sign * float(cm[1][metric]), float(cm[1].get("step", 0))))


def select_step(history: dict[int, float], metric: str) -> int | None:
    """The step whose checkpoint ``select_evaluation`` chooses from a metric history ``{step: value}`` (e.g. a run's
    MLflow history of ``val_class_hit``): the best finite value by the metric's direction, ties to the later step.
    None when no value is finite. The sweep reads a trial's selected checkpoint with it, so a sweep and a ``train``
    run choose by one rule."""
    chosen = select_evaluation([(int(s), {"step": int(s), metric: v}) for s, v in history.items()], metric)
    return None if chosen is None else chosen[0]
