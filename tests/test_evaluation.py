"""The evaluation protocol on real digits: metrics, feature spaces (domain cache, offline Inception), controls.

The "methods" here are two tiny test doubles of the Method interface (adapt/sample) that return
real images, so the expected scores are known: no Ray, MLflow or pytorch-fid is mocked.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.data import make_split
from orchestrator.evaluation import (FID_WEIGHTS_FILENAME, EvalResult, MetricNotComputed, class_hit, diversity,
                                     domain_features, evaluate_generator, fid, get_features, kid, mse_ssim, save_grid,
                                     split_shots, standardise)
from orchestrator.evaluation import features as feat_mod


# ------------------------------------------------------------------------------ metrics ------

@pytest.mark.numerical
def test_fid_zero_on_itself_and_grows_with_mean_shift():
    x = np.random.default_rng(0).normal(size=(400, 16))
    assert abs(fid(x, x)) < 1e-6
    shifts = [fid(x, x + s) for s in (0.5, 1.0, 2.0)]
    # pure mean shift s in every one of 16 dims: FID = 16 s^2 exactly
    np.testing.assert_allclose(shifts, [16 * 0.25, 16 * 1.0, 16 * 4.0], rtol=1e-6)


@pytest.mark.numerical
def test_kid_unbiased_near_zero_on_halves_positive_when_shifted():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 32))
    same = kid(x[:300], x[300:])
    shifted = kid(x[:300], x[300:] + 0.5)
    assert abs(same) < 0.01, same
    assert shifted > 0.2 and shifted > 20 * abs(same)
    # the unbiased estimator is ~0 on small sets too (a biased one would be clearly positive here)
    small = [kid(rng.normal(size=(20, 32)), rng.normal(size=(20, 32))) for _ in range(50)]
    assert abs(np.mean(small)) < 0.02
    # averaged over subsets when large: close to the all-data value
    big_a, big_b = rng.normal(size=(1500, 8)), rng.normal(size=(1500, 8)) + 0.3
    assert kid(big_a, big_b, subset_size=500, n_subsets=20) == pytest.approx(kid(big_a, big_b, subset_size=5000),
                                                                             rel=0.15)


@pytest.mark.numerical
def test_diversity_and_class_hit_by_hand():
    a = np.array([[0.0, 0.0], [3.0, 4.0]])  # one pair, distance 5
    b = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]])  # distances 1, 2, 1 -> 4/3
    assert diversity({0: a, 1: b}) == pytest.approx((5 + 4 / 3) / 2)
    cents = np.array([[0.0, 0.0], [10.0, 0.0]])
    gen = {0: np.array([[1.0, 0.0], [9.0, 0.0]]), 1: np.array([[8.0, 1.0], [7.0, 0.0], [2.0, 0.0]])}
    assert class_hit(gen, cents) == pytest.approx(3 / 5)


@pytest.mark.numerical
def test_mse_ssim_nearest_real(digits):
    ds, split = digits
    reals = ds.class_images(split.novel[0])
    mse, ssim = mse_ssim(reals[:10], reals)  # every image's nearest real is itself
    assert mse == pytest.approx(0.0, abs=1e-12) and ssim == pytest.approx(1.0)
    noise = torch.rand(10, *ds.image_shape) * 2 - 1
    mse_n, ssim_n = mse_ssim(noise, reals)
    assert mse_n > 0.1 and ssim_n < 0.2


# ------------------------------------------------------------------------------ features -----

@pytest.mark.numerical
def test_domain_features_trained_once_on_base_only(digits, dom, tmp_path_factory, monkeypatch):
    ds, split = digits
    assert dom.kind == "domain" and dom.dim == 64
    assert dom.classes == split.base and not set(dom.classes) & set(split.val + split.novel)
    assert dom.net.net.head.out_features == len(split.base)
    assert dom.base_accuracy > 0.9  # held-out base images
    f = dom(ds.get(np.arange(5)))
    assert f.shape == (5, 64) and np.isfinite(f).all()

    calls = []
    real_train = feat_mod.train_domain_classifier
    monkeypatch.setattr(feat_mod, "train_domain_classifier", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    mtime = dom.source.stat().st_mtime_ns
    again = domain_features(ds, split, dom.source.parent)  # cache hit: loads the file
    assert calls == [] and dom.source.stat().st_mtime_ns == mtime
    np.testing.assert_allclose(again(ds.get(np.arange(5))), f, rtol=1e-5, atol=1e-6)
    other = make_split(ds, seed=1)  # another split is another classifier
    assert feat_mod._domain_cache_path(dom.source.parent, feat_mod._domain_key(ds, other, 8, 0)) != dom.source


def test_domain_classifier_sees_only_base_class_images(digits, tmp_path, monkeypatch):
    ds, split = digits
    seen: list[int] = []
    real_get = ds.get
    monkeypatch.setattr(ds, "get", lambda idx: seen.extend(np.asarray(idx).ravel().tolist()) or real_get(idx))
    feats = domain_features(ds, split, tmp_path, epochs=1)
    assert seen and set(ds.labels[seen]) == set(split.base)
    assert pickle.loads(pickle.dumps(feats)).dim == 64  # shipped to Ray workers with ray.put


def _write_random_fid_inception(path: Path) -> dict:
    torch.manual_seed(0)
    state = feat_mod.fid_inception_architecture().state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_inception_loads_offline_from_explicit_file_and_hub_cache(digits, tmp_path, monkeypatch):
    ds, split = digits
    weights = tmp_path / "w" / "my_inception.pth"  # any name: linked under pytorch-fid's name
    state = _write_random_fid_inception(weights)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))  # nothing cached there
    hub_before = torch.hub.get_dir()
    feats = get_features(ds, split, tmp_path / "cache", inception_weights=weights)
    assert feats.kind == "inception" and feats.dim == 2048
    assert torch.hub.get_dir() == hub_before  # hub dir restored
    loaded = feats.net.inception.blocks[0][0].conv.weight  # Conv2d_1a_3x3: from our file, not a fresh init
    assert torch.equal(loaded.cpu(), state["Conv2d_1a_3x3.conv.weight"])
    out = feats(ds.get(np.arange(2)))  # grayscale 32x32 -> 3 x 299 x 299 inside
    assert out.shape == (2, 2048) and np.isfinite(out).all()

    # no explicit path: found in $TORCH_HOME/hub/checkpoints under pytorch-fid's file name
    home = tmp_path / "torch_home"
    os.makedirs(home / "hub" / "checkpoints")
    os.link(weights, home / "hub" / "checkpoints" / FID_WEIGHTS_FILENAME)
    monkeypatch.setenv("TORCH_HOME", str(home))
    assert get_features(ds, split, tmp_path / "cache", inception_weights=None).kind == "inception"


def test_missing_explicit_inception_weights_is_a_user_error(digits, tmp_path):
    from orchestrator.errors import UserError

    ds, split = digits
    with pytest.raises(UserError, match="Inception weights not found"):
        get_features(ds, split, tmp_path, inception_weights=tmp_path / "nope.pth")


# ------------------------------------------------------------------------------ protocol -----

class _Sampler:
    def __init__(self, pool: torch.Tensor):
        self.pool = pool

    def sample(self, n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return self.pool[torch.randint(len(self.pool), (n,), generator=g)]


class RealImages:
    """Test double of a method: 'generates' real images of the shots' class (found by exact match)."""

    def __init__(self, ds, classes=None, wrong=False):
        self.ds, self.classes, self.wrong = ds, classes, wrong
        self.seen: list[tuple[torch.Tensor, int, int | None]] = []

    def adapt(self, shots, seed, steps=None):
        self.seen.append((shots.clone(), seed, steps))
        hit = (self.ds.images == ((shots[:1] + 1) * 127.5).round().to(torch.uint8)).flatten(1).all(1)
        c = int(self.ds.labels[int(hit.nonzero()[0])])
        if self.wrong:  # random images from any of the evaluated classes: class hit ~ chance
            return _Sampler(torch.cat([self.ds.class_images(k) for k in self.classes]))
        return _Sampler(self.ds.class_images(c))


class Noise:
    def adapt(self, shots, seed, steps=None):
        return self

    def sample(self, n, seed):
        return torch.rand(n, *self.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_seeded_shots_reproducible(digits):
    ds, split = digits
    c = split.novel[0]
    a, ra = split_shots(ds, c, 4, seed=0)
    b, rb = split_shots(ds, c, 4, seed=0)
    assert np.array_equal(a, b) and np.array_equal(ra, rb)
    assert set(a).isdisjoint(ra) and sorted(np.concatenate([a, ra])) == sorted(ds.class_indices(c))
    assert not np.array_equal(split_shots(ds, c, 4, seed=1)[0], a)


@pytest.mark.numerical
def test_protocol_real_generator_hits_and_controls(digits, dom, tmp_path):
    ds, split = digits
    classes = split.val + split.novel
    noise = Noise(); noise.shape = ds.image_shape
    real = RealImages(ds)
    res = evaluate_generator(real, lambda: noise, ds, classes, dom, shots=4, n_generate=48, seed=3, adapt_steps=7,
                             progress=False)
    m = res.metrics
    # real images of the right class score what the reals themselves score (the ceiling: features
    # trained on base classes separate unseen digits well but not perfectly), far above chance
    assert m["class_hit"] == pytest.approx(m["class_hit_real"], abs=0.05)
    assert m["class_hit"] > 0.8 and m["chance"] == pytest.approx(1 / 3)
    assert m["fid_domain"] < 0.5 * m["fid_domain_scratch"]  # real images beat noise by far
    assert m["class_hit_scratch"] < 0.9
    assert m["mse"] < 0.5 * m["mse_shots"] and m["ssim"] > m["ssim_shots"]  # mostly exact reals

    # the method saw exactly the seeded shots, with the given steps (a chunk of classes adapted ahead through
    # adapt_many), then steps=0 (unadapted)
    shot_idx = {c: split_shots(ds, c, 4, seed=3)[0] for c in classes}
    assert res.shot_indices == {c: list(v) for c, v in shot_idx.items()}
    assert [s for _, _, s in real.seen] == [7] * len(classes) + [0] * len(classes)
    assert torch.equal(real.seen[0][0], ds.get(shot_idx[classes[0]]))

    # the shots control is the shots repeated to n_generate, scored against the same reals, both standardised
    # with the base classes' feature statistics
    mu, sd = dom.base_statistics(ds)
    reals = standardise(np.concatenate([dom(ds.get(split_shots(ds, c, 4, seed=3)[1])) for c in classes]), mu, sd)
    reps = standardise(np.concatenate([dom(ds.get(shot_idx[c]).repeat(12, 1, 1, 1)) for c in classes]), mu, sd)
    assert m["features_standardised"] == 1
    assert m["fid_domain_shots"] == pytest.approx(fid(reps, reals), rel=1e-6)
    assert m["kid_domain_shots"] == pytest.approx(kid(reps, reals), rel=1e-6, abs=1e-9)
    assert m["fid_domain_real"] < m["fid_domain_scratch"]

    # sample grid: shots + 8 generated per class row
    assert res.grid_nrow == 12 and res.grid.shape == (3 * 12, *ds.image_shape)
    assert res.grid.min() >= -1 and res.grid.max() <= 1
    png = save_grid(res.grid, tmp_path / "g" / "grid.png", nrow=res.grid_nrow)
    assert png.stat().st_size > 500

    # same seed -> same numbers (NaN, the not-computed ones, compared as equal)
    again = evaluate_generator(RealImages(ds), lambda: noise, ds, classes, dom, shots=4, n_generate=48, seed=3,
                               adapt_steps=7, progress=False)
    assert again.metrics.keys() == m.keys()
    np.testing.assert_equal(again.metrics, m)
    np.testing.assert_equal(again.per_class, res.per_class)


@pytest.mark.numerical
def test_protocol_wrong_class_generator_at_chance_and_cheap_path(digits, dom):
    ds, split = digits
    classes = split.val + split.novel
    res = evaluate_generator(RealImages(ds, classes, wrong=True), None, ds, classes, dom, shots=4, n_generate=96,
                             seed=0, controls=False, progress=False)
    m = res.metrics
    assert abs(m["class_hit"] - 1 / 3) < 0.12
    # controls=False: only the adapted scores (used for checkpoint selection on validation classes)
    assert {"fid_domain", "kid_domain", "class_hit"} <= set(m)
    assert not any(k.endswith(("_scratch", "_unadapted", "_shots", "_real")) or k in ("mse", "ssim") for k in m)


class WithDiagnostics(RealImages):
    """A method that reports its own measurements through ``Method.diagnostics``."""

    def diagnostics(self, shots, seed):
        from methods import Diagnostics

        first = next(iter(shots.values()))
        return Diagnostics(metrics={"n_diag_classes": float(len(shots)), "diag_seed": float(seed)},
                           figures={"shots_strip": (torch.cat(list(shots.values())), first.shape[0])})


def test_method_diagnostics_get_the_protocols_shots_and_land_in_the_result(digits, dom, tmp_path):
    from orchestrator.evaluation import save_result_images

    ds, split = digits
    classes = split.val + split.novel
    res = evaluate_generator(WithDiagnostics(ds), None, ds, classes, dom, shots=2, n_generate=8, seed=5,
                             controls=False, progress=False)
    assert res.metrics["n_diag_classes"] == len(classes) and res.metrics["diag_seed"] == 5
    strip, nrow = res.figures["shots_strip"]
    expected = torch.cat([ds.get(split_shots(ds, c, 2, seed=5)[0]).float() for c in classes])
    assert nrow == 2 and torch.equal(strip, expected)
    paths = save_result_images(res, tmp_path, "grid.png", suffix="_x")
    assert [p.name for p in paths] == ["grid.png", "shots_strip_x.png"] and all(p.stat().st_size > 100 for p in paths)


@pytest.mark.numerical
def test_protocol_inception_and_mode_score_from_the_base_classifier(digits, dom):
    """MT-GAN's metrics (eq. 2-3) from the domain classifier's softmax, pooled: reals of the class score like the
    reals; one class's images for every class (wrong marginal) lose Mode Score relative to their Inception Score."""
    from orchestrator.evaluation import inception_score, mode_score

    ds, split = digits
    classes = split.val + split.novel
    probs = dom.class_probs(dom(ds.get(np.arange(20))))
    assert probs.shape == (20, len(split.base)) and np.allclose(probs.sum(1), 1)
    good = evaluate_generator(RealImages(ds), None, ds, classes, dom, shots=4, n_generate=64, seed=0,
                              controls=True, progress=False).metrics
    assert good["mode_score_domain"] == pytest.approx(good["inception_score_domain_real"], rel=0.1)
    assert 1 <= good["inception_score_domain"] <= len(split.base)
    # the number is exactly eq. 3 on the pooled probabilities of the reals and the shots control's fakes
    reals = np.concatenate([dom(ds.get(split_shots(ds, c, 4, seed=0)[1])) for c in classes])
    shots = np.concatenate([np.tile(dom(ds.get(split_shots(ds, c, 4, seed=0)[0])), (16, 1)) for c in classes])
    assert good["mode_score_domain_shots"] == pytest.approx(mode_score(dom.class_probs(shots), dom.class_probs(reals)),
                                                            rel=1e-9)
    assert good["inception_score_domain_shots"] == pytest.approx(inception_score(dom.class_probs(shots)), rel=1e-9)

    class OneClass(RealImages):  # every class gets images of the first class only
        def adapt(self, shots, seed, steps=None):
            return _Sampler(self.ds.class_images(classes[0]))

    bad = evaluate_generator(OneClass(ds), None, ds, classes, dom, shots=4, n_generate=64, seed=0, controls=False,
                             progress=False).metrics
    assert bad["mode_score_domain"] < bad["inception_score_domain"] and bad["mode_score_domain"] < good["mode_score_domain"]


# ------------------------------------------------------------ copying, floors, degenerate -----

class HeldOutReals:
    """Test double that 'generates' the class's held-out real images (never its shots): a perfect generator."""

    def __init__(self, ds, seed):
        self.ds, self.seed = ds, seed

    def adapt(self, shots, seed, steps=None):
        hit = (self.ds.images == ((shots[:1] + 1) * 127.5).round().to(torch.uint8)).flatten(1).all(1)
        c = int(self.ds.labels[int(hit.nonzero()[0])])
        return _Sampler(self.ds.get(split_shots(self.ds, c, len(shots), self.seed)[1]).float())


@pytest.fixture(scope="module")
def held_out_eval(digits, dom):
    ds, split = digits
    classes = split.val + split.novel
    return classes, evaluate_generator(HeldOutReals(ds, 0), None, ds, classes, dom, shots=4, n_generate=128, seed=0,
                                       progress=False)


@pytest.mark.numerical
def test_shots_control_scores_as_a_copy_real_images_do_not(held_out_eval):
    classes, res = held_out_eval
    m = res.metrics
    # the shots repeated: every sample is closer to a shot than (almost) any real image -> share 1;
    # repeating 4 images covers almost none of the reals and recalls none of them
    assert m["memorized_share_shots"] == 1.0 and res.per_class["memorized_share_shots"] == [1.0] * len(classes)
    assert m["recall_domain_shots"] < 0.05 and m["coverage_domain_shots"] < 0.3
    # A copy's nearest-shot distance is 0 up to rounding, not exactly: its float32 features come from another batch
    # (kernels may sum in another order per batch position: ~1e-7 of the feature norm) and the float64 expansion
    # |x|^2 - 2 x.s + |s|^2 leaves sqrt(~u64 |x|^2) ~ 1e-8 |x|. Relative to the reals' median distance (the
    # denominator, a sizable share of |x|) that is far below 1e-4; a non-copy scores ~1 (asserted below).
    assert 0.0 <= m["shot_distance_ratio_shots"] < 1e-4
    # real images: at the rule's nominal rate (k/(n+1), about 5%), high recall and coverage
    assert m["memorized_share_real"] == pytest.approx(m["memorized_nominal"], abs=0.01) and m["memorized_nominal"] < 0.06
    assert m["recall_domain_real"] > 0.85 and m["coverage_domain_real"] > 0.85
    # a generator of held-out real images is not a copier either, and it recalls and covers the class
    assert m["memorized_share"] < 3 * m["memorized_nominal"]
    assert m["recall_domain"] > 0.85 and m["coverage_domain"] > 0.85 and m["precision_domain"] > 0.85
    assert 0.8 < m["shot_distance_ratio"] < 1.25
    # on base-standardised features FID no longer lets copying pass for the floor
    assert m["fid_domain_shots"] > 5 * m["fid_domain_real"]
    assert m["diverged"] == 0 and not res.not_computed


@pytest.mark.numerical
def test_per_class_values_are_listed_in_class_order_and_average_to_the_headline(held_out_eval):
    classes, res = held_out_eval
    m = res.metrics
    assert res.classes == classes
    expected = {"class_hit", "fid_domain_per_class", "memorized_share", "shot_distance_ratio", "precision_domain",
                "recall_domain", "density_domain", "coverage_domain", "diversity", "mse", "ssim", "mse_shots",
                "ssim_shots", "memorized_share_real", "fid_domain_per_class_real", "recall_domain_real"}
    assert expected <= set(res.per_class)
    assert not {"fid_domain", "kid_domain", "class_hit_real", "fid_domain_real"} & set(res.per_class)  # pooled
    for name, values in res.per_class.items():
        assert len(values) == len(classes), name
        assert m[name] == pytest.approx(np.mean(values), rel=1e-12), name
    # per-class FID is computed here (128 samples and ~176 reals per class > 64 dims) and is its own number
    assert np.isfinite(res.per_class["fid_domain_per_class"]).all()
    assert m["fid_domain_per_class"] != pytest.approx(m["fid_domain"])
    assert EvalResult(metrics={}, grid=torch.zeros(1, 1, 2, 2), grid_nrow=1).per_class == {}


@pytest.mark.numerical
def test_real_floor_is_computed_at_the_methods_sample_sizes(digits, dom, held_out_eval):
    """The same-distribution FID falls with the sample size, so the floor must be taken at the method's sizes."""
    ds, split = digits
    classes, res128 = held_out_eval
    res32 = evaluate_generator(HeldOutReals(ds, 0), None, ds, classes, dom, shots=4, n_generate=32, seed=0,
                               progress=False).metrics
    m = res128.metrics
    assert res32["fid_domain_real"] > 1.5 * m["fid_domain_real"]
    # KID's unbiased estimator sits at 0 on the floor, within its spread; the spread shrinks with n too
    assert abs(m["kid_domain_real"]) < 3 * m["kid_domain_std_real"]
    assert res32["kid_domain_std_real"] > m["kid_domain_std_real"]
    assert m["kid_subset_size"] == min(1000, 128 * 3 // 2, int(m["n_reals"]) // 2)


@pytest.mark.numerical
def test_base_statistics_are_the_base_classes_real_feature_moments(digits, dom):
    ds, split = digits
    mu, sd = dom.base_statistics(ds)
    base_idx = np.concatenate([ds.class_indices(c) for c in split.base])  # < 5000: every base image
    feats = dom(ds.get(base_idx).float())
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sd, feats.std(0), rtol=1e-5, atol=1e-6)
    assert dom.base_classes == split.base


@pytest.mark.numerical
def test_feature_scale_does_not_change_standardised_fid_and_kid(digits, dom):
    """A feature space rescaled by 1000 and shifted (same information) gives the same FID/KID once standardised."""
    from orchestrator.evaluation.features import Features

    ds, split = digits

    class Affine(torch.nn.Module):
        def forward(self, x):
            return x * 1000.0 + 7.0

    scaled = Features("domain", 64, torch.nn.Sequential(dom.net, Affine()), dom.preprocess,
                      base_classes=split.base)  # a fresh object: statistics computed, not read from the cache
    classes = split.val + split.novel
    a = evaluate_generator(RealImages(ds), None, ds, classes, dom, shots=4, n_generate=48, seed=1, controls=False,
                           progress=False).metrics
    b = evaluate_generator(RealImages(ds), None, ds, classes, scaled, shots=4, n_generate=48, seed=1, controls=False,
                           progress=False).metrics
    for name in ("fid_domain", "kid_domain"):
        assert b[name] == pytest.approx(a[name], rel=1e-4, abs=1e-6), name
    for name in ("memorized_share", "recall_domain", "coverage_domain"):  # counts: float32 rounding may flip one
        assert b[name] == pytest.approx(a[name], abs=0.01), name


class Diverged:
    """A model whose samples are NaN (every third image), as a diverged GAN's are."""

    def __init__(self, shape):
        self.shape = shape

    def adapt(self, shots, seed, steps=None):
        return self

    def sample(self, n, seed):
        x = torch.rand(n, *self.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        x[::3] = float("nan")
        return x


@pytest.mark.numerical
def test_diverged_model_is_scored_as_failed_not_a_crash(digits, dom):
    ds, split = digits
    classes = split.val + split.novel
    res = evaluate_generator(Diverged(ds.image_shape), None, ds, classes, dom, shots=4, n_generate=48, seed=0,
                             progress=False)
    m = res.metrics
    assert m["diverged"] == 1 and m["diverged_unadapted"] == 1
    for name in ("fid_domain", "kid_domain", "kid_domain_std", "class_hit", "memorized_share", "recall_domain",
                 "coverage_domain", "mse", "ssim", "inception_score_domain", "diversity", "fid_domain_unadapted"):
        assert np.isnan(m[name]) and m[f"{name}_computed"] == 0, name
        assert res.not_computed[name].startswith("diverged: 48 of 144"), name
    assert all(np.isnan(res.per_class["memorized_share"]))
    # the controls that do not come from the model are scored as usual
    assert np.isfinite(m["fid_domain_shots"]) and m["memorized_share_shots"] == 1.0 and np.isfinite(m["fid_domain_real"])
    assert "fid_domain_shots_computed" not in m
    assert torch.isfinite(res.grid).all()
    cheap = evaluate_generator(Diverged(ds.image_shape), None, ds, classes, dom, shots=4, n_generate=8, seed=0,
                               controls=False, progress=False).metrics
    assert cheap["diverged"] == 1 and np.isnan(cheap["fid_domain"])


@pytest.mark.numerical
def test_too_few_samples_give_not_computed_never_a_degenerate_number(digits, dom):
    ds, split = digits
    classes = split.val + split.novel
    res = evaluate_generator(RealImages(ds), None, ds, classes, dom, shots=4, n_generate=8, seed=0, controls=False,
                             progress=False)
    m = res.metrics
    # 3 classes x 8 = 24 pooled samples for 64 feature dims: the covariance is singular by construction
    assert np.isnan(m["fid_domain"]) and m["fid_domain_computed"] == 0
    assert "singular by construction" in res.not_computed["fid_domain"]
    assert np.isfinite(m["kid_domain"]) and "kid_domain_computed" not in m  # KID is fine on small sets
    assert np.isfinite(m["recall_domain"])  # 8 >= k + 2 = 7
    tiny = evaluate_generator(RealImages(ds), None, ds, classes, dom, shots=4, n_generate=4, seed=0, controls=False,
                              progress=False)
    assert np.isnan(tiny.metrics["recall_domain"]) and tiny.metrics["recall_domain_computed"] == 0
    assert "at least 7" in tiny.not_computed["recall_domain"]
    assert tiny.per_class["recall_domain"] == [pytest.approx(float("nan"), nan_ok=True)] * len(classes)
    with pytest.raises(MetricNotComputed):
        fid(np.zeros((10, 64)), np.zeros((100, 64)))
