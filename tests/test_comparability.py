"""Comparability is checked, not assumed (issue 22): the measured case, reproduced with real runs.

Three ``train figr`` runs in one experiment on the bundled digits, one with ``--split-seed 1`` and one with
``--image-size 64``: every run records its comparability record (``cmp.*`` tags and ``comparability.json``), and
``compare`` keeps the three apart (a table per group, no "best" across them, no default pair) and refuses a
``--pair`` across groups with one line naming the differing keys (exit 2). A run recorded before the tags forms
its own group. Also: ``compare`` prints each row's lift over its untrained control with its interval. Each test runs
on the three runs made by ``train`` (Ray Train) and on the same three made by the lifecycle's evaluation alone.
"""
from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import compare, tracking
from orchestrator.cli import main
from orchestrator.evaluation.comparability import KEYS, differing_keys, from_tags

FAST = ["--set", "width=8", "--set", "eval_every=2", "--set", "val_generate=72", "--set", "n_generate=40",
        "--set", "inner_steps=2", "--set", "adapt_steps=1", "--set", "select_metric=last"]
EXP = "cmp-groups"


def _trained(root, request) -> tuple[str, dict[str, str]]:
    """The measured case as a user met it: three ``train figr`` runs (Ray Train), tiniest budget."""
    request.getfixturevalue("ray_local")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    runs = {}
    for name, extra in (("base", []), ("split1", ["--split-seed", "1"]), ("size64", ["--image-size", "64"])):
        code = main(["train", "figr", "--steps", "2", *FAST, *extra, "--tracking-uri", uri, "--experiment", EXP])
        assert code == 0, name
        c = MlflowClient(uri)
        exp = c.get_experiment_by_name(EXP)
        newest = c.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
        runs[name] = newest.info.run_id
    return uri, runs


def _evaluated(root) -> tuple[str, dict[str, str]]:
    """The same three configurations without Ray: each run opened and evaluated by the lifecycle's own functions
    (the untrained model's weights as the checkpoint), so the record is checked where Ray cannot start."""
    from orchestrator import lifecycle
    from orchestrator.kinds import build_method

    uri = f"sqlite:///{root / 'mlflow.db'}"
    sets = [v for k, v in zip(FAST[::2], FAST[1::2])]
    runs = {}
    for name, over in (("base", {}), ("split1", {"split_seed": 1}), ("size64", {"image_size": 64})):
        cfg = lifecycle.resolve_config("figr", {"dataset": "digits", "steps": 2, **over}, sets)
        prep = lifecycle.prepare("figr", cfg, quiet=True)
        rid = lifecycle.open_run(uri, EXP, name, prep, {})
        model = build_method("figr", cfg, prep.ds.image_shape, num_classes=prep.ds.num_classes)
        tracking.log_metrics(uri, rid, {"val_fid_domain": 1.0})
        lifecycle.evaluate_and_record(prep, {"state": model.state_dict(), "step": 0}, uri=uri, run_id=rid,
                                      seed=int(cfg["eval_seed"]), n_generate=int(cfg["n_generate"]))
        tracking.end_run(uri, rid, "FINISHED")
        runs[name] = rid
    return uri, runs


# The train form (three real `train figr` runs, ~2 min) is in the slow set; the evaluate form records the same three
# configurations through the lifecycle's own functions, without Ray, in the default run.
@pytest.fixture(scope="module", params=[pytest.param("train", marks=pytest.mark.slow), "evaluate"])
def three(tmp_path_factory, request):
    root = tmp_path_factory.mktemp(f"comparability-{request.param}")
    uri, runs = _trained(root, request) if request.param == "train" else _evaluated(root)
    # a run recorded before comparability tags: same numbers' names, no cmp.* record
    old = tracking.start_run(uri, EXP, "old", {"steps": 2}, {"method": "figr", "dataset": "digits",
                                                             "kind": "generator"})
    tracking.log_metrics(uri, old, {"val_fid_domain": 1.0, "fid_domain": 1.0, "class_hit": 0.5})
    tracking.end_run(uri, old)
    runs["old"] = old
    return uri, root, runs


def _args(root, **kw):
    import argparse

    p = argparse.ArgumentParser()
    compare.add_arguments(p)
    ns = p.parse_args([])
    ns.out = root / "compare.png"
    ns.experiment = EXP
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def test_every_evaluation_records_its_comparability(three):
    uri, _, runs = three
    records = {k: from_tags(tracking.get_run(uri, rid).data.tags) for k, rid in runs.items()}
    assert records["old"] is None
    base = records["base"]
    assert set(base) == set(KEYS)
    assert base["dataset"] == "digits" and base["protocol"] == "fsig" and base["protocol_variant"] == "default"
    assert base["features"] == "domain" and len(base["features_sha256"]) == 64
    assert (base["n_generate"], base["adapt_steps"], base["eval_seeds"]) == ("40", "1", "0") and int(base["shots"]) >= 1
    assert base["image_size"] == "32" and base["channels"] == "1" and base["split_seed"] == "0"
    assert tracking.load_json_artifact(uri, runs["base"], "comparability.json") == base
    # the two changed runs differ exactly where they were changed (and in what follows from it)
    split_diff = differing_keys(base, records["split1"])
    assert {"split_seed", "split_sha256"} <= set(split_diff) and "image_size" not in split_diff
    size_diff = differing_keys(base, records["size64"])
    assert {"image_size", "data_digest", "features_sha256"} <= set(size_diff) and "split_seed" not in size_diff


def test_compare_keeps_groups_apart_and_ranks_within_each(three, capsys):
    uri, root, runs = three
    out = compare.run(_args(root), uri)
    groups = {r["run_id"]: r["comparability_group"] for r in out["rows"]}
    assert set(groups) == set(runs.values())  # every run is its own row: no best picked across groups
    assert len(set(groups.values())) == 4
    assert out["pairs"] == []  # nothing to pair inside a group of one
    printed = capsys.readouterr().out
    assert sum(line.startswith("comparability group ") for line in printed.splitlines()) == 4  # one header each
    assert "differs from group 1 in split_seed=1" in printed
    assert "image_size=64" in printed
    assert "runs recorded before comparability tags" in printed


def test_pair_across_groups_is_refused_naming_the_keys(three, capsys):
    uri, root, runs = three
    code = main(["compare", "--tracking-uri", uri, "--experiment", EXP, "--out", str(root / "p.png"),
                 "--pair", runs["base"], runs["size64"]])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not comparable" in err[0] and "cmp.image_size (32 vs 64)" in err[0]
    assert "Traceback" not in err[0]
    code = main(["compare", "--tracking-uri", uri, "--experiment", EXP, "--out", str(root / "p.png"),
                 "--pair", runs["base"], runs["split1"]])
    assert code == 2
    assert "cmp.split_seed (0 vs 1)" in capsys.readouterr().err
    code = main(["compare", "--tracking-uri", uri, "--experiment", EXP, "--out", str(root / "p.png"),
                 "--pair", runs["base"], runs["old"]])
    assert code == 2
    assert "no comparability record" in capsys.readouterr().err


def test_compare_prints_the_lift_over_the_untrained_control_with_its_interval(three, capsys):
    uri, root, runs = three
    out = compare.run(_args(root), uri)
    row = next(r for r in out["rows"] if r["run_id"] == runs["base"])
    lift = row["placement"]["class_hit"]["lift"]
    saved = tracking.load_json_artifact(uri, runs["base"], "per_class_novel_samples.json")
    m = saved["metrics"]
    assert lift["difference"] == pytest.approx(m["class_hit"] - m["class_hit_scratch"], abs=1e-9)
    assert lift["ci_low"] <= lift["difference"] <= lift["ci_high"] and lift["n_classes"] > 1
    assert row["placement"]["class_hit"]["augmented_lift"] is not None
    printed = capsys.readouterr().out
    block = printed[printed.index(f"  {row['method']} (digits), comparability group 1:"):]  # figr[arch=dcgan]
    shown = f"{lift['difference']:.4g} [{lift['ci_low']:.4g}, {lift['ci_high']:.4g}]"
    assert f"\n    class_hit - class_hit_scratch {shown}" in block
    assert "\n    diversity - diversity_scratch " in block and "\n    memorized_share - memorized_share_scratch " in block
    json.dumps(out["rows"], default=str)  # the rows (with placement and comparability) serialise


def test_a_methods_own_adaptation_steps_do_not_split_groups():
    """figr adapts 10 steps, transfer 50: both are compared under one protocol, so adapt_steps is recorded only."""
    from orchestrator.evaluation.comparability import differing_keys

    a = {"dataset": "omniglot", "shots": "4", "adapt_steps": "10"}
    assert differing_keys(a, {**a, "adapt_steps": "50"}) == []
    assert differing_keys(a, {**a, "shots": "1"}) == ["shots"]
    assert compare._cmp_key(a) == compare._cmp_key({**a, "adapt_steps": "50"})


def test_one_content_digest_for_the_record_and_the_moved_data_check():
    """``comparability.data_digest`` is the harness's one content digest: the whole dataset's is ``cmp.data_digest``
    (unchanged: name, class names, labels, images, in that order), and a split part's first 16 hex digits are what
    ``log_data_input`` records and ``evaluate --data-root`` checks a moved dataset against."""
    import hashlib

    import numpy as np

    from orchestrator import config as config_mod
    from orchestrator import lifecycle
    from orchestrator.evaluation.comparability import data_digest
    from orchestrator.kinds import method_class

    cls = method_class("figr")
    prep = lifecycle.prepare("figr", lifecycle.finish_config(config_mod.resolve(
        cls.default_config, {"steps": 1}, [], cls.harness_defaults)), quiet=True)
    ds = prep.ds
    h = hashlib.sha256(json.dumps([str(ds.name), list(map(str, ds.class_names))]).encode())
    h.update(np.asarray(ds.labels, dtype=np.int64).tobytes())
    h.update(ds.images.contiguous().numpy().tobytes())
    assert data_digest(ds) == h.hexdigest()  # the recorded cmp.data_digest of earlier runs still matches
    for part in ("base", "novel"):
        digest, idx = lifecycle.data_digest(prep, part)
        assert digest == data_digest(ds, list(getattr(prep.split, part)))[:16]
        assert len(idx) == sum(len(ds.class_indices(c)) for c in getattr(prep.split, part))
    assert lifecycle.data_digest(prep, "base")[0] != lifecycle.data_digest(prep, "novel")[0]


def _record(**change) -> dict:
    return {**{k: f"v-{k}" for k in KEYS}, **change}


def test_a_key_missing_on_both_sides_is_unknown_not_equal():
    from orchestrator.evaluation.comparability import complete, unknown_keys

    a, b = _record(), _record()
    assert differing_keys(a, b) == [] and unknown_keys(a, b) == [] and complete(a)
    del a["features_sha256"], b["features_sha256"]  # e.g. two records that never said which feature network
    assert differing_keys(a, b) == [] and unknown_keys(a, b) == ["features_sha256"] and not complete(a)
    assert unknown_keys(_record(data_digest="mixed:x,y"), _record(data_digest="mixed:x,y")) == ["data_digest"]
    assert unknown_keys(_record(adapt_steps=None), _record()) == []  # a method's own budget is not compared
    assert unknown_keys(None, _record()) == [] and differing_keys(None, _record()) == ["record"]  # unchanged


def test_a_replicate_parent_marks_the_keys_its_seeds_disagree_on(tmp_path):
    """Seeds measured differently (here: another data digest) give the replicate parent ``mixed:...`` on that key
    and a ``cmp_mixed`` tag naming it, instead of dropping the key; it is then comparable with nothing on it,
    its own seeds included, and compare puts it in a group of its own."""
    from orchestrator.compare import _cmp_key
    from orchestrator.evaluation.comparability import as_tags, combined, unknown_keys
    from orchestrator.replicates import _copy_comparability

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    kids = []
    for i, digest in enumerate(("aaa", "bbb")):
        rid = tracking.start_run(uri, "reps", f"seed{i}", {"seed": i}, as_tags(_record(data_digest=digest)))
        tracking.end_run(uri, rid)
        kids.append(tracking.get_run(uri, rid))
    parent = tracking.start_run(uri, "reps", "parent", {}, {"replicate_role": "parent"})
    _copy_comparability(uri, parent, kids)
    tags = tracking.get_run(uri, parent).data.tags
    assert tags["cmp.data_digest"] == "mixed:aaa,bbb" and tags["cmp_mixed"] == "data_digest"
    assert tags["cmp.split_seed"] == "v-split_seed"  # agreed keys are carried as they are
    record = from_tags(tags)
    assert tracking.load_json_artifact(uri, parent, "comparability.json") == record
    assert differing_keys(record, from_tags(kids[0].data.tags)) == ["data_digest"]
    assert unknown_keys(record, record) == ["data_digest"]  # not even comparable with itself on that key
    assert _cmp_key(record, parent) == ("incomplete", parent) != _cmp_key(record, "another run")
    # agreeing seeds: the parent's record is theirs, whole
    assert combined([_record(), _record()]) == _record()
    assert combined([_record(), None]) is None
