"""Sweeps on a real local Ray and a real MLflow SQLite store: search-space files, seeded Optuna,
a tiny 2-trial sweep nested in MLflow, and an interrupted sweep resumed to exactly its trials."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

import methods
from orchestrator import search_space, sweep, tracking
from orchestrator.cli import _dispatch, main, parser
from orchestrator.errors import UserError
from orchestrator.interrupt import TAG, Interrupted

FIGR = methods.get("figr").default_config

# A tiny space: FIGR's real hyperparameters, a narrow net, few inner steps, small evaluations.
TINY = """
metric: val_fid_domain
mode: min
params:
  inner_lr:    {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}
  meta_lr:     {distribution: loguniform, low: 1.0e-5, high: 1.0e-3}
  inner_steps: {distribution: int, low: 2, high: 3}
  gp_weight:   {distribution: uniform, low: 1.0, high: 20.0}
fixed: {width: 8, eval_every: 2, val_generate: 72, n_generate: 40, adapt_steps: 2}
"""


def write(tmp_path, text: str, name: str = "space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- search-space files

GOOD_PARAMS = "params:\n  inner_lr: {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}\n"

MALFORMED = {
    "unknown distribution": ("metric: val_fid_domain\nparams:\n  inner_lr: {distribution: normal, low: 0, high: 1}\n",
                             "inner_lr", "unknown distribution"),
    "low > high": ("metric: val_fid_domain\nparams:\n  gp_weight: {distribution: uniform, low: 20, high: 1}\n",
                   "gp_weight", "low"),
    "int low > high": ("metric: val_fid_domain\nparams:\n  inner_steps: {distribution: int, low: 9, high: 3}\n",
                       "inner_steps", "low"),
    "key the method lacks": ("metric: val_fid_domain\nparams:\n  learning_rate: {distribution: uniform, low: 0, "
                             "high: 1}\n", "learning_rate", "no hyperparameter"),
    "missing metric": (GOOD_PARAMS, "metric", "missing"),
    "novel metric": ("metric: fid_domain\n" + GOOD_PARAMS, "metric", "not reported during training"),
    "float dist on an int": ("metric: val_fid_domain\nparams:\n  inner_steps: {distribution: uniform, low: 1, "
                             "high: 5}\n", "inner_steps", "is an int"),
    "loguniform from 0": ("metric: val_fid_domain\nparams:\n  inner_lr: {distribution: loguniform, low: 0, "
                          "high: 1}\n", "inner_lr", "low > 0"),
    "empty choice": ("metric: val_fid_domain\nparams:\n  arch: {distribution: choice, values: []}\n",
                     "arch", "non-empty"),
    "bad choice value": ("metric: val_fid_domain\nparams:\n  inner_steps: {distribution: choice, values: [3, x]}\n",
                         "inner_steps", "not a int"),
    "no params": ("metric: val_fid_domain\n", "params", "missing"),
    "unknown fixed key": ("metric: val_fid_domain\n" + GOOD_PARAMS + "fixed: {depth: 3}\n", "fixed.depth", "unknown"),
    "fixed and searched": ("metric: val_fid_domain\n" + GOOD_PARAMS + "fixed: {inner_lr: 0.1}\n", "fixed.inner_lr",
                           "also searched"),
    "wrong mode": ("metric: val_fid_domain\nmode: max\n" + GOOD_PARAMS, "mode", "contradicts"),
    "not yaml": ("metric: [val_fid_domain\n", "", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_space_names_file_key_and_reason(tmp_path, case):
    text, key, reason = MALFORMED[case]
    path = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        search_space.load(path, FIGR)
    msg = str(err.value)
    assert str(path) in msg and key in msg and reason in msg, msg
    assert "\n" not in msg


def test_malformed_space_stops_the_cli_before_anything_starts(tmp_path, capsys):
    path = write(tmp_path, MALFORMED["low > high"][0])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["sweep", "figr", "--space", str(path), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(path) in err and "gp_weight" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()  # nothing recorded
    assert main(["sweep", "figr", "--set", "inner_lr=0.1", "--tracking-uri", uri]) == 2  # searched key
    assert "inner_lr is searched" in capsys.readouterr().err
    assert main(["sweep", "figr", "--resume", "sweep-x", "--trials", "3", "--tracking-uri", uri]) == 2
    assert "drop --trials" in capsys.readouterr().err
    assert main(["sweep", "figr", "--resume", "sweep-x", "--tracking-uri", uri]) == 2
    assert "no sweep of that name" in capsys.readouterr().err


def test_figr_space_maps_to_optuna_distributions():
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    space = search_space.load(search_space.default_path("figr"), FIGR)
    assert set(space.params) == {"inner_lr", "meta_lr", "inner_steps", "gp_weight"}
    assert (space.metric, space.mode) == ("val_class_hit", "max")  # issue 21: selection on class-specificity
    dists = dict(OptunaSearch.convert_search_space(space.to_tune()))
    assert dists["inner_lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert dists["meta_lr"] == optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)
    assert dists["inner_steps"] == optuna.distributions.IntDistribution(3, 10)  # inclusive, as written
    assert dists["gp_weight"] == optuna.distributions.FloatDistribution(1.0, 20.0)
    choice = search_space.parse({"metric": "val_fid_domain", "params": {
        "arch": {"distribution": "choice", "values": ["dcgan", "resnet"]},
        "inner_steps": {"distribution": "int", "low": 2, "high": 64, "log": True}}}, "x.yaml", FIGR)
    dists = dict(OptunaSearch.convert_search_space(choice.to_tune()))
    assert dists["arch"] == optuna.distributions.CategoricalDistribution(["dcgan", "resnet"])
    assert dists["inner_steps"] == optuna.distributions.IntDistribution(2, 64, log=True)


def test_seeded_optuna_proposes_the_same_first_configs():
    from ray.tune.search.optuna import OptunaSearch

    space = search_space.load(search_space.default_path("figr"), FIGR)

    from orchestrator.sweep import _sampler

    def first(seed: int, search: str = "tpe", n: int = 3) -> list[dict]:
        sampler = _sampler({"seed": seed, "search": search, "startup_trials": 2})
        searcher = OptunaSearch(space=None, metric=space.metric, mode=space.mode, sampler=sampler)
        searcher.set_search_properties(space.metric, space.mode, space.to_tune())
        return [searcher.suggest(f"t{i}") for i in range(n)]

    for search in ("tpe", "random"):
        a, b, c = first(7, search), first(7, search), first(8, search)
        assert a == b
        assert a != c
        for cfg in a:
            assert 1e-4 <= cfg["inner_lr"] <= 1e-2 and 3 <= cfg["inner_steps"] <= 10
    assert type(_sampler({"seed": 0, "search": "random"})).__name__ == "RandomSampler"
    assert _sampler({"seed": 0, "search": "tpe", "startup_trials": 3})._n_startup_trials == 3
    # Concurrent trials: TPE treats the running ones as bad results (constant liar); one at a time it need not.
    assert _sampler({"seed": 0, "search": "tpe"}, concurrency=2)._constant_liar is True
    assert _sampler({"seed": 0, "search": "tpe"}, concurrency=1)._constant_liar is False


# ---------------------------------------------------------------- MLflow child lookup


def test_child_run_is_found_by_trial_id(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.start_run(uri, "lookup", "sweep", {}, {"sweep_name": "s", "sweep_role": "parent"})
    child = tracking.start_run(uri, "lookup", "trial-a", {}, {sweep.TRIAL_TAG: "a_00000"}, parent_run_id=parent)
    other_parent = tracking.start_run(uri, "lookup", "sweep2", {}, {})
    tracking.start_run(uri, "lookup", "trial-a", {}, {sweep.TRIAL_TAG: "a_00000"}, parent_run_id=other_parent)
    exp = tracking.experiment_id(uri, "lookup")
    assert sweep.find_child(uri, parent, exp, "a_00000").info.run_id == child
    assert sweep.find_child(uri, parent, exp, "b_00001") is None
    assert sweep.find_parent(uri, "s").info.run_id == parent
    with pytest.raises(UserError, match="no sweep of that name"):
        sweep.find_parent(uri, "nope")


# ---------------------------------------------------------------- real sweeps


@pytest.fixture(scope="module")
def store(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("mlflow_sweep")
    return f"sqlite:///{root / 'mlflow.db'}"


def child_runs(uri: str, parent: str):
    c = tracking.client(uri)
    exp = c.get_run(parent).info.experiment_id
    return sweep.children(uri, parent, exp)


def test_tiny_sweep_is_one_parent_with_two_finished_children(store, tmp_path, capsys):
    space = write(tmp_path, TINY)
    rc = main(["sweep", "figr", "--trials", "2", "--concurrency", "2", "--steps", "4", "--space", str(space),
               "--seed", "3", "--tracking-uri", store, "--experiment", "tiny", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["trials_completed"] == 2 and out["sweep_name"].startswith("sweep-figr-")
    assert set(out["best_config"]) == {"inner_lr", "meta_lr", "inner_steps", "gp_weight"}
    assert out["best_metric"] > 0

    c = tracking.client(store)
    parent = c.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep_name"] == out["sweep_name"]
    assert parent.data.params["sweep.seed"] == "3" and parent.data.params["width"] == "8"
    assert float(parent.data.params["best.inner_lr"]) == pytest.approx(out["best_config"]["inner_lr"])
    assert parent.data.metrics["best_val_fid_domain"] == pytest.approx(out["best_metric"])
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {"search_space", "sweep.json", "split.json"}

    kids = child_runs(store, out["parent_run_id"])
    assert len(kids) == 2 and all(k.info.status == "FINISHED" for k in kids)
    assert len({k.data.tags[sweep.TRIAL_TAG] for k in kids}) == 2
    for kid in kids:
        m, p = kid.data.metrics, kid.data.params
        assert "val_fid_domain" in m and "d_loss" in m and p["width"] == "8" and p["steps"] == "4"
        assert {a.path for a in c.list_artifacts(kid.info.run_id)} >= {"split.json", "config.json", "checkpoint",
                                                                       "samples"}
        if kid.data.tags["stopped_early"] == "false":  # ran to the end: evaluated on novel classes
            assert "fid_domain" in m and "class_hit_scratch" in m
    best = c.get_run(out["best_run_id"])
    assert float(best.data.params["inner_lr"]) == pytest.approx(out["best_config"]["inner_lr"])
    assert "fid_domain" in best.data.metrics  # evaluated on novel classes even if ASHA stopped it

    # The Optuna study is kept beside the sweep, named after it, with both trials and their proposals.
    path = parent.data.tags["optuna_storage"]
    assert parent.data.tags["optuna_study"] == out["sweep_name"] and path.endswith("optuna.journal")
    study = load_study(out["sweep_name"], path)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert sorted(t.params["inner_lr"] for t in study.trials) == pytest.approx(
        sorted(float(k.data.params["inner_lr"]) for k in kids))
    plots = {a.path: a.file_size for a in c.list_artifacts(parent.info.run_id, "optuna")}
    assert set(plots) == {"optuna/param_importances.png", "optuna/parallel_coordinate.png"}
    assert all(size > 5000 for size in plots.values()), plots  # a drawn PNG, not an empty figure
    # optuna-dashboard (PyPI) opens the file: its API lists the study and both trials.
    dashboard_study(path, out["sweep_name"], n_trials=2)


def load_study(name: str, path: str):
    import optuna

    return optuna.load_study(study_name=name, storage=sweep.study_storage(path))


def dashboard_study(path: str, name: str, n_trials: int) -> None:
    """Start ``optuna-dashboard PATH`` on a free 127.0.0.1 port, wait for its API, check the study and trials."""
    import shutil
    import socket
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).parent / "optuna-dashboard")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, path, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, studies = time.time() + 180, None
        while studies is None:
            assert proc.poll() is None, f"optuna-dashboard exited with {proc.returncode}"
            assert time.time() < deadline, "optuna-dashboard did not answer within 180 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.load(r)["study_summaries"]
            except OSError:
                time.sleep(0.3)  # polling the port until the server is up
        [summary] = [st for st in studies if st["study_name"] == name]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=30) as r:
            detail = json.load(r)
        assert len(detail["trials"]) == n_trials and all(t["state"] == "Complete" for t in detail["trials"]), detail
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow  # two sweeps, one Ctrl-C; test_tiny_sweep_is_one_parent_with_two_finished_children stays in the default run
def test_interrupted_sweep_resumes_to_exactly_its_trials(store, tmp_path, capsys):
    """Ctrl-C once the first trial's child run is FINISHED; --resume completes the rest, nothing twice."""
    space = write(tmp_path, TINY)
    args = ["--tracking-uri", store, "--experiment", "resume"]
    done = threading.Event()

    def interrupt_after_first_trial():
        exp = None
        while not done.is_set():
            time.sleep(0.5)
            c = tracking.client(store)
            exp = exp or c.get_experiment_by_name("resume")
            if exp and c.search_runs([exp.experiment_id], "attributes.status = 'FINISHED' and "
                                                          "tags.sweep_role = 'trial'"):
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends; Tune saves its state and returns
                return

    watcher = threading.Thread(target=interrupt_after_first_trial, daemon=True)
    watcher.start()
    try:
        with pytest.raises(Interrupted, match="interrupted by SIGINT") as err:
            _dispatch(parser().parse_args(["sweep", "figr", "--trials", "2", "--concurrency", "1", "--steps", "4",
                                           "--space", str(space), *args]))
    finally:
        done.set()
        watcher.join()
    assert err.value.exit_code == 130  # what the CLI exits with (orchestrator.interrupt)
    name = str(err.value).split("--resume ")[-1].split()[0]
    parent = sweep.find_parent(store, name)
    assert parent.info.status == "KILLED" and parent.data.tags.get(TAG) == "true"
    before = {k.data.tags[sweep.TRIAL_TAG]: k for k in child_runs(store, parent.info.run_id)}
    finished_before = [t for t, k in before.items() if k.info.status == "FINISHED"]
    assert finished_before and all(k.info.status != "RUNNING" for k in before.values())

    out = _dispatch(parser().parse_args(["sweep", "figr", "--resume", name, *args]))
    assert out["trials_completed"] == 2 and out["parent_run_id"] == parent.info.run_id
    c = tracking.client(store)
    assert c.get_run(parent.info.run_id).info.status == "FINISHED"
    kids = child_runs(store, parent.info.run_id)
    assert len(kids) == 2 and all(k.info.status == "FINISHED" for k in kids)
    assert len({k.data.tags[sweep.TRIAL_TAG] for k in kids}) == 2
    # The resumed sweep continued the same Optuna study: one trial per Tune trial, both told their result.
    tags = c.get_run(parent.info.run_id).data.tags
    study = load_study(name, tags["optuna_storage"])
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert {a.path for a in c.list_artifacts(parent.info.run_id, "optuna")} == {
        "optuna/param_importances.png", "optuna/parallel_coordinate.png"}
    for tid in finished_before:  # not re-run: its losses were logged once per step
        history = c.get_metric_history(before[tid].info.run_id, "d_loss")
        assert sorted(m.step for m in history) == [1, 2, 3, 4]
