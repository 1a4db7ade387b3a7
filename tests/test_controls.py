"""The protocol's positive control (``_augmented``) and each method placed between its controls, on real Omniglot.

The "method" is a test double that returns its shots repeated (a copier): it reaches class-specificity by copying,
which the placement must show (its lift in ``memorized_share`` far above the augmented control's). The untrained
control is uniform noise. No Ray or MLflow here; features are the domain classifier trained on the base classes.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from orchestrator.data import load_dataset, make_split
from orchestrator.evaluation import domain_features, evaluate_generator
from orchestrator.evaluation.protocol import augmented_control, split_shots


class _Repeat:
    def __init__(self, images: torch.Tensor):
        self.images = images

    def sample(self, n: int, seed: int) -> torch.Tensor:
        return self.images.repeat(math.ceil(n / len(self.images)), 1, 1, 1)[:n]


class Copier:
    """Test double of a method: 'generates' its shots, repeated."""

    def adapt(self, shots, seed, steps=None):
        return _Repeat(shots.clone())


class Noise:
    """The untrained control's stand-in: uniform noise images, seeded."""

    shape = (1, 32, 32)

    def adapt(self, shots, seed, steps=None):
        return self

    def sample(self, n, seed):
        return torch.rand(n, *self.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def omniglot(data_root):
    ds = load_dataset("omniglot", data_root, image_size=32, channels=1)
    return ds, make_split(ds, seed=0)


@pytest.fixture(scope="module")
def copier_eval(omniglot, tmp_path_factory):
    ds, split = omniglot
    dom = domain_features(ds, split, tmp_path_factory.mktemp("feat"))
    return evaluate_generator(Copier(), Noise, ds, split.novel, dom, shots=4, n_generate=32, seed=0, progress=False)


def test_augmented_control_is_seeded_class_specific_and_keeps_the_white_page(omniglot):
    ds, split = omniglot
    c, d = split.novel[:2]
    shots = ds.get(split_shots(ds, c, 4, 0)[0]).float()
    a = augmented_control(shots, 24, seed=0, c=c)
    assert a.shape == (24, 1, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, augmented_control(shots, 24, seed=0, c=c))  # same seed and class: same images
    assert not torch.allclose(a, augmented_control(shots, 24, seed=1, c=c))
    assert not torch.allclose(a, augmented_control(shots, 24, seed=0, c=d))
    # new images, not the shots: none equals a shot
    assert all((a[i:i + 1] - shots).abs().flatten(1).max(1).values.min() > 0.1 for i in range(len(a)))
    # the uncovered border takes the page's background (white, +1), never black corners
    corners = torch.stack([a[:, 0, 0, 0], a[:, 0, 0, -1], a[:, 0, -1, 0], a[:, 0, -1, -1]])
    assert corners.min() > 0.9


@pytest.mark.slow  # the whole protocol on 66 Omniglot characters (about 100 s alone)
def test_augmented_control_is_class_specific_new_and_diverse_on_omniglot(copier_eval):
    m, per = copier_eval.metrics, copier_eval.per_class
    # the positive control: far above chance on class-specificity (the bar: 5x chance)
    assert m["chance"] < 0.02 and m["class_hit_augmented"] >= 5 * m["chance"]
    # it copies less than the shots do and is more diverse than the (repeated) shots
    assert m["memorized_share_augmented"] < m["memorized_share_shots"]
    assert m["diversity_augmented"] > m["diversity_shots"]
    assert len(per["class_hit_augmented"]) == len(copier_eval.classes)
    assert m["diverged"] == 0 and "diverged_augmented" not in m  # not a model: cannot diverge


@pytest.mark.slow  # the whole protocol on 66 Omniglot characters (about 100 s alone)
def test_method_placed_between_untrained_and_augmented_controls(copier_eval):
    m, per = copier_eval.metrics, copier_eval.per_class
    # the lift over the untrained control, paired by class, averages to the difference of the headlines
    for base in ("class_hit", "diversity", "memorized_share"):
        np.testing.assert_allclose(per[f"lift_{base}"], np.subtract(per[base], per[f"{base}_scratch"]), atol=1e-12)
        assert m[f"lift_{base}"] == pytest.approx(m[base] - m[f"{base}_scratch"], abs=1e-9)
        assert m[f"lift_{base}_augmented"] == pytest.approx(m[f"{base}_augmented"] - m[f"{base}_scratch"], abs=1e-9)
    # noise is at chance, the augmented control well above it: the gap is real and the share is computed
    assert m["lift_class_hit_augmented"] > 0.05
    assert m["gap_closed_class_hit"] == pytest.approx(m["lift_class_hit"] / m["lift_class_hit_augmented"], rel=1e-9)
    # the copier reaches class-specificity by copying: its copying lift is far above the augmented control's
    assert m["lift_memorized_share"] > m["lift_memorized_share_augmented"]
    assert m["memorized_share"] == 1.0  # the copier's samples are its shots
