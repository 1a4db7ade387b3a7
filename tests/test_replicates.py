"""``train --replicates N``: one child run per seed as Tune trials, the parent's mean and interval per metric."""
from __future__ import annotations

import json

import numpy as np
import pytest

from orchestrator import tracking
from orchestrator.cli import main
from orchestrator.replicates import aggregate

FIGR = ["--set", "width=8", "--set", "val_generate=72", "--set", "n_generate=40", "--set", "eval_every=2",
        "--set", "select_metric=last", "--set", "inner_steps=2", "--set", "adapt_steps=1"]


def test_aggregate_uses_per_class_values_and_seeds_for_pooled_metrics():
    rng = np.random.default_rng(0)
    kids = [{"metrics": {"class_hit": 0.0, "fid_domain": float(f)},
             "per_class": {"class_hit": list(rng.normal(0.5, 0.05, 5))}} for f in (10.0, 12.0, 14.0)]
    for k in kids:
        k["metrics"]["class_hit"] = float(np.mean(k["per_class"]["class_hit"]))
    out = aggregate(kids)
    assert out["fid_domain_mean"] == pytest.approx(12.0)
    assert out["fid_domain_ci_low"] < 12.0 < out["fid_domain_ci_high"]
    assert out["class_hit_ci_low"] < out["class_hit_mean"] < out["class_hit_ci_high"]
    assert 0.4 < out["class_hit_mean"] < 0.6


@pytest.fixture(scope="module")
def replicated(tmp_path_factory, ray_local):
    """One ``train figr --replicates 3 --json`` for the module: its store, exit code and JSON line."""
    from contextlib import redirect_stdout
    from io import StringIO

    uri = f"sqlite:///{tmp_path_factory.mktemp('replicates') / 'mlflow.db'}"
    buf = StringIO()
    with redirect_stdout(buf):
        code = main(["train", "figr", "--tracking-uri", uri, *FIGR, "--steps", "2", "--replicates", "3", "--json"])
    return uri, code, json.loads(buf.getvalue().strip().splitlines()[-1])


def test_train_replicates_three_seeds(replicated):
    uri, code, out = replicated
    assert code == 0 and out["replicates"] == 3 and out["seeds"] == [0, 1, 2]
    parent = tracking.get_run(uri, out["run_id"])
    assert parent.info.status == "FINISHED"
    kids = tracking.client(uri).search_runs([parent.info.experiment_id],
                                            f"tags.`mlflow.parentRunId` = '{out['run_id']}'")
    assert sorted(k.data.params["seed"] for k in kids) == ["0", "1", "2"]
    assert all(k.info.status == "FINISHED" for k in kids)
    for metric in ("fid_domain", "class_hit", "memorized_share", "recall_domain"):
        low, mean, high = (out[f"{metric}_ci_low"], out[f"{metric}_mean"], out[f"{metric}_ci_high"])
        assert low <= mean <= high, metric
        assert parent.data.metrics[f"{metric}_mean"] == pytest.approx(mean)
    # the JSON line holds <metric>_mean/_ci_low/_ci_high for every protocol metric the seeds recorded
    per_class = tracking.load_json_artifact(uri, kids[0].info.run_id, "per_class_novel_samples.json")
    missing = [m for m in per_class["metrics"] if not all(f"{m}{x}" in out for x in ("_mean", "_ci_low", "_ci_high"))]
    assert missing == [] and len(per_class["metrics"]) > 30


def test_evaluate_several_eval_seeds_records_each_and_the_interval(replicated, capsys):
    uri, _, trained = replicated
    run_id = trained["child_run_ids"][0]
    capsys.readouterr()
    # repeated seeds are refused before anything is recorded
    before = len(tracking.client(uri).search_runs([tracking.get_run(uri, run_id).info.experiment_id]))
    assert main(["evaluate", run_id, "--tracking-uri", uri, "--eval-seed", "1", "1"]) == 2
    assert "distinct seeds" in capsys.readouterr().err
    code = main(["evaluate", run_id, "--tracking-uri", uri, "--eval-seeds", "1", "2", "--n-generate", "40", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and out["eval_seeds"] == [1, 2] and out["evaluated_run_id"] == run_id
    child = tracking.get_run(uri, out["run_id"])
    assert child.info.status == "FINISHED" and child.data.tags["evaluates"] == run_id
    assert child.data.tags["eval_seed"] == "1,2" and child.info.run_name == "evaluate-seeds1-2"
    assert len(tracking.client(uri).search_runs([child.info.experiment_id])) == before + 1
    m = child.data.metrics
    for metric in ("fid_domain", "class_hit", "memorized_share"):
        seeds = [m[f"{metric}_seed1"], m[f"{metric}_seed2"]]
        assert out[f"{metric}_seed1"] == pytest.approx(seeds[0])
        # the mean over seeds of each seed's mean over classes; here no class is NaN, so the seeds' headlines' mean
        assert m[f"{metric}_mean"] == pytest.approx(np.mean(seeds)) == out[f"{metric}_mean"]
        assert m[f"{metric}_ci_low"] <= m[f"{metric}_mean"] <= m[f"{metric}_ci_high"]
    assert m["fid_domain_seed1"] != m["fid_domain_seed2"]  # two seeds, two draws of shots and samples
    for seed in (1, 2):
        saved = tracking.load_json_artifact(uri, child.info.run_id, f"per_class_novel_samples_seed{seed}.json")
        assert saved["metrics"]["class_hit"] == pytest.approx(m[f"class_hit_seed{seed}"])
    # one seed still works as before: plain metric names
    code = main(["evaluate", run_id, "--tracking-uri", uri, "--eval-seed", "3", "--n-generate", "40", "--json"])
    one = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and one["eval_seed"] == 3 and "fid_domain" in one and "fid_domain_mean" not in one


@pytest.mark.slow  # a sweep then two more train runs; replicates are test_train_replicates_three_seeds's
def test_sweep_replicates_the_best_configuration_under_its_parent(tmp_path, ray_local, capsys):
    """A tiny sweep (one trial) then ``--replicates 2``: the best configuration re-trained with 2 fresh seeds as a
    replicate parent nested under the sweep's parent, which compare shows as the sweep's row."""
    from orchestrator import sweep
    from tests.test_sweep import TINY

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = tmp_path / "space.yaml"
    space.write_text(TINY)
    base = ["sweep", "figr", "--trials", "1", "--steps", "2", "--space", str(space), "--scheduler", "none",
            "--tracking-uri", uri]
    assert main([*base, "--replicates", "0"]) == 2 and "--replicates 0" in capsys.readouterr().err
    assert main([*base, "--replicates", "2", "--json"]) == 0
    printed = capsys.readouterr().out
    out = json.loads(printed.strip().splitlines()[-1])
    reps = out["replicates"]
    assert reps["seeds"] == [1, 2] and len(reps["child_run_ids"]) == 2  # fresh seeds: the sweep ran seed 0
    parent = tracking.get_run(uri, reps["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["mlflow.parentRunId"] == out["parent_run_id"]
    assert parent.data.tags["replicate_role"] == "parent" and parent.data.tags["replicates_of"] == out["best_run_id"]
    for key, value in out["best_config"].items():  # the replicated configuration is the best trial's
        assert float(parent.data.params[key]) == pytest.approx(float(value))
    kids = [tracking.get_run(uri, k) for k in reps["child_run_ids"]]
    assert sorted(k.data.params["seed"] for k in kids) == ["1", "2"]
    assert all(k.info.status == "FINISHED" and k.data.tags["mlflow.parentRunId"] == reps["run_id"] for k in kids)
    assert reps["fid_domain_ci_low"] <= reps["fid_domain_mean"] <= reps["fid_domain_ci_high"]
    assert parent.data.metrics["fid_domain_mean"] == pytest.approx(reps["fid_domain_mean"])
    # the sweep's own trials are still exactly its trials; compare's row of the sweep is the replicate parent
    exp = parent.info.experiment_id
    assert [r.info.run_id for r in sweep.children(uri, out["parent_run_id"], exp)] == [out["best_run_id"]]
    row = next(line for line in printed.splitlines() if line.startswith("figr[arch="))  # figr's variant key
    assert reps["run_id"] in row and " [" in row
