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

A checkpoint whose record the tracking store refuses or does not answer (after MLflow's own bounded HTTP
retries, see ``orchestrator.tracking``) ends the fit with ``RecordingFailed`` rather than letting training
run on past records that could no longer be made: a checkpoint's samples and tags go first and its metrics
(with the marker) last, so the marker is only there when the whole checkpoint is, and ``--resume`` then
back-fills from storage exactly the checkpoints that are not. ``store_failure`` turns such a failure (here
or in the driver) into the one line the command prints.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from orchestrator import tracking
from orchestrator.errors import STORAGE_ERRNOS
from orchestrator.kinds import VAL_PER_CLASS
from orchestrator.settings import FATAL, HISTORY_FILE, SAMPLES_DIR

try:  # Ray Train 2.60's driver-side hook (train V2)
    from ray.train import UserCallback
except ImportError:  # pragma: no cover - older Ray
    from ray.train.v2.api.callback import UserCallback

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
    samples = Path(directory) / SAMPLES_DIR
    for png in sorted(samples.glob("*.png")) if samples.is_dir() else []:  # re-logging a file replaces it
        tracking.log_file(uri, run_id, png, "samples")
        tracking.log_step_image(uri, run_id, png, step)  # the same grid as an image at its step (a UI slider)
    for values in sorted(samples.glob(f"{VAL_PER_CLASS}_step*.json")) if samples.is_dir() else []:
        tracking.log_file(uri, run_id, values, VAL_PER_CLASS)  # per-class validation values (orchestrator.curves)
    if history.get("nodes"):
        nodes = history["nodes"]
        tracking.set_tags(uri, run_id, {"worker_nodes": ",".join(f"{n['rank']}:{n['node_ip']}:{n['pid']}" for n in nodes),
                                        "threads_train": str(history.get("threads", ""))})
    # The marker last (a stable sort), so a batch split at MLflow's 1,000 rows never records it before the rest.
    tracking.log_metric_rows(uri, run_id, sorted(rows, key=lambda r: r[0] == MARKER))
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


class RecordingFailed(Exception):
    """The tracking store (or its artifact location) did not take a checkpoint's record; the message says why.

    Raised on the Ray Train controller; Ray hands it to the driver inside a ``ControllerError``."""


def _chain(err: BaseException | None):
    """``err`` and everything it wraps (``__cause__``, ``__context__``, Ray's ``controller_failure``)."""
    seen: set[int] = set()
    stack = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [e.__cause__, e.__context__, getattr(e, "controller_failure", None), getattr(e, "cause", None),
                  *(getattr(e, "worker_failures", None) or {}).values()]  # Ray Train's WorkerGroupError


def _artifact_dir(uri: str, run_id: str) -> str | None:
    """The local folder of a run's artifacts (``file:`` artifact URIs only), else None."""
    from urllib.parse import unquote, urlparse

    try:
        artifact_uri = tracking.client(uri).get_run(run_id).info.artifact_uri
    except Exception:  # noqa: BLE001 - then it is not a local artifact store we can name
        return None
    parsed = urlparse(artifact_uri)
    if parsed.scheme in ("", "file"):
        return str(Path(unquote(parsed.path)).resolve())
    return None


def store_failure(err: BaseException, uri: str, run_id: str) -> str | None:
    """Why the record failed, if ``err`` is the tracking store failing rather than anything else, else None.

    Three cases: a ``RecordingFailed`` from the ``Recorder``; the tracking server not answering (a
    ``requests`` connection error or timeout, which MLflow wraps in ``MlflowException("API request to ...
    failed ...")`` after its own retries); an ``OSError`` on a path inside the run's local artifact folder.
    """
    import requests
    from mlflow.exceptions import MlflowException

    for e in _chain(err):
        if isinstance(e, RecordingFailed):
            return str(e)
    for e in _chain(err):
        if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)) or (
                isinstance(e, MlflowException) and str(e.message).startswith("API request to")):
            retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
            return (f"tracking store {uri} did not answer (after MLflow's {retries} retries with backoff, "
                    f"MLFLOW_HTTP_REQUEST_MAX_RETRIES): {e.__class__.__name__}")
    artifacts = None
    for e in _chain(err):
        if isinstance(e, OSError) and getattr(e, "filename", None):
            artifacts = artifacts or _artifact_dir(uri, run_id)
            if artifacts and str(Path(str(e.filename)).resolve()).startswith(artifacts):
                return f"artifact location {artifacts} of run {run_id} took no file ({e.__class__.__name__}: {e})"
    for e in _chain(err):
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            where = str(e.filename) if getattr(e, "filename", None) else _fullest(uri, run_id)
            return f"{where} took no file ({e.__class__.__name__}: [Errno {e.errno}] {os.strerror(e.errno)})"
    return None


def _fullest(uri: str, run_id: str) -> str:
    """The place a run writes to with the least free space, with that space (``ENOSPC`` carries no file name):
    the run's local artifact folder, its Ray Train storage, the temp folder, the feature cache."""
    import shutil
    import tempfile

    places = [_artifact_dir(uri, run_id), tempfile.gettempdir(), os.environ.get("FSIG_CACHE")]
    try:
        places.append(tracking.client(uri).get_run(run_id).data.tags.get("ray_storage_path"))
    except Exception:  # noqa: BLE001 - the store may be the problem; the other places still count
        pass
    free = {}
    for place in filter(None, places):
        path = Path(place)
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            free[str(Path(place))] = shutil.disk_usage(path).free
        except OSError:
            continue
    if not free:
        return "the disk"
    where = min(free, key=free.get)
    return f"{where} (the fullest place this run writes to: {free[where] // 1024} KiB free)"


class Recorder(UserCallback):
    """Writes each persisted checkpoint's records into MLflow run ``run_id`` (see the module docstring)."""

    def __init__(self, uri: str, run_id: str, after: int = 0):
        self.uri, self.run_id, self.after = uri, run_id, int(after)

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        try:
            fatal = next((m[FATAL] for m in metrics if m and m.get(FATAL)), None)
            if fatal:  # a deterministic failure the workers stopped on: the driver ends the run with it
                tracking.set_tags(self.uri, self.run_id, {FATAL: str(fatal)[:4000]})
            if checkpoint is None:
                return
            t0, before = time.perf_counter(), self.after
            with checkpoint.as_directory() as d:
                self.after = record_checkpoint_dir(self.uri, self.run_id, Path(d), self.after)
            if self.after > before:  # a checkpoint re-reported after a restart adds nothing, this included
                tracking.log_metric_rows(self.uri, self.run_id,
                                         [("recording_seconds", time.perf_counter() - t0, self.after)])
        except Exception as err:  # noqa: BLE001 - classified; anything else is re-raised as it is
            why = store_failure(err, self.uri, self.run_id)
            if why is None:
                raise
            # Stop the fit (``loop.fit`` lets no controller error be retried): training on would make checkpoints
            # that no record holds, and Ray Train deletes all but the last few.
            raise RecordingFailed(f"{why}; run {self.run_id} is recorded through step {self.after}") from None
