"""LPIPS diversity from a local backbone file (``--lpips-weights``): the authors' ``lpips`` package with a
torchvision backbone read weights-only; copies score 0, the repeated-shots control scores below the reals."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from orchestrator.data import load_dataset, make_split
from orchestrator.errors import UserError
from orchestrator.evaluation import domain_features, evaluate_generator
from orchestrator.evaluation.lpips_diversity import LpipsDiversity
from tests.test_evaluation import Noise, RealImages


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    """A seeded random AlexNet's ``features.*`` tensors saved as torchvision names them (what LPIPS uses of it)."""
    torch.manual_seed(0)
    state = {k: v for k, v in torchvision.models.alexnet(weights=None).state_dict().items() if k.startswith("features.")}
    path = tmp_path_factory.mktemp("lpips") / "alexnet-features.pth"
    torch.save(state, path)
    return path


@pytest.mark.numerical
def test_copies_are_at_distance_zero_and_distinct_images_are_not(backbone):
    lp = LpipsDiversity(backbone)
    assert lp.net_name == "alex"
    x = torch.rand(6, 1, 32, 32) * 2 - 1
    assert lp(x[:1].repeat(8, 1, 1, 1), seed=0) == 0.0
    d = lp(x, seed=0)
    assert d > 0 and d == lp(x, seed=0)  # seeded pairs: the same number again
    assert np.isnan(lp(x[:1], seed=0)) and np.isnan(lp(torch.full((3, 1, 8, 8), float("nan")), seed=0))


def test_refuses_missing_pickled_and_foreign_files_without_executing_them(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        LpipsDiversity(tmp_path / "nope.pth")
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "payload.pth"
    bad.write_bytes(pickle.dumps({"features.0.weight": Payload()}))
    with pytest.raises(UserError, match="weights-only"):
        LpipsDiversity(bad)
    assert not marker.exists()
    other = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    with pytest.raises(UserError, match="features.0.weight"):
        LpipsDiversity(other)


@pytest.mark.numerical
def test_protocol_reports_lpips_for_the_method_and_its_controls(backbone, tmp_path):
    ds = load_dataset("digits", image_size=32, channels=1)
    split = make_split(ds, seed=0)
    dom = domain_features(ds, split, tmp_path / "feat")
    noise = Noise(); noise.shape = ds.image_shape
    res = evaluate_generator(RealImages(ds), lambda: noise, ds, split.novel, dom, shots=2, n_generate=24, seed=1,
                             progress=False, lpips=LpipsDiversity(backbone))
    m = res.metrics
    for suffix in ("", "_unadapted", "_scratch", "_shots", "_real"):
        assert np.isfinite(m[f"lpips_diversity{suffix}"]), suffix
        assert len(res.per_class[f"lpips_diversity{suffix}"]) == len(split.novel)
    # 2 shots repeated to 24: about half the pairs are copies at distance 0
    assert m["lpips_diversity_shots"] < 0.8 * m["lpips_diversity_real"]
    # real images of the class (the test double) are as varied as the reals
    assert m["lpips_diversity"] == pytest.approx(m["lpips_diversity_real"], rel=0.3)
    without = evaluate_generator(RealImages(ds), None, ds, split.novel, dom, shots=2, n_generate=24, seed=1,
                                 progress=False)
    assert not any(k.startswith("lpips") for k in without.metrics)
