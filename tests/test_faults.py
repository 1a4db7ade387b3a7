"""Whole commands under faults: SIGKILLed drivers, a tracking server that goes away, an artifact store that
stops taking files, two commands at once. Each test runs the real CLI (``python -m orchestrator``) as a
separate process in its own session, with its own local Ray (``RAY_TMPDIR``), Ray Train storage
(``FSIG_STORAGE``) and MLflow store in the test's tmp dir; signals go to real process ids (the CLI's whole
tree: its process group plus every descendant found under ``/proc``). Tests wait on events in the record
(a metric's history, a run's status, a shard file), never on bare sleeps.

Run: ``python -u -m pytest -q -m faults tests/test_faults.py`` (the ``faults`` set, left out of the default run).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import tracking

REPO = Path(__file__).resolve().parents[1]
FIGR = ["--set", "width=8", "--set", "val_generate=72", "--set", "n_generate=40", "--set", "select_metric=last",
        "--set", "inner_steps=2", "--set", "adapt_steps=1"]
POLL_S = 0.25  # polling interval of an awaited event, not a timing assumption


# ------------------------------------------------------------------------------------------- helpers ----

def _descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid`` (read from /proc: Ray's raylet, GCS, workers, ...)."""
    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent_of[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent_of.items() if pp == p]
        found += kids
        frontier += kids
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """``sig`` to the command's whole tree: its session's process group and every descendant, then reap it."""
    victims = [proc.pid, *_descendants(proc.pid)]
    try:
        os.killpg(proc.pid, sig)  # started with start_new_session=True: its pgid is its pid
    except ProcessLookupError:
        pass
    for pid in victims:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    if sig == signal.SIGKILL:
        wait_for(lambda: not any(_alive(p) for p in victims), 60, "the killed tree to be gone")


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll ``predicate`` until it returns something truthy; fail if ``proc`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None and log.is_file() else ""
            raise AssertionError(f"the command ended (exit {proc.returncode}) before {what}:\n{tail}")
        time.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Env:
    """A test's private places: Ray temp dir (short: socket paths), Ray Train storage, working folder."""

    def __init__(self, tmp_path: Path, **extra: str):
        self.tmp = tmp_path
        self.ray_tmp = Path(f"/tmp/rf{os.getpid()}-{tmp_path.name[-12:]}")
        self.ray_tmp.mkdir(exist_ok=True)
        self.vars = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": str(self.ray_tmp),
                     "FSIG_STORAGE": str(tmp_path / "ray_results"), "RAY_USAGE_STATS_ENABLED": "0", **extra}
        self.vars.pop("RAY_ADDRESS", None)
        self.n = 0

    def start(self, args: list[str], **extra: str) -> tuple[subprocess.Popen, Path, Path]:
        """``python -m orchestrator ARGS`` in its own session; stdout and stderr to files (returned)."""
        self.n += 1
        out, err = self.tmp / f"cmd{self.n}.out", self.tmp / f"cmd{self.n}.err"
        proc = subprocess.Popen([sys.executable, "-u", "-m", "orchestrator", *args], cwd=self.tmp,
                                env={**self.vars, **extra}, stdout=out.open("w"), stderr=err.open("w"),
                                start_new_session=True)
        return proc, out, err

    def run(self, args: list[str], timeout: float = 2400, **extra: str) -> tuple[int, str, str]:
        proc, out, err = self.start(args, **extra)
        try:
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                kill_tree(proc)
        return proc.returncode, out.read_text(), err.read_text()

    def close(self) -> None:
        shutil.rmtree(self.ray_tmp, ignore_errors=True)




def runs_of(uri: str, experiment: str) -> list:
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id]) if exp else []


def recorded_step(uri: str, run_id: str) -> int:
    """The last step whose checkpoint the driver recorded (the marker metric ``meta_steps``)."""
    return max((int(m.step) for m in tracking.client(uri).get_metric_history(run_id, "meta_steps")), default=0)


def run_at_step(uri: str, experiment: str, step: int):
    """The experiment's (only) run once its record reaches ``step``, else None."""
    for run in runs_of(uri, experiment):
        if recorded_step(uri, run.info.run_id) >= step:
            return run
    return None


def steps_of(uri: str, run_id: str, metric: str) -> list[int]:
    return sorted(int(m.step) for m in tracking.client(uri).get_metric_history(run_id, metric))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------- 1. train killed, resumed ----

@pytest.mark.faults
def test_killed_train_resumes_to_every_step_once(env, tmp_path):
    """SIGKILL the whole ``train`` tree after its second recorded checkpoint, then ``train --resume RUN``:
    every step 1..N once in every loss history, each checkpoint's marker once, the run FINISHED."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    steps = 16
    proc, _, err = env.start(["train", "figr", "--tracking-uri", uri, "--experiment", "killed", *FIGR,
                              "--set", "eval_every=2", "--steps", str(steps)])
    try:
        run = wait_for(lambda: run_at_step(uri, "killed", 4), 1800, "the second recorded checkpoint", proc, err)
    finally:
        kill_tree(proc)
    run_id = run.info.run_id
    at_kill = recorded_step(uri, run_id)
    assert at_kill < steps, "the run finished before the kill: nothing was interrupted"
    assert tracking.get_run(uri, run_id).info.status == "RUNNING"  # nobody was left to close it

    code, out, stderr = env.run(["train", "--resume", run_id, "--tracking-uri", uri, "--json"])
    assert code == 0, stderr[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["run_id"] == run_id
    run = tracking.get_run(uri, run_id)
    assert run.info.status == "FINISHED" and "fid_domain" in run.data.metrics
    for metric in ("d_loss", "g_loss"):
        assert steps_of(uri, run_id, metric) == list(range(1, steps + 1)), metric
    assert steps_of(uri, run_id, "meta_steps") == list(range(2, steps + 1, 2))
    assert len(runs_of(uri, "killed")) == 1


# --------------------------------------------------------------------- 2. the tracking server goes away ----

class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, artifacts proxied), stoppable and restartable."""

    def __init__(self, tmp: Path):
        self.tmp, self.port, self.proc, self.n = tmp, free_port(), None, 0
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.n += 1
        log = (self.tmp / f"server{self.n}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.tmp / 'server.db'}",
             "--artifacts-destination", str(self.tmp / "server-artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],  # one process: uvicorn's supervisor kills busy workers
            cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._healthy, 600, f"mlflow server on port {self.port}", self.proc, self.tmp / f"server{self.n}.log")

    def _healthy(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill_tree(self.proc)
        self.proc = None


def break_store_mid_run(env, uri: str, experiment: str, steps: int, breaker, *, eval_every: int = 2,
                        break_at: int | None = None, no_traceback: bool = False, **environ: str):
    """Start a FIGR ``train`` of ``steps`` steps (a checkpoint every ``eval_every``) into ``uri``, call
    ``breaker(run)`` once the checkpoint of step ``break_at`` is recorded (default: the first, ``eval_every``), wait
    for the command to end, and check it ended as a store failure must: exit 2 with exactly one error line (and, with
    ``no_traceback``, no ``Traceback`` line anywhere in stderr). ``environ``: extra environment of the command. Returns (the run as first seen, the whole stderr, a
    list holding that one line)."""
    at = eval_every if break_at is None else break_at
    proc, _, err = env.start(["train", "figr", "--tracking-uri", uri, "--experiment", experiment, *FIGR,
                              "--set", f"eval_every={eval_every}", "--steps", str(steps)], **environ)
    try:
        run = wait_for(lambda: run_at_step(uri, experiment, at), 1800, f"the recorded step-{at} checkpoint", proc, err)
        breaker(run)
        proc.wait(timeout=2400)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    stderr = err.read_text()
    lines = error_lines(stderr)
    assert proc.returncode == 2 and len(lines) == 1, stderr[-3000:]
    if no_traceback:
        assert not [x for x in stderr.splitlines() if x.startswith("Traceback")], stderr[-3000:]
    return run, stderr, lines[0:1]


@pytest.fixture
def server(tmp_path):
    s = MlflowServer(tmp_path)
    s.start()
    yield s
    s.stop()


@pytest.mark.faults
def test_tracking_server_restarted_mid_run_keeps_a_complete_record(env, server):
    """The server is SIGKILLed after the second recorded checkpoint and started again on the same port: MLflow's
    bounded retries (with backoff) carry the records over the gap; the run ends FINISHED, each step once."""
    steps, exp = 16, "server-restart"
    proc, _, err = env.start(["train", "figr", "--tracking-uri", server.uri, "--experiment", exp, *FIGR,
                              "--set", "eval_every=2", "--steps", str(steps)],
                             MLFLOW_HTTP_REQUEST_MAX_RETRIES="8", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
    try:
        run = wait_for(lambda: run_at_step(server.uri, exp, 4), 1800, "the second recorded checkpoint", proc, err)
        at_stop = recorded_step(server.uri, run.info.run_id)
        server.stop()
        server.start()
        proc.wait(timeout=2400)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    assert at_stop < steps, "the run finished before the server stopped: nothing was interrupted"
    assert proc.returncode == 0, err.read_text()[-3000:]
    run = tracking.get_run(server.uri, run.info.run_id)
    assert run.info.status == "FINISHED" and "fid_domain" in run.data.metrics
    for metric in ("d_loss", "g_loss"):
        assert steps_of(server.uri, run.info.run_id, metric) == list(range(1, steps + 1)), metric
    assert steps_of(server.uri, run.info.run_id, "meta_steps") == list(range(2, steps + 1, 2))
    arts = {a.path for a in tracking.client(server.uri).list_artifacts(run.info.run_id, "checkpoint")}
    assert "checkpoint/model.pt" in arts


@pytest.mark.faults
def test_tracking_server_down_past_the_bound_fails_with_one_line_and_the_resume_finishes(env, server):
    """The server stays down past the (short, for the test) retry bound: exit 2 with one line naming the URI
    and the ``train --resume`` that finishes the run; with the server back, that command does."""
    import shlex

    steps, exp = 12, "server-down"
    bound = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    run, stderr, lines = break_store_mid_run(env, server.uri, exp, steps, lambda run: server.stop(), **bound)
    run_id = run.info.run_id
    assert server.uri in lines[0] and f"train --resume {run_id}" in lines[0], lines[0]
    assert stderr.rstrip().splitlines()[-1] == lines[0]  # the last thing the command says

    server.start()
    assert tracking.get_run(server.uri, run_id).info.status == "RUNNING"  # nobody could close it
    resume = shlex.split(lines[0].split("finish it with ")[1])
    assert resume[:3] == ["python", "-m", "orchestrator"]
    code, _, stderr = env.run([*resume[3:], "--json"])
    assert code == 0, stderr[-3000:]
    run = tracking.get_run(server.uri, run_id)
    assert run.info.status == "FINISHED" and "fid_domain" in run.data.metrics
    for metric in ("d_loss", "g_loss"):
        assert steps_of(server.uri, run_id, metric) == list(range(1, steps + 1)), metric
    assert steps_of(server.uri, run_id, "meta_steps") == list(range(2, steps + 1, 2))


# --------------------------------------------------------------- 3. the artifact location stops taking files ----

@pytest.mark.faults
def test_unwritable_artifact_location_fails_with_one_line_and_a_consistent_record(env, tmp_path):
    """After the first recorded checkpoint the run's artifact folder is replaced by a plain file (mode bits
    would not stop root): exit 2, one line naming the artifact location, the run FAILED (not RUNNING), and
    the steps it recorded are 1..k, each once."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    steps, exp = 12, "unwritable"

    def replace_artifacts_by_a_file(run) -> None:
        artifacts = tmp_path / "mlartifacts" / run.info.run_id / "artifacts"
        assert artifacts.is_dir(), run.info.artifact_uri
        artifacts.rename(artifacts.with_name("artifacts.moved"))
        artifacts.write_text("not a folder")

    run, _, lines = break_store_mid_run(env, uri, exp, steps, replace_artifacts_by_a_file)
    artifacts = tmp_path / "mlartifacts" / run.info.run_id / "artifacts"
    assert str(artifacts) in lines[0] and f"train --resume {run.info.run_id}" in lines[0], lines[0]
    run = tracking.get_run(uri, run.info.run_id)
    assert run.info.status == "FAILED"
    done = recorded_step(uri, run.info.run_id)
    assert 2 <= done < steps
    assert steps_of(uri, run.info.run_id, "d_loss") == list(range(1, done + 1))
    assert steps_of(uri, run.info.run_id, "meta_steps") == list(range(2, done + 1, 2))


# ------------------------------------------------------------------ 4. the sweep driver killed, twice ----

SPACE = """
metric: val_fid_domain
mode: min
params:
  inner_lr:  {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}
  gp_weight: {distribution: uniform, low: 1.0, high: 20.0}
fixed: {width: 8, eval_every: 2, val_generate: 72, n_generate: 40, adapt_steps: 1, inner_steps: 2}
"""


def _children(uri: str, parent_id: str) -> list:
    c = tracking.client(uri)
    return c.search_runs([c.get_run(parent_id).info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def _progress(uri: str, parent_id: str) -> set[tuple[str, int]]:
    """(child run, its last recorded step) of every child of the sweep."""
    return {(k.info.run_id, recorded_step(uri, k.info.run_id)) for k in _children(uri, parent_id)}


@pytest.mark.faults
def test_sweep_driver_killed_twice_resumes_to_exactly_its_trials(env, tmp_path):
    """SIGKILL the sweep driver's tree mid-trial, ``sweep --resume NAME``, SIGKILL that once it has recorded
    something new, resume again: exactly the planned child runs, each FINISHED once with every step once,
    none RUNNING, and the parent FINISHED with the best trial's configuration."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    trials, steps = 3, 4
    proc, out, err = env.start(["sweep", "figr", "--tracking-uri", uri, "--experiment", "sweep-kill", "--trials",
                                str(trials), "--concurrency", "2", "--scheduler", "none", "--steps", str(steps),
                                "--space", str(space)])
    try:
        name = wait_for(lambda: next((line.split(": ", 1)[1] for line in out.read_text().splitlines()
                                      if line.startswith("sweep name: ")), None), 1200, "the sweep's name", proc, err)
        parent = wait_for(lambda: next((r for r in runs_of(uri, "sweep-kill")
                                        if r.data.tags.get("sweep_name") == name), None), 300, "the parent run")
        parent_id = parent.info.run_id
        wait_for(lambda: any(s >= 2 for _, s in _progress(uri, parent_id)), 1800, "a trial's first checkpoint",
                 proc, err)
    finally:
        kill_tree(proc)
    seen = _progress(uri, parent_id)
    assert tracking.get_run(uri, parent_id).info.status == "RUNNING"  # the driver died: nobody closed it

    proc, _, err = env.start(["sweep", "figr", "--resume", name, "--tracking-uri", uri])
    try:
        wait_for(lambda: {p for p in _progress(uri, parent_id) if p[1] >= 2} - seen, 1800,
                 "something recorded by the resumed sweep", proc, err)
    finally:
        kill_tree(proc)

    code, stdout, stderr = env.run(["sweep", "figr", "--resume", name, "--tracking-uri", uri, "--json"])
    assert code == 0, stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["trials_completed"] == trials and summary["parent_run_id"] == parent_id
    kids = _children(uri, parent_id)
    assert len(kids) == trials and len({k.data.tags["tune_trial_id"] for k in kids}) == trials
    assert all(k.info.status == "FINISHED" for k in kids), [k.info.status for k in kids]
    for k in kids:
        assert steps_of(uri, k.info.run_id, "d_loss") == list(range(1, steps + 1)), k.info.run_id
        assert steps_of(uri, k.info.run_id, "meta_steps") == [2, 4], k.info.run_id
    parent = tracking.get_run(uri, parent_id)
    assert parent.info.status == "FINISHED"
    c = tracking.client(uri)
    best = {k.info.run_id: min(m.value for m in c.get_metric_history(k.info.run_id, "val_fid_domain")) for k in kids}
    best_id = min(best, key=best.get)
    assert parent.data.tags["best_run_id"] == best_id == summary["best_run_id"]
    best_kid = next(k for k in kids if k.info.run_id == best_id)
    for key in ("inner_lr", "gp_weight"):
        recorded = parent.data.params.get(f"best.{key}", parent.data.tags.get(f"best.{key}"))
        assert recorded == best_kid.data.tags[f"searched.{key}"], key


# ------------------------------------------------------------------- 5. pregenerate killed, restarted ----

PREGEN = ["--dataset", "omniglot", "--classes", "novel", "--limit", "6", "--variants", "3", "--steps", "60",
          "--set", "lambda_perc=0", "--actors", "2", "--no-progress"]


@pytest.mark.faults
def test_pregenerate_killed_and_restarted_writes_each_row_once(env, tmp_path, data_root):
    """SIGKILL the whole ``pregenerate`` tree once a shard is written, run the same command again: exactly one
    row per (image, variant), no temporary file left in the store, and no MLflow run left RUNNING."""
    from methods.finetunegan import save_tiny_biggan
    from orchestrator import store

    biggan = save_tiny_biggan(tmp_path / "biggan")
    out, uri = tmp_path / "variants", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["pregenerate", *PREGEN, "--data-root", str(data_root / "omniglot"), "--biggan", str(biggan),
            "--out", str(out), "--tracking-uri", uri]
    proc, _, err = env.start(args)
    try:
        wait_for(lambda: store.done_ids(out), 1800, "the first shard", proc, err)
    finally:
        kill_tree(proc)
    first = store.done_ids(out)
    assert 1 <= len(first) < 6, "everything was done before the kill: nothing was interrupted"

    code, _, stderr = env.run(args)
    assert code == 0, stderr[-3000:]
    table = store.read_store(out)
    pairs = list(zip(table.column("image_id").to_pylist(), table.column("variant").to_pylist()))
    assert len(pairs) == len(set(pairs)) == 6 * 3
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("part-")) == [store.MANIFEST]
    assert all(p.suffix == ".parquet" for p in out.glob("part-*"))
    runs = runs_of(uri, tracking.DEFAULT_EXPERIMENT)
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
    restarted = next(r for r in runs if r.info.status == "FINISHED")
    assert restarted.data.metrics["images_skipped"] == len(first)


# ----------------------------------------------------------------------- 6. two commands at once ----

@pytest.mark.faults
def test_two_trains_at_once_each_with_its_own_local_ray_log_no_errors(env, tmp_path):
    """Two ``train`` commands started together on one machine (one store, one Ray temp root), each starting
    its own local Ray: both succeed, and neither's output carries Ray's "Found multiple active Ray
    instances" (Ray Train's placement-group cleaner looking for "the" local Ray) or any other error of that
    cleaner. (Tracebacks Ray logs as "safe to ignore" on an overloaded machine are not looked at.)"""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmds = [env.start(["train", "figr", "--tracking-uri", uri, "--experiment", "together", *FIGR,
                       "--set", "eval_every=2", "--steps", "4", "--seed", str(seed), "--json"]) for seed in (0, 1)]
    try:
        for proc, _, _ in cmds:
            proc.wait(timeout=2400)
    finally:
        for proc, _, _ in cmds:
            if proc.poll() is None:
                kill_tree(proc)
    for proc, out, err in cmds:
        stderr = err.read_text()
        assert proc.returncode == 0, stderr[-3000:]
        cleaner = [line for line in stderr.splitlines() if "PlacementGroupCleaner" in line]
        assert "Found multiple active Ray instances" not in stderr and not any("Error" in x for x in cleaner), \
            "\n".join(cleaner[-20:])
        run = tracking.get_run(uri, json.loads(out.read_text().strip().splitlines()[-1])["run_id"])
        assert run.info.status == "FINISHED"
    assert len(runs_of(uri, "together")) == 2


# ------------------------------------------------------------ what counts as "the store failed" (fast) ----

def test_store_failure_names_the_store_and_nothing_else(tmp_path, monkeypatch):
    """The classification behind the one-line store errors, on real failures: an HTTP tracking URI nobody
    listens on, an artifact folder that is a file, Ray's wrapping of the Recorder's error; anything else is
    not the store's fault (None: it propagates as it is)."""
    from mlflow.exceptions import MlflowException

    from orchestrator.recorder import RecordingFailed, store_failure

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(MlflowException) as err:
        tracking.client(down).get_experiment_by_name("anything")
    why = store_failure(err.value, down, "r")
    assert why and why.startswith(f"tracking store {down} did not answer")

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.start_run(uri, "e", "n", {"a": 1}, {})
    artifacts = tmp_path / "mlartifacts" / run_id / "artifacts"
    artifacts.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_text("a file where the folder should be")
    with pytest.raises(OSError) as err:
        tracking.log_dict(uri, run_id, {"x": 1}, "sub/x.json")
    why = store_failure(err.value, uri, run_id)
    assert why and why.startswith(f"artifact location {artifacts} of run {run_id} took no file")

    class Wrapped(Exception):  # what Ray Train's ControllerError looks like from the driver
        def __init__(self, inner):
            super().__init__(str(inner))
            self.controller_failure = inner

    assert store_failure(Wrapped(RecordingFailed("the store said no")), uri, run_id) == "the store said no"
    assert store_failure(ValueError("a bug"), uri, run_id) is None
    assert store_failure(FileNotFoundError(2, "no such file", str(tmp_path / "data.png")), uri, run_id) is None
