"""MLflow bookkeeping through ``MlflowClient`` with explicit run ids.

Explicit ids (rather than mlflow's global "active run") let the driver create a run, the
rank-0 Ray Train worker log its per-step losses into it from another process, and a
resumed run continue the same record.
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
REPO = Path(__file__).resolve().parents[1]


def default_tracking_uri() -> str:
    """A SQLite file in the working directory (MLflow 3's file store is in maintenance mode)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(uri: str, name: str) -> str:
    """Get or create the experiment; a SQLite store keeps its artifacts in ``mlartifacts/`` beside the file."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return c.create_experiment(name, artifact_location=location)


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
    from mlflow.entities import Param, RunTag

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


def log_dict(uri: str, run_id: str, data: dict, path: str) -> None:
    client(uri).log_dict(run_id, data, path)


def log_file(uri: str, run_id: str, path: Path, artifact_dir: str | None = None) -> None:
    client(uri).log_artifact(run_id, str(path), artifact_dir)


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    c = client(uri)
    for k, v in tags.items():
        c.set_tag(run_id, k, v)


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


def download(uri: str, run_id: str, path: str) -> Path:
    """Fetch an artifact of a run into a temp dir."""
    from mlflow.exceptions import MlflowException

    dst = Path(tempfile.mkdtemp(prefix="fsig-artifact-"))
    try:
        return Path(client(uri).download_artifacts(run_id, path, str(dst)))
    except (MlflowException, OSError):
        raise UserError(f"run {run_id} has no artifact {path!r}: it is not a finished train run; "
                        f"pick a run whose train completed") from None


def load_json_artifact(uri: str, run_id: str, path: str) -> dict:
    return json.loads(download(uri, run_id, path).read_text())
