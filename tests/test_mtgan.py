"""Meta Transfer GAN: the losses (eq. 4-7) by hand, the frozen convolutions, eq. 12's average, the
phases through a checkpoint, two workers = one, Mode Score by hand, and a CLI run through all phases.

Unit tests use tiny nets on real digits (sklearn's, bundled) at 16x16; the CLI test runs the real
harness (local Ray, MLflow on SQLite) on digits at 32x32.
"""
from __future__ import annotations

import copy
import io
import math
import threading

import numpy as np
import pytest
import torch

import methods
from methods.base import Task
from methods.mtgan import MTGAN, d_loss, g_loss
from methods.mtgan_nets import SSConv2d
from orchestrator.evaluation import inception_score, mode_score

SMALL = {"width": 4, "z_dim": 8, "n_way": 2, "shots": 2, "queries": 2, "inner_steps": 2, "adapt_steps": 2,
         "pretrain_steps": 1}


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


def make(ds, **over) -> MTGAN:
    return MTGAN({**SMALL, **over}, ds.image_shape, "cpu", ds.num_classes)


def tasks(sampler, step: int, k: int = 2, n: int = 4) -> list[Task]:
    return sampler.tasks(step, range(k), n)


def snap(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def max_diff(a, b) -> float:
    assert len(a) == len(b)
    return max(float((x.detach() - y.detach()).abs().max()) for x, y in zip(a, b))


def paired_syncs():
    """Two ``sync`` callables that all-reduce-mean with each other (two workers run in threads)."""
    barrier, box = threading.Barrier(2), [None, None]

    def make_sync(rank: int):
        def sync(params):
            params = [p for p in params if p.grad is not None]
            box[rank] = [p.grad.clone() for p in params]
            barrier.wait()
            for p, other in zip(params, box[1 - rank]):
                p.grad.add_(other).div_(2)
            barrier.wait()
        return sync

    return make_sync(0), make_sync(1)


# ------------------------------------------------------------------ eq. 4-7 on hand-checked tensors
@pytest.mark.numerical
def test_discriminator_and_generator_losses_match_eq_4_to_7_by_hand():
    # N = 2 real classes + "fake" (index 2); two real images (labels 0, 1), two fakes asked for 1, 0
    real = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    fake = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 3.0]])
    y_real, y_fake = torch.tensor([0, 1]), torch.tensor([1, 0])
    # softmax by hand
    e2 = math.exp(2)
    p_real = [e2 / (e2 + 2), math.e / (math.e + 2)]  # D_y(x) of each real
    p_fake_fake = [math.e / (math.e + 2), math.exp(3) / (math.e + 1 + math.exp(3))]  # D_{N+1} of each fake
    expected_d = -(math.log(p_real[0]) + math.log(p_real[1])) / 2 - (math.log(p_fake_fake[0]) + math.log(p_fake_fake[1])) / 2
    assert d_loss(real, y_real, fake).item() == pytest.approx(expected_d, rel=1e-6)
    # eq. 7 as printed (-log(1 - D_{N+1}) on fakes) is another number, and it would reward calling fakes real
    eq7_literal = -(math.log(p_real[0]) + math.log(p_real[1])) / 2 - (
        math.log(1 - p_fake_fake[0]) + math.log(1 - p_fake_fake[1])) / 2
    assert abs(eq7_literal - expected_d) > 0.5
    more_fake = fake.clone()
    more_fake[:, 2] += 1.0  # D more sure the fakes are fake: eq. 4's loss must fall
    assert d_loss(real, y_real, more_fake) < d_loss(real, y_real, fake)

    # generator, eq. 6: -log D_y(G(z, y)); eq. 5: -log sum_{i<=N} D_i = -log(1 - D_{N+1})
    d_y_fake = [1 / (math.e + 2), math.e / (math.e + 1 + math.exp(3))]
    assert g_loss(fake, y_fake, "class").item() == pytest.approx(-(math.log(d_y_fake[0]) + math.log(d_y_fake[1])) / 2, rel=1e-6)
    assert g_loss(fake, y_fake, "real").item() == pytest.approx(
        -(math.log(1 - p_fake_fake[0]) + math.log(1 - p_fake_fake[1])) / 2, rel=1e-6)
    with pytest.raises(ValueError):
        g_loss(fake, y_fake, "wasserstein")


@pytest.mark.numerical
def test_mode_score_and_inception_score_by_hand():
    # two confident, different predictions: IS = exp(ln 2) = 2
    p = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert inception_score(p) == pytest.approx(2.0)
    assert mode_score(p, np.array([[0.5, 0.5]])) == pytest.approx(2.0)  # marginals agree: MS = IS
    # real marginal (0.9, 0.1): MS = IS * exp(-KL((.5,.5) || (.9,.1)))
    kl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert mode_score(p, np.array([[0.9, 0.1], [0.9, 0.1]])) == pytest.approx(2 * math.exp(-kl))
    # one soft example: p(y|x) = (.8, .2) and (.4, .6), marginal (.6, .4)
    q = np.array([[0.8, 0.2], [0.4, 0.6]])
    e = 0.5 * (0.8 * math.log(0.8 / 0.6) + 0.2 * math.log(0.2 / 0.4)) + 0.5 * (
        0.4 * math.log(0.4 / 0.6) + 0.6 * math.log(0.6 / 0.4))
    assert inception_score(q) == pytest.approx(math.exp(e))
    r = np.array([[0.3, 0.7]])
    kl_r = 0.6 * math.log(0.6 / 0.3) + 0.4 * math.log(0.4 / 0.7)
    assert mode_score(q, r) == pytest.approx(math.exp(e - kl_r))
    assert inception_score(np.full((5, 3), 1 / 3)) == pytest.approx(1.0)  # no confidence: the minimum
    with pytest.raises(ValueError):
        mode_score(q, np.array([[0.2, 0.3, 0.5]]))


# ------------------------------------------------------------------ nets
@pytest.mark.numerical
@pytest.mark.parametrize("granularity, n", [("channel", 6), ("layer", 1)])
def test_ss_conv_at_init_is_the_plain_convolution_bit_for_bit(granularity, n):
    conv = SSConv2d(3, 6, 5, granularity)
    assert conv.ss_scale.shape == (n,) and conv.ss_shift.shape == (n,)
    x = torch.randn(2, 3, 8, 8)
    plain = torch.nn.functional.conv2d(x, conv.conv.weight, conv.conv.bias, padding=2)
    assert torch.equal(conv(x), plain)
    with torch.no_grad():
        conv.ss_scale.fill_(2.0)
        conv.ss_shift.fill_(0.5)
    assert torch.allclose(conv(x), torch.nn.functional.conv2d(x, 2 * conv.conv.weight, conv.conv.bias + 0.5, padding=2),
                          atol=1e-5)


def test_registered_with_defaults_and_bad_options(digits):
    ds, _, _ = digits
    assert methods.get("mtgan") is MTGAN
    cfg = MTGAN.default_config
    assert MTGAN.harness_defaults["tasks_per_worker"] == cfg["n_way"]
    assert MTGAN.harness_defaults["select_metric"] == "last"  # never a phase-1 (pre-trained only) checkpoint
    assert (cfg["ss"], cfg["g_target"], cfg["meta_ss"], cfg["head_init"]) == ("channel", "class", True, "meta")
    for key, bad in (("ss", "kernel"), ("g_target", "x"), ("head_init", "x"), ("inner_optimizer", "x")):
        with pytest.raises(ValueError, match=key):
            make(ds, **{key: bad})
    with pytest.raises(ValueError, match="num_classes"):
        MTGAN(SMALL, ds.image_shape, "cpu", 0)
    with pytest.raises(ValueError, match="multiple of 16"):
        MTGAN(SMALL, (1, 28, 28), "cpu", 10)


# ------------------------------------------------------------------ phases
@pytest.mark.numerical
def test_pretraining_trains_convs_and_fc_then_meta_training_only_ss_and_heads(digits):
    ds, _, sampler = digits
    m = make(ds, pretrain_steps=1)
    convs0, ss0 = snap(m.frozen_params()), snap(m.ss_params())
    pre0 = snap(list(m.nm_pre.parameters()) + list(m.cf_pre.parameters()))
    out = m.meta_train_step(tasks(sampler, 0))
    assert out["phase"] == 1 and m.phase == 2
    assert max_diff(m.frozen_params(), convs0) > 0 and max_diff(list(m.nm_pre.parameters()) + list(m.cf_pre.parameters()), pre0) > 0
    assert max_diff(m.ss_params(), ss0) == 0  # SS untouched in pre-training

    convs1, pre1 = snap(m.frozen_params()), snap(list(m.nm_pre.parameters()) + list(m.cf_pre.parameters()))
    heads1, ss1 = snap(list(m.nm.parameters()) + list(m.cf.parameters())), snap(m.ss_params())
    for step in (1, 2):
        out = m.meta_train_step(tasks(sampler, step))
        assert out["phase"] == 2 and {"inner_d_loss", "query_d_loss", "query_g_loss", "ss_grad_norm"} <= set(out)
    # frozen: bit-identical (every conv, PReLU slope and LayerNorm affine), pre-training heads dropped
    assert all(torch.equal(a, b) for a, b in zip(m.frozen_params(), convs1))
    assert all(torch.equal(a, b) for a, b in zip(list(m.nm_pre.parameters()) + list(m.cf_pre.parameters()), pre1))
    assert max_diff(m.ss_params(), ss1) > 1e-5  # SS meta-learned
    assert max_diff(list(m.nm.parameters()) + list(m.cf.parameters()), heads1) > 1e-5  # NM/CF meta-learned (eq. 12)

    # meta_ss=false: the same run leaves SS exactly at 1 and 0 while NM/CF still move
    n = make(ds, pretrain_steps=1, meta_ss=False)
    for step in range(3):
        n.meta_train_step(tasks(sampler, step))
    assert all(torch.equal(p, torch.ones_like(p) if i % 2 == 0 else torch.zeros_like(p))
               for i, p in enumerate(n.ss_params()))
    assert max_diff(list(n.nm.parameters()), list(make(ds).nm.parameters())) > 1e-5
    assert all(torch.equal(a, b) for a, b in zip(n.frozen_params(), convs1))  # same pre-training


@pytest.mark.numerical
def test_nm_cf_are_the_eq12_average_of_the_task_fitted_heads(digits):
    ds, _, sampler = digits
    m = make(ds, pretrain_steps=0, inner_steps=3)
    ts = tasks(sampler, 5, k=4)  # two 2-way tasks
    fitted = []
    for group in (ts[:2], ts[2:]):  # eq. 10 on each task's support set, from the current NM/CF
        sup, sup_y, _, _ = m._split(group)
        nm_i, cf_i = copy.deepcopy(m.nm), copy.deepcopy(m.cf)
        m._fit_heads(nm_i, cf_i, sup, sup_y, torch.Generator().manual_seed(group[0].seed), 3)
        fitted.append(snap(list(nm_i.parameters()) + list(cf_i.parameters())))
    before = snap(list(m.nm.parameters()) + list(m.cf.parameters()))
    m.meta_train_step(ts)
    after = list(m.nm.parameters()) + list(m.cf.parameters())
    mean = [(a + b) / 2 for a, b in zip(*fitted)]
    assert max_diff(after, mean) < 1e-6
    assert max_diff(fitted[0], fitted[1]) > 1e-4 and max_diff(after, before) > 1e-4  # the check has power
    # head_init=fresh: the task heads start from a seeded re-initialisation, not from NM/CF
    f = make(ds, pretrain_steps=0, head_init="fresh")
    a, b = f._task_heads(torch.Generator().manual_seed(1)), f._task_heads(torch.Generator().manual_seed(1))
    assert torch.equal(a[0].weight, b[0].weight) and not torch.equal(a[0].weight, f.nm.weight)


def test_support_and_query_split_and_ways_by_first_appearance(digits):
    ds, split, sampler = digits
    m = make(ds)
    c0, c1 = split.base[:2]
    imgs = [ds.get(ds.class_indices(c)[:4]) for c in (c0, c1, c0)]
    group = [Task(imgs[0], c0, 1), Task(imgs[1], c1, 2), Task(imgs[2], c0, 3)]
    sup, sup_y, qry, qry_y = m._split(group)
    assert torch.equal(sup[:2], imgs[0][:2]) and torch.equal(qry[:2], imgs[0][2:])  # shots=2 support, the rest query
    assert sup_y.tolist() == [0, 0, 1, 1, 0, 0] and qry_y.tolist() == sup_y.tolist()  # a repeated class keeps its way


@pytest.mark.numerical
def test_checkpoint_mid_phase_resumes_identically_through_the_switch(digits):
    ds, _, sampler = digits
    a = make(ds, pretrain_steps=2)
    a.meta_train_step(tasks(sampler, 0))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    b = make(ds, pretrain_steps=2, init_seed=7)  # everything must come from the checkpoint
    b.load_state_dict(state)
    assert b.step == 1 and b.phase == 1
    for step in (1, 2, 3):  # finishes phase 1 (Adam state matters), switches, meta-trains
        oa, ob = a.meta_train_step(tasks(sampler, step)), b.meta_train_step(tasks(sampler, step))
        assert oa == ob
    assert a.phase == b.phase == 2 and max_diff(a.parameters(), b.parameters()) == 0
    assert all(not p.requires_grad for p in b.frozen_params())
    with pytest.raises(ValueError):
        make(ds, width=8).load_state_dict(state)


@pytest.mark.numerical
@pytest.mark.parametrize("phase", [1, 2])
def test_two_workers_equal_one_worker_with_twice_the_tasks(digits, phase):
    ds, _, sampler = digits
    pre, warm = (2, 0) if phase == 1 else (1, 1)  # phase 2: one pre-training step first
    ts = tasks(sampler, 9, k=4)
    one, w0, w1 = make(ds, pretrain_steps=pre), make(ds, pretrain_steps=pre), make(ds, pretrain_steps=pre)
    for m in (one, w0, w1):
        for s in range(warm):
            m.meta_train_step(tasks(sampler, 100 + s, k=4))
    out = one.meta_train_step(ts)
    s0, s1 = paired_syncs()
    threads = [threading.Thread(target=w0.meta_train_step, args=(ts[:2], s0)),
               threading.Thread(target=w1.meta_train_step, args=(ts[2:], s1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out["phase"] == phase
    assert max_diff(w0.parameters(), w1.parameters()) == 0  # workers stay in sync
    assert max_diff(w0.parameters(), one.parameters()) < 1e-5
    alone = make(ds, pretrain_steps=pre)
    for s in range(warm):
        alone.meta_train_step(tasks(sampler, 100 + s, k=4))
    alone.meta_train_step(ts[:2])  # without the average the update differs: the check has power
    assert max_diff(alone.parameters(), one.parameters()) > 1e-5


# ------------------------------------------------------------------ phase 3
@pytest.mark.numerical
def test_adapt_fits_heads_on_the_shots_and_leaves_the_meta_model(digits):
    ds, split, sampler = digits
    m = make(ds)
    for step in range(2):
        m.meta_train_step(tasks(sampler, step))
    before = snap(m.parameters())
    shots = ds.get(ds.class_indices(split.novel[0])[:2])
    sampler_ = m.adapt(shots, seed=3)
    assert max_diff(m.parameters(), before) == 0
    x = sampler_.sample(5, seed=1)
    assert x.shape == (5, *ds.image_shape) and x.dtype == torch.float32 and x.abs().max() <= 1
    assert torch.equal(x, m.adapt(shots, seed=3).sample(5, seed=1))  # seeded
    assert not torch.equal(x, sampler_.sample(5, seed=2))
    plain = m.adapt(shots, seed=3, steps=0).sample(5, seed=1)
    with torch.no_grad():  # steps=0: the meta-learned NM asked for way 0
        z = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
        y = torch.nn.functional.one_hot(torch.zeros(5, dtype=torch.long), 2).float()
        assert torch.allclose(plain, m.ic(m.nm(torch.cat([z, y], 1))), atol=1e-6)
    assert (plain - x).abs().max() > 1e-4  # the eq. 10 fit changed the generator
    diag = m.diagnostics({}, 0).metrics
    assert diag["mtgan_phase"] == 2 and diag["mtgan_ss_scale_dev"] > 0


# ------------------------------------------------------------------ the CLI through every phase
@pytest.mark.slow  # a whole train run; phases and checkpoint unit-tested above, the CLI in test_train
def test_cli_train_goes_through_both_phases_and_reports_mode_score(tmp_path, ray_local, capsys):
    import json

    from orchestrator import tracking
    from orchestrator.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["train", "mtgan", "--steps", "3", "--tracking-uri", uri, "--json",
                 "--set", "pretrain_steps=2", "--set", "width=4", "--set", "n_way=2", "--set", "tasks_per_worker=2",
                 "--set", "inner_steps=2", "--set", "adapt_steps=2", "--set", "eval_every=2",
                 "--set", "val_generate=72", "--set", "n_generate=40", "--set", "select_metric=last"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    client = tracking.client(uri)
    phases = [(m.step, m.value) for m in client.get_metric_history(out["run_id"], "phase")]
    assert sorted(phases) == [(1, 1.0), (2, 1.0), (3, 2.0)]
    assert [m.step for m in client.get_metric_history(out["run_id"], "query_g_loss")] == [3]
    metrics = tracking.get_run(uri, out["run_id"]).data.metrics
    for key in ("fid_domain", "kid_domain", "class_hit", "mse", "ssim", "mode_score_domain", "inception_score_domain",
                "mode_score_domain_scratch", "mode_score_domain_unadapted", "inception_score_domain_real",
                "val_mode_score_domain", "mtgan_phase"):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert metrics["mtgan_phase"] == 2 and out["selected_step"] == 3
    base = tracking.load_json_artifact(uri, out["run_id"], "split.json")["base"]
    assert 1.0 <= metrics["inception_score_domain"] <= len(base)  # IS lies in [1, number of classifier classes]


def test_search_space_covers_the_issue_keys():
    from pathlib import Path

    from orchestrator.search_space import load

    space = load(Path(__file__).resolve().parents[1] / "search_spaces" / "mtgan.yaml", MTGAN.default_config)
    assert {"pretrain_lr", "meta_lr", "inner_steps", "ss"} <= set(space.params)
    assert space.params["ss"].values == ("channel", "layer") and space.metric.startswith("val_")
