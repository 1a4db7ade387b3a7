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


def test_train_replicates_three_seeds(tmp_path, ray_local, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["train", "figr", "--tracking-uri", uri, *FIGR, "--steps", "2", "--replicates", "3", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
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
