"""Driver-side recording of a Ray Train run: exactly once per step, from persisted checkpoints.

``Recorder`` is a Ray Train ``UserCallback``: Ray runs it on the Train controller, which Ray Train 2.60
places on the node of the process that called ``fit`` (the driver, or a sweep trial pinned to the
driver's node), never on a worker. For every report that carries a checkpoint it reads the
checkpoint's ``history.json`` (each step's losses since the previous checkpoint, the validation
metrics, the budget counters, the workers' nodes) and its validation figures, and writes them to
MLflow in one batch per report. Because it reads only *persisted* checkpoints and skips every step
it has already recorded (``recorded_through``), a worker group restarted from the checkpoint at step
s records steps after s once, and a ``--resume`` that starts from a checkpoint the driver had not
recorded yet back-fills it first (``backfill``). Ours: Ray documents the callback, not this use.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from orchestrator import tracking
from orchestrator.settings import FATAL

try:  # Ray Train 2.60's driver-side hook (train V2)
    from ray.train import UserCallback
except ImportError:  # pragma: no cover - older Ray
    from ray.train.v2.api.callback import UserCallback

HISTORY_FILE = "history.json"
SAMPLES_DIR = "samples"
MARKER = "meta_steps"  # logged at every recorded checkpoint: the last recorded step is its last step


def _metric_batches(history: dict[str, Any], after: int) -> tuple[list[tuple[str, float, int]], int]:
    """(name, value, step) of every record of ``history`` with step > ``after``, and the checkpoint's step."""
    rows: list[tuple[str, float, int]] = []
    for rec in history.get("records", []):
        if int(rec["step"]) > after:
            rows += [(k, float(v), int(rec["step"])) for k, v in rec["metrics"].items()]
    step = int(history.get("step", 0))
    if step > after:
        rows += [(k, float(v), step) for k, v in {**history.get("val", {}), **history.get("budget", {})}.items()]
    return rows, step


def record_checkpoint_dir(uri: str, run_id: str, directory: Path, after: int) -> int:
    """Record what checkpoint ``directory`` holds beyond step ``after``; returns the new last recorded step."""
    path = Path(directory) / HISTORY_FILE
    if not path.is_file():
        return after
    history = json.loads(path.read_text())
    rows, step = _metric_batches(history, after)
    if step <= after:
        return after
    tracking.log_metric_rows(uri, run_id, rows)
    samples = Path(directory) / SAMPLES_DIR
    for png in sorted(samples.glob("*.png")) if samples.is_dir() else []:
        tracking.log_file(uri, run_id, png, "samples")
    if history.get("nodes"):
        nodes = history["nodes"]
        tracking.set_tags(uri, run_id, {"worker_nodes": ",".join(f"{n['rank']}:{n['node_ip']}:{n['pid']}" for n in nodes),
                                        "threads_train": str(history.get("threads", ""))})
    return step


def recorded_through(uri: str, run_id: str) -> int:
    """The last step whose checkpoint was recorded in ``run_id`` (0 if none)."""
    history = tracking.client(uri).get_metric_history(run_id, MARKER)
    return max((int(m.step) for m in history), default=0)


def backfill(uri: str, run_id: str, storage_path: str, name: str) -> int:
    """Record checkpoints of Ray Train run ``name`` that were persisted but not recorded (a driver that died
    between the two); local storage only. Returns the last recorded step."""
    done = recorded_through(uri, run_id)
    root = Path(storage_path) / name
    if "://" in str(storage_path) or not root.is_dir():
        return done
    for d in sorted(root.glob("checkpoint_*")):
        if (d / HISTORY_FILE).is_file():
            done = record_checkpoint_dir(uri, run_id, d, done)
    return done


class Recorder(UserCallback):
    """Writes each persisted checkpoint's records into MLflow run ``run_id`` (see the module docstring)."""

    def __init__(self, uri: str, run_id: str, after: int = 0):
        self.uri, self.run_id, self.after = uri, run_id, int(after)

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        fatal = next((m[FATAL] for m in metrics if m and m.get(FATAL)), None)
        if fatal:  # a deterministic failure the workers stopped on: the driver ends the run with it
            tracking.set_tags(self.uri, self.run_id, {FATAL: str(fatal)[:4000]})
        if checkpoint is None:
            return
        t0 = time.perf_counter()
        with checkpoint.as_directory() as d:
            self.after = record_checkpoint_dir(self.uri, self.run_id, Path(d), self.after)
        tracking.log_metric_rows(self.uri, self.run_id, [("recording_seconds", time.perf_counter() - t0, self.after)])
