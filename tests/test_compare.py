"""``compare`` on a real MLflow SQLite store: best per (method, dataset), skips, plot, parent artifact, errors."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from PIL import Image

from orchestrator import compare, tracking
from orchestrator.cli import main
from orchestrator.errors import UserError

EXP = "cmp"


def _run(uri: str, name: str, tags: dict[str, str], metrics: dict[str, float], status: str | None = "FINISHED",
         parent: str | None = None) -> str:
    rid = tracking.start_run(uri, EXP, name, {"lr": 0.1}, tags, parent_run_id=parent)
    tracking.log_metrics(uri, rid, metrics)
    if status:
        tracking.end_run(uri, rid, status)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, str]:
    """One store for the module: train runs, failed/running ones, a re-evaluation and a sweep."""
    tmp = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    figr = {"method": "figr", "dataset": "digits"}
    ids = {"uri": uri, "tmp": str(tmp)}
    ids["a"] = _run(uri, "a", figr, {"fid_domain": 50, "class_hit": 0.2, "kid_domain": 9, "ssim": 0.3})
    ids["b"] = _run(uri, "b", figr, {"fid_domain": 30, "class_hit": 0.1, "fid_domain_scratch": 900})
    ids["c"] = _run(uri, "c", figr, {"fid_domain": 40, "class_hit": 0.3})
    _run(uri, "running", figr, {"fid_domain": 1, "class_hit": 0.99}, status=None)
    _run(uri, "failed", figr, {"fid_domain": 2, "class_hit": 0.98}, status="FAILED")
    _run(uri, "no-fid", figr, {"loss_g": 3.0})
    _run(uri, "evaluate-seed1", {**figr, "evaluates": ids["b"]}, {"fid_domain": 5, "class_hit": 0.9},
         parent=ids["b"])
    ids["omni"] = _run(uri, "omni", {"method": "figr", "dataset": "omniglot"}, {"fid_domain": 300, "class_hit": 0.05})
    ids["m1"] = _run(uri, "m1", {"method": "mfh", "dataset": "digits"}, {"fid_domain": 45, "class_hit": 0.4})
    ids["m2"] = _run(uri, "m2", {"method": "mfh", "dataset": "digits"}, {"fid_domain": 35, "class_hit": 0.35})
    # A sweep: the parent repeats the best numbers (must not be ranked), three trials, one unfinished.
    ids["parent"] = _run(uri, "sweep-figr", figr, {"fid_domain": 10}, status=None)
    ids["t0"] = _run(uri, "trial-0", figr, {"fid_domain": 20, "class_hit": 0.15}, parent=ids["parent"])
    ids["t1"] = _run(uri, "trial-1", figr, {"fid_domain": 25, "class_hit": 0.25}, parent=ids["parent"])
    _run(uri, "trial-2", figr, {"fid_domain": 0.5}, status=None, parent=ids["parent"])
    tracking.log_metrics(uri, ids["parent"], {"fid_domain": 20})
    _run(uri, "sweep-without-trials", {**figr, "sweep_role": "parent"}, {"fid_domain": 0.1})  # tagged, no children
    tracking.end_run(uri, ids["parent"])
    return ids


def _args(tmp: str, **kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    compare.add_arguments(p)
    ns = p.parse_args([])
    ns.out = Path(tmp) / "compare.png"
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def _by_key(out: dict) -> dict[tuple[str, str], dict]:
    return {(r["method"], r["dataset"]): r for r in out["rows"]}


def _assert_png(path: str) -> None:
    assert Path(path).stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()


def test_experiment_best_per_method_dataset_lower_is_better(store):
    out = compare.run(_args(store["tmp"], experiment=EXP, metric="fid_domain"), store["uri"])
    rows = _by_key(out)
    assert set(rows) == {("figr", "digits"), ("figr", "omniglot"), ("mfh", "digits")}
    assert rows["figr", "digits"]["run_id"] == store["t0"]  # 20: below a/b/c; parents, running and failed not ranked
    assert rows["figr", "digits"]["n_runs"] == 5  # a, b, c, trial-0, trial-1
    assert rows["figr", "omniglot"]["run_id"] == store["omni"]
    assert rows["mfh", "digits"]["run_id"] == store["m2"]
    assert rows["mfh", "digits"]["value"] == 35.0
    assert out["mode"] == "min" and out["metric"] == "fid_domain" and out["n_runs"] == 8
    assert out["skipped"] == {"not_finished": 3, "missing_metric": 1, "sweep_parent": 2, "re_evaluation": 1,
                              "replicate_child": 0}
    assert out["parent_run_id"] is None and out["artifact"] is None
    _assert_png(out["plot"])


def test_default_ranks_on_validation_best_not_novel_or_last(tmp_path):
    """The default picks by val_fid_domain's best value in each run's history (checkpoint selection)."""
    uri = f"sqlite:///{tmp_path / 'val.db'}"
    tags = {"method": "figr", "dataset": "digits"}

    def run(name: str, val: list[float], novel: float) -> str:
        rid = _run(uri, name, tags, {"fid_domain": novel}, status=None)
        for step, v in enumerate(val):
            tracking.log_metrics(uri, rid, {"val_fid_domain": v}, step)
        tracking.end_run(uri, rid)
        return rid

    early = run("early-best", [50, 10, 90], novel=80)  # best validation value 10, though its last is 90
    late = run("late", [40, 30, 20], novel=5)  # best novel score: must not decide
    out = compare.run(_args(str(tmp_path), experiment=EXP), uri)
    assert out["metric"] == "val_fid_domain" and out["mode"] == "min"
    row = out["rows"][0]
    assert row["run_id"] == early and row["value"] == 10.0 and late != early
    assert row["metrics"]["fid_domain"] == 80.0 and row["metrics"]["val_fid_domain"] == 10.0


def test_variants_of_one_method_are_separate_rows(tmp_path):
    """Three transfer baselines (variant_keys = arch) and MT-GAN with and without meta-learned SS:
    each its own row, while runs differing only in a hyperparameter (lr) share one."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def run(method, params, fid):
        rid = tracking.start_run(uri, "variants", "r", params, {"method": method, "dataset": "omniglot"})
        tracking.log_metrics(uri, rid, {"fid_domain": fid})
        tracking.end_run(uri, rid)

    for arch, fid in (("dcgan", 3), ("cdcgan", 2), ("infogan", 1)):
        run("transfer", {"arch": arch, "lr": 0.1}, fid)
    run("transfer", {"arch": "infogan", "lr": 0.2}, 5)
    run("mtgan", {"meta_ss": "True"}, 7)
    run("mtgan", {"meta_ss": "False"}, 8)
    out = compare.run(_args(str(tmp_path), experiment="variants", metric="fid_domain"), uri)
    rows = {r["method"]: r for r in out["rows"]}
    assert set(rows) == {"transfer[arch=dcgan]", "transfer[arch=cdcgan]", "transfer[arch=infogan]",
                         "mtgan[meta_ss=True]", "mtgan[meta_ss=False]"}
    assert rows["transfer[arch=infogan]"]["n_runs"] == 2 and rows["transfer[arch=infogan]"]["value"] == 1
    assert compare.variant_label("no-such-method", {"arch": "x"}) == "no-such-method"


def test_higher_is_better_metric_and_row_metrics(store):
    out = compare.run(_args(store["tmp"], experiment=EXP, metric="class_hit"), store["uri"])
    rows = _by_key(out)
    assert out["mode"] == "max"
    assert rows["figr", "digits"]["run_id"] == store["c"]  # 0.3; the re-evaluation's 0.9 is not a trial
    assert rows["mfh", "digits"]["run_id"] == store["m1"]
    # every fid_*/kid_* and the listed quality metrics ride along with the best run
    a = compare.run(_args(store["tmp"], experiment=EXP, metric="ssim"), store["uri"])
    assert _by_key(a)["figr", "digits"]["metrics"] == {"ssim": 0.3, "fid_domain": 50.0, "kid_domain": 9.0,
                                                       "class_hit": 0.2}
    assert a["skipped"]["missing_metric"] == 8


def test_parent_is_ranked_by_the_metric_its_sweep_ranked_by(tmp_path):
    """``compare --parent`` without --metric ranks a sweep's trials by the sweep's own metric (its ``sweep.metric``
    param, val_class_hit in the generators' spaces), not by a second default (val_fid_domain) that could crown
    another trial than the sweep did."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    figr = {"method": "figr", "dataset": "digits"}
    parent = tracking.start_run(uri, EXP, "sweep", {"sweep.metric": "val_class_hit", "sweep.mode": "max"},
                                {**figr, "sweep_role": "parent"})
    sharp = _run(uri, "sharp", figr, {"val_class_hit": 0.6, "val_fid_domain": 90.0}, parent=parent)
    _run(uri, "blob", figr, {"val_class_hit": 0.2, "val_fid_domain": 20.0}, parent=parent)
    tracking.end_run(uri, parent)
    out = compare.run(_args(str(tmp_path), parent=parent), uri)
    assert (out["metric"], out["mode"]) == ("val_class_hit", "max")
    assert [r["run_id"] for r in out["rows"]] == [sharp]
    # A parent that does not say (not a sweep's) and an experiment keep the documented default.
    assert compare.default_metric(tracking.client(uri), None) == compare.DEFAULT_METRIC == "val_fid_domain"


def test_explicit_mode_overrides_name(store):
    out = compare.run(_args(store["tmp"], experiment=EXP, metric="fid_domain", mode="max"), store["uri"])
    assert _by_key(out)["figr", "digits"]["run_id"] == store["a"]  # worst FID when asked for max


def test_parent_children_and_artifact_on_parent(store, capsys):
    out = compare.run(_args(store["tmp"], parent=store["parent"], metric="fid_domain"), store["uri"])
    assert [r["run_id"] for r in out["rows"]] == [store["t0"]]
    assert out["n_runs"] == 2 and out["skipped"]["not_finished"] == 1
    assert out["parent_run_id"] == store["parent"] and out["artifact"] == "compare/compare.png"
    names = [f.path for f in tracking.client(store["uri"]).list_artifacts(store["parent"], "compare")]
    assert names == ["compare/compare.png"]
    _assert_png(out["plot"])
    printed = capsys.readouterr().out
    assert "trial-0" in printed and "fid_domain (min)" in printed and "skipped 1" in printed


def test_json_shape_through_cli(store, capsys, tmp_path):
    png = tmp_path / "cli.png"
    code = main(["compare", "--tracking-uri", store["uri"], "--json", "--experiment", EXP, "--out", str(png),
                 "--metric", "fid_domain"])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    out = json.loads(last)
    assert {"rows", "plot", "metric", "n_runs", "mode", "skipped", "parent_run_id"} <= set(out)
    assert out["plot"] == str(png.resolve()) and png.is_file()
    assert all({"method", "dataset", "run_id", "value", "metrics", "n_runs"} <= set(r) for r in out["rows"])


def test_cli_plain_output_summarises_rows(store, capsys, tmp_path):
    assert main(["compare", "--tracking-uri", store["uri"], "--experiment", EXP, "--out", str(tmp_path / "p.png"),
                 "--metric", "fid_domain"]) == 0
    out = capsys.readouterr().out
    assert "rows: 3 rows (table above)" in out


@pytest.mark.parametrize("kw, needle", [
    ({"experiment": "nope"}, "experiment 'nope' not found"),
    ({"parent": "0123456789abcdef"}, "parent run '0123456789abcdef' not found"),
    ({"experiment": EXP, "metric": "fid_nothing"}, "has metric 'fid_nothing'"),
    ({"experiment": EXP, "metric": "wiggle"}, "add --mode min or --mode max"),
])
def test_bad_input_is_one_line_user_error(store, kw, needle):
    with pytest.raises(UserError) as err:
        compare.run(_args(store["tmp"], **kw), store["uri"])
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and ": " in msg


def test_parent_without_children_and_missing_store(store, tmp_path):
    with pytest.raises(UserError, match="has no child runs"):
        compare.run(_args(store["tmp"], parent=store["a"]), store["uri"])
    missing = tmp_path / "none.db"
    with pytest.raises(UserError, match="no MLflow database"):
        compare.run(_args(str(tmp_path), experiment=EXP), f"sqlite:///{missing}")
    assert not missing.exists()  # refusing must not create an empty store


def test_cli_bad_input_exits_2(store, capsys):
    assert main(["compare", "--tracking-uri", store["uri"], "--experiment", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: experiment 'nope' not found") and len(err.splitlines()) == 1


def test_experiment_and_parent_are_exclusive(store, capsys):
    assert main(["compare", "--tracking-uri", store["uri"], "--experiment", EXP, "--parent", store["parent"]]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


# ------------------------------------------------------------------ replicates, budgets, paired differences ----

CLASSES = [11, 4, 7, 2, 9, 15, 3, 8]  # the novel classes, in the protocol's (unsorted) order


def _replicate(uri: str, method: str, values, *, meta_steps: float = 300.0, seeds=(0, 1, 2),
               classes=CLASSES) -> str:
    """A ``train --replicates`` parent as the product records it: one FINISHED child per seed with its budget and
    ``per_class_novel_samples.json`` (class_hit per class, values[seed]), and the parent's mean/interval from
    ``replicates.aggregate`` (the real aggregation code)."""
    from orchestrator.replicates import aggregate

    tags = {"method": method, "dataset": "omniglot", "kind": "generator"}
    parent = tracking.start_run(uri, "reps", f"replicates-{method}", {"steps": 300, "seed": 0},
                                {**tags, "sweep_role": "parent", "replicate_role": "parent"})
    kids = []
    for s, row in zip(seeds, values):
        per = {"class_hit": [float(v) for v in row]}
        metrics = {"class_hit": float(sum(row) / len(row)), "fid_domain": 100.0 + s}
        kid = tracking.start_run(uri, "reps", f"seed-{s}", {"steps": 300, "seed": s, "eval_seed": 0},
                                 {**tags, "sweep_role": "trial"}, parent_run_id=parent)
        tracking.log_metrics(uri, kid, {**metrics, "meta_steps": meta_steps, "tasks_seen": 4 * meta_steps,
                                        "images_seen": 20 * meta_steps, "train_seconds": 60.0})
        tracking.log_dict(uri, kid, {"step": int(meta_steps), "classes": list(classes), "per_class": per,
                                     "metrics": metrics}, "per_class_novel_samples.json")
        tracking.end_run(uri, kid)
        kids.append({"metrics": metrics, "per_class": per})
    tracking.log_metrics(uri, parent, aggregate(kids))
    tracking.end_run(uri, parent)
    return parent


@pytest.fixture(scope="module")
def reps(tmp_path_factory) -> dict[str, str]:
    """figr and mfh: the same config's numbers up to noise (not separated); mtgan: 0.25 higher on every class
    (separated) at half the meta-steps (unequal budget); a single figr run beside figr's replicates."""
    import numpy as np

    tmp = tmp_path_factory.mktemp("reps")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    rng = np.random.default_rng(0)
    base = 0.4 + rng.normal(0, 0.1, (3, 1)) + rng.normal(0, 0.1, (1, len(CLASSES)))
    ids = {"uri": uri, "tmp": str(tmp)}
    ids["figr"] = _replicate(uri, "figr", base + rng.normal(0, 0.05, base.shape))
    ids["mfh"] = _replicate(uri, "mfh", base + rng.normal(0, 0.05, base.shape))
    ids["mtgan"] = _replicate(uri, "mtgan", base + 0.25 + rng.normal(0, 0.05, base.shape), meta_steps=150.0)
    # transfer on other novel classes: never paired with the rest
    ids["other_classes"] = _replicate(uri, "transfer", base, classes=[c + 100 for c in CLASSES])
    single = tracking.start_run(uri, "reps", "lucky-single", {"steps": 300, "seed": 9},
                                {"method": "figr", "dataset": "omniglot", "kind": "generator"})
    tracking.log_metrics(uri, single, {"class_hit": 0.99, "meta_steps": 300.0})
    tracking.end_run(uri, single)
    ids["single"] = single
    return ids


def test_replicate_rows_show_mean_and_interval_and_flag_unequal_budgets(reps, capsys):
    out = compare.run(_args(reps["tmp"], experiment="reps", metric="class_hit"), reps["uri"])
    rows = {r["method"]: r for r in out["rows"]}
    assert set(rows) == {"figr", "mfh", "mtgan", "transfer"}
    # figr's row is its replicate parent (mean over seeds), never the lucky single run beside it
    assert rows["figr"]["run_id"] == reps["figr"] and rows["figr"]["replicates"] and rows["figr"]["seeds"] == 3
    assert out["skipped"]["replicate_child"] == 12 and out["skipped"]["single_beside_replicates"] == 1
    parent = tracking.get_run(reps["uri"], reps["figr"]).data.metrics
    assert rows["figr"]["value"] == pytest.approx(parent["class_hit_mean"])
    low, high = rows["figr"]["intervals"]["class_hit"]
    assert low == pytest.approx(parent["class_hit_ci_low"]) and high == pytest.approx(parent["class_hit_ci_high"])
    assert low < rows["figr"]["value"] < high
    # budgets: the children's mean; mtgan ran half the meta-steps and is the only row flagged (on --steps runs
    # meta_steps and tasks_seen are the budget; train_seconds is equal anyway)
    assert rows["mtgan"]["budget"]["meta_steps"] == 150.0 and rows["figr"]["budget"]["images_seen"] == 6000.0
    assert rows["mtgan"]["budget_flags"] == ["meta_steps 150 vs 300", "tasks_seen 600 vs 1200"]
    assert all(rows[m]["budget_flags"] == [] for m in ("figr", "mfh", "transfer"))
    printed = capsys.readouterr().out
    line = next(l for l in printed.splitlines() if l.startswith("figr "))
    assert f"{rows['figr']['value']:.4g} [{low:.4g}, {high:.4g}]" in line and line.rstrip().endswith(reps["figr"])
    mtgan = next(l for l in printed.splitlines() if l.startswith("mtgan "))
    assert "UNEQUAL: meta_steps 150 vs 300, tasks_seen 600 vs 1200" in mtgan


def test_best_row_is_paired_with_every_other_row(reps, capsys):
    out = compare.run(_args(reps["tmp"], experiment="reps", metric="class_hit"), reps["uri"])
    assert out["diff_metric"] == "class_hit"
    pairs = {(p["a_label"].split()[0], p["b_label"].split()[0]): p for p in out["pairs"]}
    assert set(pairs) == {("mtgan", "figr"), ("mtgan", "mfh"), ("mtgan", "transfer")}
    sep = pairs["mtgan", "figr"]
    assert sep["separated"] and 0 < sep["ci_low"] < 0.25 < sep["ci_high"] and sep["note"] == "separated: a is better"
    assert (sep["n_seeds"], sep["n_classes"]) == (3, len(CLASSES))
    other = pairs["mtgan", "transfer"]
    assert other["difference"] is None and other["note"] == "not paired: evaluated on different novel classes"
    printed = capsys.readouterr().out
    assert "paired differences of class_hit (a - b, 95% interval, higher is better" in printed
    assert "mtgan (omniglot) - figr (omniglot): " in printed and "separated: a is better" in printed


def test_pair_flag_marks_an_unseparated_pair(reps, capsys):
    """figr and mfh are one config up to noise: their paired difference's interval covers 0."""
    out = compare.run(_args(reps["tmp"], experiment="reps", metric="class_hit",
                            pair=[[reps["figr"], reps["mfh"]], [reps["figr"], reps["single"]]]), reps["uri"])
    same, single = out["pairs"]
    assert same["a"] == reps["figr"] and same["b"] == reps["mfh"]
    assert not same["separated"] and same["ci_low"] < 0 < same["ci_high"] and same["note"] == "not separated"
    assert single["difference"] is None and single["note"].startswith("not paired: different (seed, eval_seed) sets")
    printed = capsys.readouterr().out
    assert f"figr (omniglot) - mfh (omniglot): {same['difference']:.4g} [" in printed
    assert "]  not separated  (3 seed(s) x 8 class(es))" in printed


def test_pooled_metric_pairs_over_seeds_and_bad_pair_is_a_user_error(reps):
    out = compare.run(_args(reps["tmp"], experiment="reps", metric="class_hit", diff_metric="fid_domain",
                            pair=[[reps["figr"], reps["mfh"]]]), reps["uri"])
    (p,) = out["pairs"]
    # fid_domain is pooled (no per-class values): one cell per seed, and both rows logged 100 + seed
    assert (p["n_seeds"], p["n_classes"], p["difference"], p["separated"]) == (3, 1, 0.0, False)
    with pytest.raises(UserError, match="--pair 0123456789abcdef: no such run"):
        compare.run(_args(reps["tmp"], experiment="reps", metric="class_hit",
                          pair=[[reps["figr"], "0123456789abcdef"]]), reps["uri"])


def test_budget_flags_rule():
    b = lambda m: {"meta_steps": m, "tasks_seen": None}  # noqa: E731
    assert compare.budget_flags([b(100.0), b(109.0)], keys=("meta_steps",)) == [[], []]
    assert compare.budget_flags([b(100.0), b(120.0)], keys=("meta_steps",)) == [["meta_steps 100 vs 120"],
                                                                              ["meta_steps 120 vs 100"]]
    assert compare.budget_flags([b(300.0), b(300.0), b(150.0)], keys=("meta_steps",))[:2] == [[], []]
    assert compare.budget_flags([b(1.0)], keys=("meta_steps",)) == [[]]
    assert compare.budget_flags([{"meta_steps": None}, b(5.0)], keys=("meta_steps",))[0] == ["meta_steps not recorded"]
    assert compare.budget_keys(["steps", "steps"]) == ("meta_steps", "tasks_seen")
    assert compare.budget_keys(["minutes"]) == ("train_seconds",)
    assert compare.budget_keys(["steps", None]) == compare.FLAGGED_BUDGET_KEYS
