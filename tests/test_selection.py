"""Checkpoint selection on validation class-specificity (issue 21 item 3).

Generators select the checkpoint with the higher validation ``class_hit`` by default; classifiers keep
``val_accuracy``; MT-GAN keeps the latest. The evaluations are real: the validation protocol on the bundled
digits' validation classes (two of them: with the
default single validation digit class_hit is 1 by construction), for two FIGR checkpoints (its initialisation and a collapsed copy).
"""
from __future__ import annotations

import math

import pytest
import torch

from orchestrator import config as config_mod
from orchestrator import lifecycle
from orchestrator.kinds import method_class
from orchestrator.loop import select_evaluation, select_step


def resolved(method: str) -> dict:
    cls = method_class(method)
    return config_mod.resolve(cls.default_config, {}, [], cls.harness_defaults)


def test_generators_select_on_val_class_hit_by_default():
    for method in ("mfh", "figr", "transfer"):
        assert resolved(method)["select_metric"] == "val_class_hit", method
    for method in ("protonet", "metairnet"):  # classifiers keep their own validation metric
        assert resolved(method)["select_metric"] == "val_accuracy", method
    assert resolved("mtgan")["select_metric"] == "last"  # never a pre-trained-only checkpoint


@pytest.fixture(scope="module")
def two_evaluations():
    """Validation metrics of two FIGR checkpoints on the digits' validation classes: its initialisation (adapted
    to the shots) and a collapsed one (one grey page for every class: class_hit at chance, 0.5)."""
    cfg = lifecycle.finish_config(config_mod.resolve(method_class("figr").default_config,
                                                     {"steps": 1, "val_generate": 72, "n_val": 2},
                                                     ["width=8", "adapt_steps=3"]))
    prep = lifecycle.prepare("figr", cfg, quiet=True)
    from orchestrator.kinds import build_method

    evals = []
    for name in ("initialised", "collapsed"):
        model = build_method("figr", cfg, prep.ds.image_shape, num_classes=prep.ds.num_classes, seed=0)
        if name == "collapsed":  # every weight 0: one grey page for every class, whatever the shots
            with torch.no_grad():
                for p in model.parameters():
                    p.zero_()
        evals.append((name, prep.kind.validate(model, prep.ds, prep.split, cfg, prep.aids.val, 0, None)))
    return evals


def test_selection_picks_the_higher_val_class_hit(two_evaluations):
    (_, a), (_, b) = two_evaluations
    assert math.isfinite(a["val_class_hit"]) and math.isfinite(b["val_class_hit"])
    assert a["val_class_hit"] != b["val_class_hit"], "the two checkpoints must differ to test a choice"
    chosen, metrics = select_evaluation(two_evaluations, "val_class_hit")
    higher = max(two_evaluations, key=lambda cm: cm[1]["val_class_hit"])
    assert chosen == higher[0] and metrics["val_class_hit"] == max(a["val_class_hit"], b["val_class_hit"])
    # The same evaluations in the other order: the choice follows the value, not the position.
    assert select_evaluation(two_evaluations[::-1], "val_class_hit")[0] == higher[0]
    # FID is a lower-is-better metric: selecting on it picks the lower one.
    lower_fid = min(two_evaluations, key=lambda cm: cm[1]["val_fid_domain"])
    assert select_evaluation(two_evaluations, "val_fid_domain")[0] == lower_fid[0]


def test_selection_ignores_missing_and_nan_values(two_evaluations):
    worse, better = sorted(two_evaluations, key=lambda cm: cm[1]["val_class_hit"])
    with_nan = [(better[0], {**better[1], "val_class_hit": math.nan}), worse]
    assert select_evaluation(with_nan, "val_class_hit")[0] == worse[0]  # a NaN never wins
    assert select_evaluation([("x", {"val_fid_domain": 1.0})], "val_class_hit") is None
    # A tie (one validation class: class_hit is 1 at every step) keeps the latest step.
    tied = [("step2", {"step": 2, "val_class_hit": 1.0}), ("step4", {"step": 4, "val_class_hit": 1.0}),
            ("step3", {"step": 3, "val_class_hit": 1.0})]
    assert select_evaluation(tied, "val_class_hit")[0] == "step4"


def test_a_metric_history_selects_by_the_same_rule():
    """``select_step`` (what a sweep reads a trial's selected checkpoint with, from its MLflow history) is
    ``select_evaluation``'s rule: the best finite value by the metric's direction, ties to the later step."""
    assert select_step({2: 0.5, 4: 0.7, 6: 0.7, 8: 0.6}, "val_class_hit") == 6  # higher is better; tie -> later
    assert select_step({2: 30.0, 4: 20.0, 6: 20.0, 8: math.nan}, "val_fid_domain") == 6  # lower is better; NaN never
    assert select_step({2: math.nan}, "val_class_hit") is None
    assert select_step({}, "val_class_hit") is None
