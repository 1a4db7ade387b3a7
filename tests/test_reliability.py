"""Reliability on real components: a planted pickle is refused and never run; several commands creating one
new SQLite store at once leave it whole; evaluate and generate leave no temporary folders; servers the
product starts listen on 127.0.0.1.

Each command runs as a real process (``python -m orchestrator`` or ``cli.main`` in a fresh interpreter) so
exit statuses and stderr are the user's. The concurrent-store rounds are in the ``faults`` set
(``python -m pytest -q -m faults``, which ``.ci/run`` also runs). Nothing here sleeps: processes are waited for, and the concurrent
start is an explicit go signal sent once every process has said it is ready.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from orchestrator.cli import main
from tests.conftest import REPO
from tests.test_bad_input import FAST, snapshot

EXPERIMENT = "reliability"


def env_for(tmpdir: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return env


def cli(*argv: str, tmpdir: Path | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *argv], capture_output=True, text=True,
                          env=env_for(tmpdir), cwd=cwd or REPO, timeout=600)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_local):
    """One finished figr run in a fresh store, and four real images of a digit for generate."""
    from mlflow.tracking import MlflowClient
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("reliability")
    db = root / "store" / "mlflow.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    assert main(["train", "figr", "--steps", "2", *FAST, "--tracking-uri", uri, "--experiment", EXPERIMENT]) == 0
    c = MlflowClient(uri)
    (run,) = c.search_runs([c.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert run.info.status == "FINISHED"
    digits = load_digits()
    images = []
    for i, img in enumerate(digits.images[digits.target == 7][:4]):
        p = root / f"seven{i}.png"
        Image.fromarray((img * 255 / 16).astype("uint8")).save(p)
        images.append(str(p))
    return type("Trained", (), {"uri": uri, "db": db, "run": run.info.run_id, "images": images, "root": root})


# ------------------------------------------------------------------------------------ security


class Payload:
    """Unpickling this runs ``touch MARKER`` (what an attacker's file in a shared artifact store would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def payload_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint-shaped file (``torch.save``, as ``model.pt`` is written) whose state holds the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": {"w": Payload(marker)}, "step": 2, "elapsed_s": 0.0}, path)
    return path


def clone_as_finished(uri: str, run_id: str, name: str) -> tuple[str, Path]:
    """A second finished run with the trained run's config, split and checkpoint; returns it and its model.pt."""
    from mlflow.tracking import MlflowClient

    from orchestrator import tracking

    c = MlflowClient(uri)
    src = c.get_run(run_id)
    tags = {k: v for k, v in src.data.tags.items() if not k.startswith("mlflow.")}
    new = c.create_run(src.info.experiment_id, run_name=name, tags=tags).info.run_id
    for artifact in ("config.json", "split.json"):
        c.log_dict(new, tracking.load_json_artifact(uri, run_id, artifact), artifact)
    with tempfile.TemporaryDirectory() as tmp:
        c.log_artifact(new, c.download_artifacts(run_id, "checkpoint/model.pt", tmp), "checkpoint")
    c.set_terminated(new, "FINISHED")
    artifact_dir = Path(c.get_run(new).info.artifact_uri.removeprefix("file://"))
    model = artifact_dir / "checkpoint" / "model.pt"
    assert model.is_file()
    return new, model


def test_the_payload_is_live_when_loaded_unsafely(tmp_path):
    """The test's own control: the same file loaded with weights_only=False does run the payload."""
    marker = tmp_path / "ran"
    path = payload_checkpoint(tmp_path / "model.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_planted_pickle_in_a_finished_run_is_refused_and_never_run(trained, tmp_path):
    run, model = clone_as_finished(trained.uri, trained.run, "planted")
    marker = tmp_path / "payload-ran"
    payload_checkpoint(model, marker)  # overwrite the run's model.pt in mlartifacts
    before = snapshot(trained)
    out = tmp_path / "grid.png"
    for argv in (["evaluate", run], ["generate", run, "--images", *trained.images, "--out", str(out)]):
        proc = cli(*argv, "--tracking-uri", trained.uri)
        assert proc.returncode == 2, proc.stderr
        line = one_error_line(proc)
        assert "model.pt" in line and "refused to load" in line and "re-train" in line, line
        assert not marker.exists(), f"{argv[0]} ran the payload"
    assert not out.exists()
    assert snapshot(trained) == before  # no evaluation child run, no artifact


def test_a_raw_pickle_checkpoint_is_refused_too(tmp_path):
    """Not torch's zip format: a plain pickle stream (torch.load's legacy path) is refused the same way."""
    from orchestrator.checkpoints import load_checkpoint
    from orchestrator.errors import UserError

    marker = tmp_path / "ran"
    (tmp_path / "model.pt").write_bytes(pickle.dumps({"state": Payload(marker), "step": 1}))
    with pytest.raises(UserError, match="refused to load"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


# ------------------------------------------------------------------- concurrent store creation

# Imports first (8-10 s here), then "ready"; the first store access only after the go line, so the four
# processes race MLflow's schema creation for real instead of being spread out by their import times.
RACER = r"""
import sys
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
import orchestrator.pipeline, orchestrator.sweep, orchestrator.tracking  # noqa: F401, E401
from orchestrator.cli import main
print("ready", flush=True)
sys.stdin.readline()
raise SystemExit(main(sys.argv[1:]))
"""


def schema_of(db: Path) -> tuple:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = tuple(r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"))
        versions = tuple(r[0] for r in con.execute("SELECT version_num FROM alembic_version"))
    finally:
        con.close()
    return tables, versions


@pytest.fixture(scope="module")
def reference_schema(tmp_path_factory):
    """What one command alone makes of a new store."""
    d = tmp_path_factory.mktemp("alone")
    proc = cli("evaluate", "no-such-run", "--tracking-uri", f"sqlite:///{d / 'mlflow.db'}")
    assert proc.returncode == 2 and "not found" in one_error_line(proc)
    tables, versions = schema_of(d / "mlflow.db")
    assert len(versions) == 1 and "runs" in tables and "metrics" in tables
    return tables, versions


@pytest.mark.faults  # 12 processes importing torch + MLflow: minutes on 2 cores, so in the fault set (.ci/run runs it)
@pytest.mark.parametrize("round_", range(3), ids=lambda r: f"round{r}")
def test_four_commands_creating_one_new_store_at_once(round_, tmp_path, reference_schema):
    from mlflow.tracking import MlflowClient

    from orchestrator import tracking

    db = tmp_path / "new" / "mlflow.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    commands = [
        (["evaluate", "no-such-run"], "not found"),
        (["evaluate", "no-such-run-either"], "not found"),
        (["train", "--resume", "no-such-run"], "not found"),
        (["sweep", "figr", "--resume", "sweep-figr-nosuch"], "no sweep of that name"),
    ]
    procs = []
    for i, (argv, _) in enumerate(commands):
        err = open(tmp_path / f"stderr{i}", "w")
        procs.append((subprocess.Popen([sys.executable, "-c", RACER, *argv, "--tracking-uri", uri],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                       env=env_for(), cwd=tmp_path), err))
    try:
        for p, _ in procs:
            assert p.stdout.readline().strip() == "ready"  # blocks until that process has imported everything
        assert not db.exists()
        for p, _ in procs:  # go: all four open the new store together
            p.stdin.write("go\n")
            p.stdin.flush()
        codes = [p.wait(timeout=300) for p, _ in procs]
    finally:
        for p, err in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            err.close()
    for i, ((argv, word), code) in enumerate(zip(commands, codes)):
        stderr = (tmp_path / f"stderr{i}").read_text()
        proc = subprocess.CompletedProcess(argv, code, "", stderr)
        assert code == 2, (argv, stderr)
        assert word in one_error_line(proc), (argv, stderr)
    # One schema, as one command alone makes it; then the store works for reading and for new runs.
    assert schema_of(db) == reference_schema
    c = MlflowClient(uri)
    assert [e.name for e in c.search_experiments()] == ["Default"]
    assert c.create_experiment("after-the-race")
    run = tracking.start_run(uri, "after-the-race-2", "r", {"inner_lr": 0.001}, {"method": "figr"})
    tracking.log_metrics(uri, run, {"fid_domain": 1.0}, step=1)
    tracking.end_run(uri, run)
    assert c.get_run(run).info.status == "FINISHED"


# --------------------------------------------------------------------------- temporary files


def test_evaluate_and_generate_leave_no_temporary_folders(trained, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = cli("evaluate", trained.run, "--n-generate", "40", "--tracking-uri", trained.uri, "--json", tmpdir=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["evaluated_run_id"] == trained.run
    after_evaluate = sorted(p.name for p in tmp.iterdir())
    out = tmp_path / "grid.png"
    proc = cli("generate", trained.run, "--images", *trained.images, "--n", "4", "--out", str(out),
               "--tracking-uri", trained.uri, tmpdir=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file()
    after_generate = sorted(p.name for p in tmp.iterdir())
    assert [n for n in after_evaluate + after_generate if n.startswith("fsig-")] == []
    assert after_evaluate == [] and after_generate == [], (after_evaluate, after_generate)


# ------------------------------------------------------------------------------ what listens

# Starts Ray the way every command does (lifecycle.ensure_ray, no --address), then lists the TCP sockets
# that this Ray session's processes listen on.
PROBE = r"""
import json, sys
import ray  # first: it puts its bundled psutil on sys.path
import psutil
from orchestrator.lifecycle import ensure_ray
assert ensure_ray(None)
from ray._private import worker
session = worker.global_worker.node.get_session_dir_path()
pids = {psutil.Process().pid} | {c.pid for c in psutil.Process().children(recursive=True)}
for p in psutil.process_iter(["cmdline"]):
    if any(session in a for a in (p.info["cmdline"] or [])):
        pids |= {p.pid} | {c.pid for c in p.children(recursive=True)}
def who(pid):
    p = psutil.Process(pid)
    script = [a.rsplit("/", 1)[-1] for a in p.cmdline()[1:2] if a.endswith(".py")]
    return p.name() + (f" {script[0]}" if script else "") + (" (this driver)" if pid == psutil.Process().pid else "")
listening = sorted({(c.laddr.ip, c.laddr.port, who(c.pid)) for c in psutil.net_connections("tcp")
                    if c.status == psutil.CONN_LISTEN and c.pid in pids})
print(json.dumps({"dashboard_url": worker.get_dashboard_url(), "listening": listening}))
ray.shutdown()
"""


def test_what_the_product_starts_is_told_to_bind_nowhere_public():
    """orchestrator/ and scripts/ start no server with a public bind address; only the cluster YAMLs do, by flag."""
    sources = [*(REPO / "orchestrator").rglob("*.py"),
               *(p for p in (REPO / "scripts").rglob("*") if p.is_file() and p.suffix in (".py", ".sh", ""))]
    for path in sources:
        text = path.read_text(errors="replace")
        assert "0.0.0.0" not in text and "dashboard_host" not in text, path
        assert not re.search(r"mlflow (server|ui)\b.*--host", text), path
    import inspect

    import ray

    assert inspect.signature(ray.init).parameters["dashboard_host"].default == "127.0.0.1"
    # The only public binds in the repository are the cluster heads', explicit flags workers need to reach.
    for yaml_file in ("cluster.yaml", "cluster-onprem.yaml"):
        public = [line for line in (REPO / yaml_file).read_text().splitlines() if "0.0.0.0" in line]
        assert public and all("--dashboard-host=0.0.0.0" in line or "--host 0.0.0.0" in line for line in public)


def test_a_commands_local_ray_dashboard_listens_on_loopback_only(tmp_path):
    tmp = Path("/tmp") / f"rb{os.getpid()}"  # Ray wants a short temp path (socket names)
    tmp.mkdir(exist_ok=True)
    try:
        proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                              env={**{k: v for k, v in env_for().items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": str(tmp)}, cwd=tmp_path)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\ndashboard {found['dashboard_url']}; listening:", *(f"{ip:>15} {p:>5} {name}" for ip, p, name in
                                                              found["listening"]), sep="\n  ")  # docs/reliability.md
    host, port = found["dashboard_url"].rsplit(":", 1)
    assert host == "127.0.0.1"
    on_port = {ip for ip, p, _ in found["listening"] if p == int(port)}
    assert on_port == {"127.0.0.1"}, found["listening"]
