"""MLflow bookkeeping through ``MlflowClient`` with explicit run ids.

Explicit ids (rather than mlflow's global "active run") let the driver create a run, the Ray Train
controller's ``Recorder`` log the workers' reports into it from another process, and a resumed run
continue the same record. Ray Train workers never write here (``client`` refuses inside one).

A new SQLite store is created once, under a file lock beside it: MLflow's schema migration is not
safe when several processes make their first write to a new file at once. HTTP tracking servers are
retried by MLflow's own client (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``_BACKOFF_FACTOR``; bounded
defaults set here unless the user set them).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError

DEFAULT_EXPERIMENT = "fewshot-generation"
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr readable
# A tracking server that is down: MLflow's client retries with exponential backoff (1, 2, 4, 8, 16, 32 s,
# about a minute in all) before the command gives up with one line naming the URI and the --resume.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "6")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
_READY: set[str] = set()
REPO = Path(__file__).resolve().parents[1]


def default_tracking_uri() -> str:
    """A SQLite file in the working directory (MLflow 3's file store is in maintenance mode)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def client(uri: str):
    """An ``MlflowClient`` for ``uri``; a new SQLite store is initialised once, under a file lock.

    Raises ``RuntimeError`` inside a Ray Train worker (the record is made on the driver's node only).
    """
    from mlflow.tracking import MlflowClient

    from orchestrator.settings import WORKER_ENV

    if os.environ.get(WORKER_ENV) == "1":
        raise RuntimeError("a Ray Train worker tried to write to the tracking store; workers report, the driver records")
    if uri not in _READY and uri.startswith("sqlite:///"):
        _init_sqlite(uri)
    return MlflowClient(tracking_uri=uri)


def _init_sqlite(uri: str) -> None:
    """Create or migrate the SQLite store under ``<db>.lock`` (filelock, a Ray dependency), once per process."""
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    db = Path(uri[len("sqlite:///"):])
    if not db.parent.is_dir():
        raise UserError(f"tracking store {uri}: folder {db.parent} does not exist; create it or pass another "
                        f"--tracking-uri")
    with FileLock(str(db) + ".lock", timeout=300):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # the store is built (or migrated) here
    _READY.add(uri)


# MLflow 3's UI opens an experiment on its GenAI "Overview" (traces) unless the experiment says it holds model
# training runs; with this tag it opens on the runs table (measured with MLflow 3.17 in headless Chromium).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(uri: str, name: str) -> str:
    """Get or create the experiment (tagged ``mlflow.experimentKind=custom_model_development``, also when an
    existing one lacks it, so ``mlflow ui`` opens on its runs); a SQLite store keeps its artifacts in
    ``mlartifacts/`` beside the file."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        for k, v in EXPERIMENT_KIND.items():
            if exp.tags.get(k) is None:
                c.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return c.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
        if sha.returncode == 0:
            return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def versions() -> dict[str, str]:
    import mlflow
    import ray
    import torch
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "ray": ray.__version__, "mlflow": mlflow.__version__}


def start_run(uri: str, experiment: str, name: str, config: dict[str, Any], tags: dict[str, str],
              parent_run_id: str | None = None) -> str:
    """Create a run holding the resolved config as params and the code version as tags."""
    from mlflow.entities import Param

    c = client(uri)
    all_tags = {"git_commit": git_commit(), "mlflow.source.git.commit": git_commit(), **tags}
    all_tags.update({f"version.{k}": v for k, v in versions().items()})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(experiment_id(uri, experiment), run_name=name, tags=all_tags)
    params = [Param(k, str(v)) for k, v in sorted(config.items())]
    for i in range(0, len(params), 100):
        c.log_batch(run.info.run_id, params=params[i:i + 100])
    return run.info.run_id


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
    if batch:
        client(uri).log_batch(run_id, metrics=batch)


def log_metric_rows(uri: str, run_id: str, rows: list[tuple[str, float, int]]) -> None:
    """Log ``(name, value, step)`` rows in batches of MLflow's limit (1,000 metrics a call)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, int(s)) for k, v, s in rows]
    c = client(uri)
    for i in range(0, len(batch), 1000):
        c.log_batch(run_id, metrics=batch[i:i + 1000])


def log_dict(uri: str, run_id: str, data: dict, path: str) -> None:
    client(uri).log_dict(run_id, data, path)


def log_file(uri: str, run_id: str, path: Path, artifact_dir: str | None = None) -> None:
    client(uri).log_artifact(run_id, str(path), artifact_dir)


def log_step_image(uri: str, run_id: str, path: Path, step: int) -> None:
    """A PNG as an MLflow image at ``step`` (``MlflowClient.log_image(key=..., step=...)``: the run page shows
    each key with a step slider). The key is the file name without ``_stepNNNNNN`` and the extension, so
    ``val_samples_step000010.png`` is key ``val_samples`` at the given step."""
    import re

    from PIL import Image

    key = re.sub(r"_step\d+$", "", Path(path).stem)
    with Image.open(path) as img:
        client(uri).log_image(run_id, img.copy(), key=key, step=int(step))


NOTE_TAG = "mlflow.note.content"  # the run's Description in MLflow's UI (markdown)
# The protocol's headline metrics and their controls (orchestrator.evaluation.protocol), in the order a note shows them.
NOTE_HEADLINES = ("class_hit", "fid_domain", "fid_inception", "kid_domain", "kid_inception", "diversity", "accuracy")
NOTE_CONTROLS = ("_unadapted", "_scratch", "_shots", "_augmented", "_real")
NOTE_BUDGET = ("meta_steps", "train_seconds", "tasks_seen", "images_seen")


def run_note(tags: dict[str, str], metrics: dict[str, float], *, title: str = "", lines: tuple[str, ...] = ()) -> str:
    """A run's description as markdown: method, dataset, budget, each headline metric beside its controls (the
    untrained/unadapted, scratch, shots and real-image yardsticks the protocol scores on the same classes), and
    the command line. ``tags``: the run's tags (method, dataset, split_seed, seed, eval_seed, command ...);
    ``metrics``: its latest metric values. Numbers are shown side by side; no difference is claimed here."""
    def fmt(v: float) -> str:
        return f"{v:.4g}" if isinstance(v, (int, float)) else str(v)

    out = [title or f"**{tags.get('method', '?')}** on **{tags.get('dataset', '?')}** (split seed "
                     f"{tags.get('split_seed', '?')}, seed {tags.get('seed', '?')}, eval seed {tags.get('eval_seed', '?')})"]
    budget = [f"{k} {fmt(metrics[k])}" for k in NOTE_BUDGET if k in metrics]
    if budget:
        out.append("budget: " + ", ".join(budget))
    if tags.get("evaluates"):
        out.append(f"re-evaluation of run {tags['evaluates']} (its selected checkpoint) with eval seed "
                   f"{tags.get('eval_seed', '?')}")
    searched = {k[len("searched."):]: v for k, v in sorted(tags.items()) if k.startswith("searched.")}
    if searched:
        out.append("searched values: " + ", ".join(f"{k}={v}" for k, v in searched.items()))
    out += list(lines)
    rows = []
    for name in NOTE_HEADLINES:
        if name not in metrics:
            continue
        controls = [f"{c.strip('_')} {fmt(metrics[name + c])}" for c in NOTE_CONTROLS if name + c in metrics]
        rows.append(f"- {name} {fmt(metrics[name])}" + (f" (controls: {', '.join(controls)})" if controls else ""))
    if rows:
        out.append("novel-class evaluation (one eval seed; values side by side, no difference claimed):\n" + "\n".join(rows))
    if tags.get("command"):
        out.append(f"command: `{tags['command']}`")
    return "\n\n".join(out)


def set_note(uri: str, run_id: str, text: str) -> None:
    """Set the run's description (``mlflow.note.content``, shown on the run page and as a runs-table column)."""
    client(uri).set_tag(run_id, NOTE_TAG, text[:5000])


def describe_run(uri: str, run_id: str, *, title: str = "", lines: tuple[str, ...] = ()) -> None:
    """``set_note`` with ``run_note`` of the run's current tags and latest metrics."""
    run = client(uri).get_run(run_id)
    set_note(uri, run_id, run_note(run.data.tags, run.data.metrics, title=title, lines=lines))


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    c = client(uri)
    for k, v in tags.items():
        c.set_tag(run_id, k, v)


def log_dataset(uri: str, run_id: str, *, name: str, root: str | None, digest: str, profile: dict[str, Any],
                context: str) -> None:
    """Link the dataset a run read to it with MLflow's Dataset API (``MlflowClient.log_inputs``), in ``context``
    (``"training"`` or ``"evaluation"``), so the run page and the runs table show it.

    Only metadata travels (MLflow's ``MetaDataset``; the images stay where they are): ``name`` (e.g.
    ``digits/base``), the source (``root``, an absolute folder, or the loader of a bundled dataset when
    ``root`` is None), ``digest`` (at most 36 characters, MLflow's limit; the caller hashes the images) and
    ``profile`` (split seed, image size, classes, images ... as JSON). Logging the same dataset in the same
    context twice (a resumed run) leaves one input.
    """
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    class _ProfiledMetaDataset(MetaDataset):
        """MetaDataset with a profile (MLflow's MetaDataset takes none; the UI shows the profile as the
        dataset's summary)."""

        @property
        def profile(self) -> dict[str, Any]:
            return profile

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(profile, sort_keys=True)}

    source = resolve_dataset_source(root) if root else CodeDatasetSource({"loader": str(profile.get("loader", name))})
    ds = _ProfiledMetaDataset(source=source, name=name, digest=digest[:36])
    client(uri).log_inputs(run_id, [DatasetInput(ds._to_mlflow_entity(), [InputTag("mlflow.data.context", context)])])


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status)


def get_run(uri: str, run_id: str):
    """Fetch a run or fail with a user error that says where to look for valid ids."""
    from mlflow.exceptions import MlflowException

    try:
        return client(uri).get_run(run_id)
    except MlflowException:
        raise UserError(f"run {run_id!r} not found in {uri}: pass a run id from the MLflow UI "
                        f"(mlflow ui --backend-store-uri {uri}) or the --json output of train, "
                        f"and the same --tracking-uri") from None


def download(uri: str, run_id: str, path: str, dst: str | Path) -> Path:
    """Fetch artifact ``path`` of a run into folder ``dst`` (the caller owns and removes it)."""
    from mlflow.exceptions import MlflowException

    try:
        return Path(client(uri).download_artifacts(run_id, path, str(dst)))
    except (MlflowException, OSError):
        raise UserError(f"run {run_id} has no artifact {path!r}: it is not a finished train run; "
                        f"pick a run whose train completed") from None


def load_json_artifact(uri: str, run_id: str, path: str) -> dict:
    """A JSON artifact of a run, read through a temporary folder that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="fsig-artifact-") as tmp:
        return json.loads(download(uri, run_id, path, tmp).read_text())
