"""Shared fixtures: where the real datasets live, and a local Ray that is shut down after."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# One setting, defaulting to the checkout's sibling ../shared/datasets (CI's clone finds it too).
DATA_ROOT = Path(os.environ.get("FSIG_DATASETS", REPO.parent / "shared" / "datasets")).resolve()

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# As orchestrator.lifecycle.ensure_ray does: Ray's default worker niceness (15) starves the workers on a busy machine.
os.environ.setdefault("RAY_worker_niceness", "0")
# MLflow 3.17's `mlflow server`/`mlflow ui` start a job runner with ~7 huey consumer processes by default (GenAI
# jobs the tests never use): on 2 cores they compete with the runs under test. Servers the tests start inherit this.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session", autouse=True)
def _private_state(tmp_path_factory):
    """Feature caches and Ray Train storage in the test's tmp dir, never the user's."""
    os.environ["FSIG_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["FSIG_STORAGE"] = str(tmp_path_factory.mktemp("ray_results"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    assert DATA_ROOT.is_dir(), f"datasets not found at {DATA_ROOT}; set FSIG_DATASETS"
    return DATA_ROOT


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One real local Ray for the session (Ray's own docs recommend sharing it across tests)."""
    import ray

    tmp = Path("/tmp") / f"rt{os.getpid()}"  # Ray wants a short temp path (socket names)
    tmp.mkdir(exist_ok=True)
    os.environ["RAY_TMPDIR"] = str(tmp)
    from orchestrator.lifecycle import init_ray_retrying

    init_ray_retrying(lambda: ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp), log_to_driver=False))
    yield ray
    ray.shutdown()


@pytest.fixture
def env(tmp_path):
    """A command runner for whole ``python -m orchestrator`` processes with their own Ray temp dir
    (``tests.test_faults.Env``), shared by the fault and preemption tests."""
    from tests.test_faults import Env

    e = Env(tmp_path)
    yield e
    e.close()


@pytest.fixture(scope="module")
def digits():
    """The bundled digits at 32x32 grayscale and their seed-0 split: ``(ds, split)`` (one per test module)."""
    from orchestrator.data import load_dataset, make_split

    ds = load_dataset("digits", image_size=32, channels=1)
    return ds, make_split(ds, seed=0)


@pytest.fixture(scope="module")
def dom(digits, tmp_path_factory):
    """The domain feature network trained on ``digits``' base classes (its weights under a module temp folder)."""
    from orchestrator.evaluation import domain_features

    ds, split = digits
    return domain_features(ds, split, tmp_path_factory.mktemp("feat"))
