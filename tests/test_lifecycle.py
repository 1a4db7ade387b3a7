"""The run lifecycle's record under faults: every step exactly once, nothing written by a worker.

Real components only: the session's local Ray, MLflow on SQLite in the test's tmp dir, real SIGKILLs sent
to real Ray Train worker pids (read from the run's ``worker_nodes`` tag, which the driver records from the
workers' own report). Tests wait on events (a recorded checkpoint, a finished thread), never on sleeps.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator import pipeline, tracking
from orchestrator.cli import _dispatch, main, parser

REPO = Path(__file__).resolve().parents[1]
FIGR = ["--set", "width=8", "--set", "val_generate=72", "--set", "n_generate=40", "--set", "eval_every=2",
        "--set", "select_metric=last", "--set", "inner_steps=2", "--set", "adapt_steps=1"]
PROTONET = ["--set", "width=8", "--set", "val_episodes=4", "--set", "test_episodes=4", "--set", "eval_every=2",
            "--set", "queries=2", "--set", "select_metric=last", "--set", "n_way=2", "--set", "n_val=2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, ray_local):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _wait(predicate, timeout: float, what: str, thread: threading.Thread | None = None, box: dict | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if thread is not None and not thread.is_alive():
            raise AssertionError(f"the command ended before {what}: {box.get('error') or box.get('out')}")
        value = predicate()
        if value:
            return value
        time.sleep(0.2)  # polling interval of the event, not a timing assumption
    raise AssertionError(f"timed out waiting for {what}")


def _run_in_thread(argv: list[str]) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target():
        try:
            box["out"] = _dispatch(parser().parse_args(argv))
        except BaseException as err:  # noqa: BLE001 - surfaced by the test
            box["error"] = err

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def _runs(uri: str, experiment: str) -> list:
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id]) if exp else []


def _checkpointed_run(uri: str, experiment: str, role: str | None = None):
    """The run (of the experiment; a sweep trial when ``role``) once its first checkpoint is recorded."""
    for run in _runs(uri, experiment):
        if role and run.data.tags.get("sweep_role") != role:
            continue
        if "worker_nodes" in run.data.tags and tracking.client(uri).get_metric_history(run.info.run_id, "meta_steps"):
            return run
    return None


def _pids(run) -> dict[int, int]:
    return {int(r): int(pid) for r, _, pid in (x.split(":") for x in run.data.tags["worker_nodes"].split(","))}


def _kill_worker_then_finish(uri: str, experiment: str, argv: list[str], rank: int, role: str | None = None):
    """Start ``argv``, SIGKILL worker ``rank`` once the first checkpoint is recorded, wait for the command."""
    thread, box = _run_in_thread(argv)
    run = _wait(lambda: _checkpointed_run(uri, experiment, role), 300, "the first recorded checkpoint", thread, box)
    victim = _pids(run)[rank]
    os.kill(victim, signal.SIGKILL)
    thread.join(600)
    assert not thread.is_alive(), "the command did not finish"
    if "error" in box:
        raise box["error"]
    run = tracking.get_run(uri, run.info.run_id)
    assert victim not in _pids(run).values(), "the worker group was not restarted"
    return box.get("out"), run


def _assert_each_step_once(uri: str, run_id: str, metric: str, steps: int) -> None:
    history = [m.step for m in tracking.client(uri).get_metric_history(run_id, metric)]
    assert sorted(history) == list(range(1, steps + 1)), history


@pytest.mark.faults
def test_killed_worker_restarts_and_every_step_is_recorded_once(store):
    """SIGKILL a Ray Train worker of a 2-worker run after its first checkpoint: FailureConfig restarts the
    group, each step 1..budget is in the history once, and the parameters equal an uninterrupted run's."""
    common = ["train", "figr", "--tracking-uri", store, *FIGR, "--steps", "10", "--workers", "2"]
    out, run = _kill_worker_then_finish(store, "kill-figr", [*common, "--experiment", "kill-figr"], rank=1)
    assert run.info.status == "FINISHED"
    for metric in ("d_loss", "g_loss"):
        _assert_each_step_once(store, run.info.run_id, metric, 10)
    assert sorted(m.step for m in tracking.client(store).get_metric_history(run.info.run_id, "meta_steps")) == \
        [2, 4, 6, 8, 10]
    clean = _dispatch(parser().parse_args([*common, "--experiment", "clean-figr"]))
    a = pipeline.load_run(store, out["run_id"])[3]
    b = pipeline.load_run(store, clean["run_id"])[3]
    assert a["step"] == b["step"] == 10
    from tests.test_train import assert_same_state

    assert_same_state(a["state"], b["state"], atol=0)  # restored from a checkpoint: bit-identical


@pytest.mark.faults
def test_killed_classifier_worker_records_every_step_once(store):
    argv = ["train", "protonet", "--tracking-uri", store, *PROTONET, "--steps", "10", "--experiment", "kill-proto"]
    _, run = _kill_worker_then_finish(store, "kill-proto", argv, rank=0)
    assert run.info.status == "FINISHED" and 0 <= run.data.metrics["accuracy"] <= 1
    _assert_each_step_once(store, run.info.run_id, "loss", 10)


@pytest.mark.faults
def test_killed_sweep_trial_worker_records_every_step_once(store, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("metric: val_fid_domain\nmode: min\nparams:\n  gp_weight: {distribution: uniform, low: 5.0, "
                     "high: 15.0}\n")
    argv = ["sweep", "figr", "--tracking-uri", store, "--experiment", "kill-sweep", "--trials", "1",
            "--scheduler", "none", "--steps", "10", "--space", str(space), *FIGR]
    out, run = _kill_worker_then_finish(store, "kill-sweep", argv, rank=0, role="trial")
    assert out["trials_completed"] == 1 and run.info.status == "FINISHED"
    _assert_each_step_once(store, run.info.run_id, "d_loss", 10)


@pytest.mark.faults
def test_workers_never_write_to_the_tracking_store(tmp_path):
    """The whole process tree (Ray's workers included) sees an unreachable default tracking URI; only the
    explicit --tracking-uri is real. The run's record is whole, so nothing on a worker needed the store."""
    ray_tmp = Path(f"/tmp/rw{os.getpid()}")  # Ray's socket paths must stay short
    ray_tmp.mkdir(exist_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "RAY_TMPDIR": str(ray_tmp),
           "FSIG_STORAGE": str(tmp_path / "rr"), "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "train", "figr", "--tracking-uri", uri, *FIGR,
                           "--steps", "4", "--workers", "2", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    run = tracking.get_run(uri, out["run_id"])
    assert run.info.status == "FINISHED" and "fid_domain" in run.data.metrics
    _assert_each_step_once(uri, out["run_id"], "d_loss", 4)


def test_a_worker_cannot_open_the_tracking_store(monkeypatch, tmp_path):
    from orchestrator.settings import WORKER_ENV

    monkeypatch.setenv(WORKER_ENV, "1")
    with pytest.raises(RuntimeError, match="workers report, the driver records"):
        tracking.client(f"sqlite:///{tmp_path / 'x.db'}")


def test_sweep_refuses_bad_input_before_recording(store, capsys, tmp_path):
    before = len(_runs(store, "bad-sweep"))
    capsys.readouterr()  # MLflow's own log lines from opening the store above
    assert main(["sweep", "protonet", "--set", "n_way=abc", "--tracking-uri", store, "--experiment", "bad-sweep"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "n_way=abc" in err[0] and "Traceback" not in err[0]
    empty = tmp_path / "store"
    empty.mkdir()
    assert main(["sweep", "metairnet", "--set", f"generated={empty}", "--set", "n_way=2", "--set", "n_val=2",
                 "--tracking-uri", store,
                 "--experiment", "bad-sweep"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pregenerate" in err[0]
    assert len(_runs(store, "bad-sweep")) == before == 0


def test_diverged_training_ends_the_run_with_one_line(store, capsys):
    """A non-finite loss is deterministic: the workers report it and return (FailureConfig never retries it),
    the command prints one line, exit 2, and the run is FAILED with no step recorded after the divergence."""
    code = main(["train", "figr", "--tracking-uri", store, *FIGR, "--steps", "4", "--set", "inner_lr=1e30",
                 "--experiment", "diverge", "--max-failures", "3"])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1 and "diverged" in err[0]
    (run,) = _runs(store, "diverge")
    assert run.info.status == "FAILED"
    assert not tracking.client(store).get_metric_history(run.info.run_id, "meta_steps")
