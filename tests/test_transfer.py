"""Transfer baselines (DCGAN, cDCGAN, InfoGAN): the augmentations change the image, each baseline
generates from k shots end to end, the InfoGAN MI term and cDCGAN conditioning act, 2 workers = 1.

Real images: sklearn's bundled digits (unit tests) and Omniglot from the shared datasets (the
augmentation's white-page background); the CLI test runs the real harness (local Ray, MLflow).
"""
from __future__ import annotations

import copy
import io
import threading

import numpy as np
import pytest
import torch

import methods
from methods.augment import augment, color_jitter, geometric
from methods.transfer import ARCHS, Transfer

TINY = {"width": 4, "z_dim": 8, "augment_to": 24, "finetune_batch": 8, "adapt_steps": 3, "n_cat": 3, "n_cont": 2}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    from orchestrator.data import TaskSampler, load_dataset, make_split

    ds = load_dataset("digits", image_size=16, channels=1)
    split = make_split(ds, seed=0)
    return ds, split, TaskSampler(ds, split.base, 0)


@pytest.fixture(scope="module")
def glyphs(data_root):
    from orchestrator.data import load_dataset

    ds = load_dataset("omniglot", data_root, image_size=32, channels=1)
    return ds.get(ds.class_indices(3)[:4]).float()


def make(ds, **over) -> Transfer:
    return Transfer({**TINY, **over}, ds.image_shape, "cpu", ds.num_classes)


def snap(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def max_diff(a, b) -> float:
    return max(float((x.detach() - y.detach()).abs().max()) for x, y in zip(a, b))


# ------------------------------------------------------------------ augmentation
def test_augmentations_change_every_image_and_keep_its_content(glyphs):
    torch.manual_seed(0)
    rng_state = torch.get_rng_state()
    out = augment(glyphs, 60, seed=1)
    assert torch.equal(torch.get_rng_state(), rng_state)  # seeded by its own generator
    assert out.shape == (60, *glyphs.shape[1:]) and out.min() >= -1 and out.max() <= 1
    assert torch.equal(out, augment(glyphs, 60, seed=1)) and not torch.equal(out, augment(glyphs, 60, seed=2))
    src = glyphs[torch.arange(60) % 4]
    per_image = (out - src).abs().flatten(1).max(1).values
    assert bool((per_image > 0.3).all())  # every augmented image differs from its shot
    # ...yet stays closest (pixel MSE) to its own shot more often than chance (1/4): content is kept
    d = ((out[:, None] - glyphs[None]) ** 2).flatten(2).mean(2)
    assert float((d.argmin(1) == torch.arange(60) % 4).float().mean()) > 0.5
    # the page stays a page: the border fill is the image's background (white), not black corners
    corners = out[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert float((corners < -0.5).float().mean()) < 0.05


def test_colour_jitter_and_geometry_each_change_pixels(glyphs):
    unit = (glyphs + 1) / 2
    g = torch.Generator().manual_seed(0)
    jit = color_jitter(unit.repeat(8, 1, 1, 1), g)
    # same geometry, different pixel values: the page brightness (median) varies between copies
    assert float((jit - unit.repeat(8, 1, 1, 1)).abs().amax(dim=(1, 2, 3)).min()) > 0.02
    assert float(jit.flatten(1).median(1).values.std()) > 0.02
    geo = geometric(unit.repeat(8, 1, 1, 1), torch.Generator().manual_seed(0))
    ink = 1 - geo  # where the strokes are moves: the ink centroid shifts between copies
    ys = torch.arange(32, dtype=torch.float32).view(1, 1, 32, 1)
    cy = (ink * ys).sum((1, 2, 3)) / ink.sum((1, 2, 3))
    assert float(cy.std()) > 0.2
    rgb = torch.rand(3, 3, 16, 16)
    hue = color_jitter(rgb, torch.Generator().manual_seed(0))
    assert hue.shape == rgb.shape and float((hue - rgb).abs().max()) > 0.02


# ------------------------------------------------------------------ each baseline end to end
@pytest.mark.numerical
@pytest.mark.parametrize("arch", ARCHS)
def test_each_baseline_pretrains_then_generates_from_k_shots(digits, arch):
    ds, split, sampler = digits
    m = make(ds, arch=arch)
    init = snap(m.parameters())
    for step in range(2):  # pre-training on base classes
        out = m.meta_train_step(sampler.tasks(step, range(3), 4))
        assert all(np.isfinite(v) for v in out.values()) and {"d_loss", "g_loss"} <= set(out)
        assert ("info_loss" in out) == (arch == "infogan")
    assert max_diff(m.parameters(), init) > 0
    before = snap(m.parameters())
    shots = ds.get(ds.class_indices(split.novel[0])[:4])
    adapted = m.adapt(shots, seed=5)
    assert max_diff(m.parameters(), before) == 0  # fine-tuning works on copies
    x = adapted.sample(6, seed=1)
    assert x.shape == (6, *ds.image_shape) and x.dtype == torch.float32 and x.abs().max() <= 1
    assert torch.equal(x, m.adapt(shots, seed=5).sample(6, seed=1))  # seeded end to end
    unadapted = m.adapt(shots, seed=5, steps=0).sample(6, seed=1)
    assert float((unadapted - x).abs().max()) > 1e-4  # fine-tuning changed the generator
    assert not torch.equal(x, adapted.sample(6, seed=2))


@pytest.mark.numerical
def test_infogan_mutual_information_term(digits):
    ds, _, sampler = digits
    m = make(ds, arch="infogan", info_cont_weight=0.5)
    q = torch.tensor([[2.0, 0.0, 0.0, 0.3, -0.2], [0.0, 1.0, 0.0, 0.5, 0.5]])
    codes = {"cat": torch.tensor([0, 2]), "cont": torch.tensor([[0.1, -0.2], [0.5, -0.5]])}
    ce = torch.nn.functional.cross_entropy(q[:, :3], codes["cat"])
    mse = ((q[:, 3:] - codes["cont"]) ** 2).mean()
    assert m.info_loss(q, codes).item() == pytest.approx((ce + 0.5 * mse).item(), rel=1e-6)
    # the codes reach G: changing the categorical code changes the image for the same z
    z = torch.randn(1, 8)
    with torch.no_grad():
        imgs = [m.G(torch.cat([z, torch.nn.functional.one_hot(torch.tensor([c]), 3).float(), torch.zeros(1, 2)], 1))
                for c in range(3)]
    assert float((imgs[0] - imgs[1]).abs().max()) > 1e-5
    # and the MI term changes the update: with info weights 0 the same step gives other parameters
    a, b = make(ds, arch="infogan"), make(ds, arch="infogan", info_weight=0.0, info_cont_weight=0.0)
    ts = sampler.tasks(0, range(3), 4)
    a.meta_train_step(ts)
    b.meta_train_step(ts)
    assert max_diff(list(a.D.q.parameters()), list(b.D.q.parameters())) > 0
    assert max_diff(list(a.G.parameters()), list(b.G.parameters())) > 0


@pytest.mark.numerical
def test_cdcgan_is_conditioned_on_the_class_and_the_new_class_slot(digits):
    ds, split, sampler = digits
    m = make(ds, arch="cdcgan")
    assert m.labels == ds.num_classes + 1 and m.new_label == ds.num_classes
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    onehot = lambda c: torch.nn.functional.one_hot(torch.tensor([c, c]), m.labels).float()  # noqa: E731
    with torch.no_grad():
        assert float((m.G(torch.cat([z, onehot(0)], 1)) - m.G(torch.cat([z, onehot(1)], 1))).abs().max()) > 1e-5
        x = torch.rand(2, *ds.image_shape) * 2 - 1
        assert float((m.D(x, onehot(0))[0] - m.D(x, onehot(1))[0]).abs().max()) > 1e-6
    ts = sampler.tasks(0, range(3), 4)
    m.meta_train_step(ts)
    seen = sorted({t.label for t in ts})
    assert [int(v) for v in m.class_usage.nonzero().flatten()] == seen
    assert float(m.class_usage.sum()) == len(seen)  # 1 per seen class
    G, D = copy.deepcopy(m.G), copy.deepcopy(m.D)
    m._new_class_slot(G, D)
    cols = G.fc.weight[:, 8:]
    assert torch.allclose(cols[:, m.new_label], cols[:, seen].mean(1))
    assert torch.allclose(D.label.weight[:, m.new_label], D.label.weight[:, seen].mean(1))
    with pytest.raises(ValueError, match="num_classes"):
        Transfer({**TINY, "arch": "cdcgan"}, ds.image_shape, "cpu", 0)


@pytest.mark.numerical
@pytest.mark.parametrize("arch", ["cdcgan", "infogan"])
def test_two_workers_equal_one_and_checkpoint_round_trip(digits, arch):
    ds, _, sampler = digits
    ts = sampler.tasks(3, range(4), 4)
    one, w0, w1 = make(ds, arch=arch), make(ds, arch=arch), make(ds, arch=arch)
    one.meta_train_step(ts)
    barrier, box = threading.Barrier(2), [None, None]

    def make_sync(rank):
        def sync(params):
            params = [p for p in params if p.grad is not None]
            box[rank] = [p.grad.clone() for p in params]
            barrier.wait()
            for p, other in zip(params, box[1 - rank]):
                p.grad.add_(other).div_(2)
            barrier.wait()
        return sync

    threads = [threading.Thread(target=w.meta_train_step, args=(part, make_sync(r)))
               for r, (w, part) in enumerate(((w0, ts[:2]), (w1, ts[2:])))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max_diff(w0.parameters(), w1.parameters()) == 0
    assert max_diff(w0.parameters(), one.parameters()) < 1e-5  # incl. the classes seen by either worker
    if arch == "cdcgan":
        assert float(one.class_usage.sum()) == len({t.label for t in ts})

    buf = io.BytesIO()
    torch.save(one.state_dict(), buf)
    buf.seek(0)
    other = make(ds, arch=arch, init_seed=3)
    other.load_state_dict(torch.load(buf, weights_only=False))
    nxt = sampler.tasks(4, range(4), 4)
    one.meta_train_step(nxt)
    other.meta_train_step(nxt)
    assert max_diff(one.parameters(), other.parameters()) == 0
    with pytest.raises(ValueError):
        make(ds, arch="dcgan").load_state_dict(one.state_dict())


def test_registered_and_bad_options(digits):
    ds, _, _ = digits
    assert methods.get("transfer") is Transfer
    assert Transfer.default_config["arch"] == "dcgan" and Transfer.default_config["augment_to"] == 300
    with pytest.raises(ValueError, match="arch"):
        make(ds, arch="stylegan")
    with pytest.raises(ValueError, match="multiple of 8"):
        Transfer(TINY, (1, 28, 30), "cpu", 10)


@pytest.mark.slow  # a whole train run; pretraining and adapt unit-tested above, the CLI in test_train
def test_cli_train_infogan_reports_the_protocol_and_mode_score(tmp_path, ray_local, capsys):
    import json

    from orchestrator import tracking
    from orchestrator.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["train", "transfer", "--steps", "2", "--tracking-uri", uri, "--json",
                 "--set", "arch=infogan", "--set", "width=4", "--set", "adapt_steps=2", "--set", "augment_to=16",
                 "--set", "finetune_batch=8", "--set", "eval_every=2", "--set", "val_generate=72",
                 "--set", "n_generate=40", "--set", "select_metric=last"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = tracking.get_run(uri, out["run_id"]).data.metrics
    for key in ("fid_domain", "kid_domain", "class_hit", "mse", "ssim", "mode_score_domain", "inception_score_domain",
                "fid_domain_scratch", "mode_score_domain_scratch", "info_loss"):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert tracking.get_run(uri, out["run_id"]).data.params["arch"] == "infogan"
