"""Learning curves and time to signal (issue 21 item 4) on a real train run: bundled digits (two validation
classes), real local Ray, real MLflow SQLite; then ``compare --curves`` draws them and prints time to signal."""
from __future__ import annotations

import json

import numpy as np
import pytest

from orchestrator import curves, tracking
from orchestrator.cli import main

FAST = ["--set", "width=8", "--set", "val_generate=72", "--set", "n_generate=40", "--set", "eval_every=2",
        "--set", "inner_steps=2", "--set", "adapt_steps=2", "--set", "n_val=2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("mlflow_curves")
    return f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture(scope="module")
def run(store):
    assert main(["train", "figr", "--steps", "4", "--tracking-uri", store, "--experiment", "curves", "--json",
                 *FAST]) == 0
    c = tracking.client(store)
    exp = c.get_experiment_by_name("curves").experiment_id
    (r,) = c.search_runs([exp])
    return r


def test_every_eval_step_is_a_metric_history_with_per_class_values(store, run, tmp_path):
    c = tracking.client(store)
    rid = run.info.run_id
    for metric in ("val_class_hit", "val_fid_domain", "train_seconds"):
        assert sorted(int(m.step) for m in c.get_metric_history(rid, metric)) == [2, 4], metric
    # the untrained control on the validation classes, once, before training
    scratch = c.get_metric_history(rid, "val_class_hit_scratch")
    assert [int(m.step) for m in scratch] == [0] and 0.0 <= scratch[0].value <= 1.0
    arts = {a.path for a in c.list_artifacts(rid, "val_per_class")}
    assert arts == {"val_per_class/untrained.json", "val_per_class/val_per_class_step0000002.json",
                    "val_per_class/val_per_class_step0000004.json"}
    step4 = json.loads(tracking.download(store, rid, "val_per_class/val_per_class_step0000004.json",
                                         tmp_path).read_text())
    assert len(step4["classes"]) == 2 and len(step4["per_class"]["class_hit"]) == 2
    # the per-class values are the ones the logged headline is the mean of
    hist = {int(m.step): m.value for m in c.get_metric_history(rid, "val_class_hit")}
    assert np.mean(step4["per_class"]["class_hit"]) == pytest.approx(hist[4], abs=1e-9)


def test_compare_curves_draws_and_prints_time_to_signal(store, run, tmp_path, capsys):
    out = tmp_path / "cmp.png"
    assert main(["compare", "--experiment", "curves", "--tracking-uri", store, "--metric", "val_class_hit",
                 "--curves", "--out", str(out), "--json"]) == 0
    text = capsys.readouterr().out
    assert "time to signal" in text
    result = json.loads(text.strip().splitlines()[-1])
    figure = tmp_path / "cmp_curves.png"
    assert figure.is_file() and figure.stat().st_size > 10_000 and result["curves"]["figure"] == str(figure.resolve())
    (entry,) = result["curves"]["methods"].values()
    assert entry["curves"]["steps"] == [2, 4] and entry["curves"]["val_class_hit_scratch"] is not None
    sig = entry["time_to_signal"]
    # computed from the per-class values (a difference with its interval), whether or not it separates
    assert {"mean", "low", "high"} <= set(sig) and sig["low"] <= sig["mean"] <= sig["high"]
    assert (sig["step"] is None) == (sig["low"] <= 0), "signal is exactly an interval above 0"


def test_describe_signal_lines():
    from orchestrator.evaluation.stats import PairedCI

    d = PairedCI(0.2, 0.1, 0.3, True)
    assert "step 400" in curves.describe_signal("mfh", {"step": 400, "train_seconds": 12.0, "diff": d}, 800)
    assert "no signal within 800 steps" in curves.describe_signal(
        "mfh", {"step": None, "train_seconds": None, "diff": PairedCI(0.0, -0.1, 0.1, False)}, 800)


def test_time_to_signal_is_the_first_step_separated_above_the_untrained_control(tmp_path):
    """Recorded runs (two seeds) whose per-class validation class_hit leaves the untrained control at step 200:
    time to signal is step 200, not step 100 (covers 0) nor step 300; the curves average the two seeds."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    c = tracking.client(uri)
    exp = c.create_experiment("synthetic")
    rng = np.random.default_rng(0)
    untrained = rng.uniform(0.0, 0.1, 20)  # 20 validation classes
    runs = []
    for seed in range(2):
        rid = c.create_run(exp).info.run_id
        c.log_metric(rid, "val_class_hit_scratch", float(untrained.mean()), step=0)
        (tmp_path / f"u{seed}").mkdir()
        _write(tmp_path / f"u{seed}" / "untrained.json", untrained)
        c.log_artifact(rid, str(tmp_path / f"u{seed}" / "untrained.json"), "val_per_class")
        for step, lift in ((100, 0.0), (200, 0.4), (300, 0.5)):
            values = untrained + lift + (rng.normal(0, 0.02, 20) if lift else 0.0)
            c.log_metric(rid, "val_class_hit", float(values.mean()), step=step)
            c.log_metric(rid, "val_fid_domain", 100.0 - step / 10, step=step)
            c.log_metric(rid, "train_seconds", step / 10 + seed, step=step)
            path = tmp_path / f"u{seed}" / f"val_per_class_step{step:07d}.json"
            _write(path, values)
            c.log_artifact(rid, str(path), "val_per_class")
        runs.append(c.get_run(rid))
    cur = curves.method_curves(uri, runs)
    assert cur["steps"] == [100, 200, 300] and cur["train_seconds"] == pytest.approx([10.5, 20.5, 30.5])
    assert cur["val_class_hit_scratch"] == pytest.approx(untrained.mean())
    sig = curves.time_to_signal(uri, runs, cur["steps"], cur["train_seconds"])
    assert sig["step"] == 200 and sig["train_seconds"] == pytest.approx(20.5) and sig["diff"].low > 0
    result = curves.report(uri, [("m", runs)], tmp_path / "c.png")
    assert result["methods"]["m"]["time_to_signal"]["step"] == 200 and (tmp_path / "c.png").is_file()


def _write(path, values) -> None:
    path.write_text(json.dumps({"per_class": {"class_hit": [float(v) for v in values]}}))
