"""MFH (memory of category-independent features): the paper's formulas by hand, the ablation switches,
data-parallel equivalence, inference without fine-tuning, and the CLI end to end (train, generate,
--interpolate, sweep) on a real local Ray and a real MLflow SQLite store."""
from __future__ import annotations

import io
import json
import math
import threading

import pytest
import torch

import methods
from methods.base import Task
from methods.mfh import (MFH, balance_kl, diversity_loss, gumbel_address, gumbel_noise, kmeans_address,
                         pairwise_l1, read_memory)
from methods.mfh_nets import Generator, ci_layers
from orchestrator import config as config_mod
from orchestrator import tracking
from orchestrator.cli import _dispatch, main, parser

SHAPE = (1, 16, 16)
SMALL = {"width": 4, "memory_size": 6, "ci_dim": 8, "cr_dim": 8, "addresser_hidden": 16}
CLASSES = 5


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets: extra threads only add overhead on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(**over) -> MFH:
    return MFH({**SMALL, **over}, SHAPE, num_classes=CLASSES)


def tasks(k: int, n: int = 1, seed0: int = 100) -> list[Task]:
    g = torch.Generator().manual_seed(seed0)
    return [Task(torch.rand(n, *SHAPE, generator=g) * 2 - 1, label=i % CLASSES, seed=seed0 + i) for i in range(k)]


def params_of(m: MFH) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def max_diff(a, b) -> float:
    assert len(a) == len(b)
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def test_registered_with_paper_defaults_and_several_classes_per_step():
    assert methods.get("mfh") is MFH
    cfg = config_mod.resolve(MFH.default_config, {}, [], MFH.harness_defaults)
    assert cfg["tasks_per_worker"] == 4 and cfg["shots"] == 1  # 4 classes a step, one-shot evaluation
    assert (cfg["lr"], cfg["memory_size"], cfg["addressing"], cfg["diversity_loss"]) == (1e-4, 50, "gumbel", True)
    m = make(lr=3e-4)
    assert m.opt_G.param_groups[0]["lr"] == 3e-4 == m.opt_D.param_groups[0]["lr"]
    assert config_mod.resolve(MFH.default_config, {}, ["diversity_loss=false"], {})["diversity_loss"] is False


# ------------------------------------------------------------------ addressing (eq. 3-4) and the VQ ablation
@pytest.mark.numerical
def test_gumbel_address_is_one_hot_forward_with_the_soft_gradient_and_reads_pi_dot_m():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 6, generator=g, requires_grad=True)
    noise = gumbel_noise((5, 6), torch.Generator().manual_seed(1))
    pi, soft = gumbel_address(logits, noise, tau=0.7)
    idx = (logits + noise).argmax(dim=1)
    assert torch.equal(pi.detach(), torch.nn.functional.one_hot(idx, 6).float())  # hard one-hot forward
    assert torch.allclose(soft, torch.softmax((logits + noise) / 0.7, dim=1))
    w = torch.randn(5, 6, generator=g)
    (g_st,) = torch.autograd.grad((pi * w).sum(), logits)
    (g_soft,) = torch.autograd.grad((torch.softmax((logits + noise) / 0.7, 1) * w).sum(), logits)
    assert torch.allclose(g_st, g_soft) and g_st.abs().sum() > 0  # straight-through: the soft gradient
    memory = torch.randn(6, 3, generator=g, requires_grad=True)
    f = read_memory(pi, memory)
    assert torch.equal(f.detach(), memory.detach()[idx])  # pi . M reads exactly the chosen slots
    (gm,) = torch.autograd.grad(f.sum(), memory)
    assert set(gm.abs().sum(1).nonzero().flatten().tolist()) == set(idx.tolist())


@pytest.mark.numerical
def test_kmeans_address_nearest_slot_and_vq_stop_gradients():
    f = torch.tensor([[0.0, 0.0], [2.0, 2.1], [0.9, -0.2]], requires_grad=True)
    memory = torch.tensor([[1.0, 0.0], [2.0, 2.0], [-1.0, 0.0], [0.1, 0.1]], requires_grad=True)
    f_ci, idx, codebook, commit = kmeans_address(f, memory)
    assert idx.tolist() == [3, 1, 0]
    assert torch.equal(f_ci.detach(), memory.detach()[idx])
    q = memory.detach()[idx]
    # codebook loss moves only the memory, towards sg(f); commitment only the encoder
    gm, gf = torch.autograd.grad(codebook, (memory, f), allow_unused=True)
    assert gf is None or gf.abs().max() == 0
    hand = torch.zeros(4, 2)
    hand.index_add_(0, idx, 2 * (q - f.detach()) / q.numel())
    assert torch.allclose(gm, hand)
    gm, gf = torch.autograd.grad(commit, (memory, f), allow_unused=True)
    assert gm is None or gm.abs().max() == 0
    assert torch.allclose(gf, 2 * (f.detach() - q) / q.numel())
    # straight-through: the generator's gradient reaches the encoder unchanged and not the memory
    w = torch.randn(3, 2)
    gm, gf = torch.autograd.grad((f_ci * w).sum(), (memory, f), allow_unused=True)
    assert (gm is None or gm.abs().max() == 0) and torch.equal(gf, w)


@pytest.mark.numerical
def test_kmeans_model_moves_memory_only_by_the_codebook_rule():
    m = make(addressing="kmeans")
    assert m.net.R is None  # no addresser: nearest-slot addressing
    ts = tasks(3)
    x = torch.cat([t.images for t in ts])
    with torch.no_grad():
        f = m.net.E_ci(x)
        mem = m.net.memory.detach().clone()
    idx = torch.cdist(f, mem).argmin(1)
    hand = torch.zeros_like(mem).index_add_(0, idx, 2 * (mem[idx] - f) / f.numel())
    seen = {}

    def sync(params):
        params = list(params)
        if any(p is m.net.memory for p in params):
            seen["memory"] = m.net.memory.grad.clone()

    m.meta_train_step(ts, sync)
    assert torch.allclose(seen["memory"], hand, atol=1e-6)  # GAN, L1 and the pair add nothing to M


def _mark(m: MFH, used: list[int]) -> None:
    """Set the kmeans usage record (training and EMA copy) to exactly ``used``."""
    mask = torch.zeros(m.slots_n, dtype=torch.bool)
    mask[used] = True
    m.net.slot_used.copy_(mask)
    m.ema.slot_used.copy_(mask)


def test_kmeans_records_the_slots_it_addressed_during_training():
    m = make(addressing="kmeans")
    assert m.net.slot_used is not None and not m.net.slot_used.any()  # nothing addressed yet
    assert torch.equal(m.usable_slots(), torch.arange(6))  # an untrained model: every slot is as good
    seen: set[int] = set()
    for s in range(3):
        ts = tasks(4, seed0=10 * s)
        with torch.no_grad():
            seen |= set(m.net.slots(torch.cat([t.images for t in ts])).tolist())
        stats = m.meta_train_step(ts)
        assert set(m.net.slot_used.nonzero().flatten().tolist()) == seen  # exactly what was addressed so far
        assert torch.equal(m.ema.slot_used, m.net.slot_used) and stats["slots_recorded"] == len(seen)
    assert m.usable_slots().tolist() == sorted(seen)
    assert "slot_used" not in make().net.state_dict()  # gumbel: no record


@pytest.mark.numerical
def test_kmeans_never_samples_an_unaddressed_slot():
    m = make(addressing="kmeans")
    used = [1, 4]
    _mark(m, used)
    shot = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(5)) * 2 - 1
    sampler = m.adapt(shot, seed=0)
    chosen: set[int] = set()
    for seed in range(50):
        for n in (1, 2, 3, 7, 20):
            idx = sampler.slot_indices(n, seed)
            assert len(idx) == n and set(idx.tolist()) <= set(used), (seed, n, idx)
            if n >= 2:
                assert len(set(idx[:2].tolist())) == 2  # the first images use distinct (usable) slots
            chosen |= set(idx.tolist())
    assert chosen == set(used)
    x = sampler.sample(7, seed=3)
    with torch.no_grad():  # the images are G(CR, exactly those slots)
        idx = sampler.slot_indices(7, 3)
        assert torch.allclose(x, m.ema.G(m.ema.E_cr(shot).expand(7, -1), m.ema.memory[idx]), atol=1e-6)
    for seed in range(20):  # interpolation walks between the two usable slots
        strip = m.interpolate(shot, 3, seed=seed)
        with torch.no_grad():
            ends = m.ema.G(m.ema.E_cr(shot).expand(2, -1), m.ema.memory[used])
        assert torch.allclose(strip[[0, -1]], ends, atol=1e-6) or torch.allclose(strip[[-1, 0]], ends, atol=1e-6)
    shots = {c: torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(c)) * 2 - 1 for c in (11, 12, 13)}
    d = m.diagnostics(shots, seed=0)
    assert d.metrics["mfh_slots_sampled"] == 2 and d.metrics["mfh_slots_trained"] == 2
    grid, nrow = d.figures["mfh_same_slot"]
    assert nrow == 3 and grid.shape[0] == 3 * (1 + 2)  # the shots, then one row per usable slot
    _mark(m, [3])  # one usable slot: every image reads it
    assert set(m.adapt(shot, seed=0).slot_indices(9, 1).tolist()) == {3}


@pytest.mark.numerical
def test_kmeans_training_pair_reads_only_recorded_or_own_slots():
    m = make(addressing="kmeans", shots=2)
    _mark(m, [0, 5])
    ts = tasks(4, n=2, seed0=7)
    with torch.no_grad():
        own = m.net.slots(torch.cat([t.images for t in ts])).view(4, 2)
        mem = m.net.memory.detach().clone()
    captured: dict[str, torch.Tensor] = {}

    def grab(mod, inp, out) -> None:  # G's f_ci input of the step's single generator pass
        captured.setdefault("f_ci", inp[1].detach().clone())

    hook = m.net.G.register_forward_hook(grab)
    m.meta_train_step(ts)
    hook.remove()
    B = 8
    pair = captured["f_ci"][B:]  # rows B.. are the pair (x_a then x_b), read from the memory
    hits = (pair[:, None, :] == mem[None]).all(dim=2)
    assert torch.equal(hits.sum(1), torch.ones(2 * B, dtype=torch.long))  # each row is exactly one memory slot
    slot = hits.float().argmax(1).view(2, 4, 2)  # [a|b, task, image]
    for j in range(4):
        allowed = {0, 5} | set(own[j].tolist())
        assert set(slot[:, j].flatten().tolist()) <= allowed, (j, slot[:, j], allowed)
    assert set(m.net.slot_used.nonzero().flatten().tolist()) == {0, 5} | set(own.flatten().tolist())


@pytest.mark.numerical
def test_gumbel_sampling_is_unchanged_by_the_usage_record():
    """Checksums computed with the code before the kmeans usage record existed (same seeds)."""
    m = make()
    for s in range(2):
        m.meta_train_step(tasks(4, seed0=10 * s))
    # The checksums are sums of float32 values whose last bits depend on the CPU's kernels (another order of
    # the convolutions' sums), and the sums cancel (22.9 from |p| summing to ~2700), so each is compared to
    # within the rounding of its terms, not of its result: 2**-24 of sum |p| for parameters each off by about
    # one rounding unit, and n * 2**-24 of sum |x| for images whose last sums have n terms (the final
    # convolution's fan-in; Higham's gamma_n). A changed draw or update moves the checksums far more.
    params = [p.detach().double() for p in m.parameters()]
    u = 2.0 ** -24
    assert float(sum(p.sum() for p in params)) == pytest.approx(22.900407660425117,
                                                              abs=u * float(sum(p.abs().sum() for p in params)))
    shot = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(5)) * 2 - 1
    sampler = m.adapt(shot, seed=3)
    assert sampler.slot_indices(20, 7).tolist() == [3, 0, 1, 5, 2, 4, 3, 0, 5, 4, 2, 1, 4, 2, 1, 3, 0, 5, 4, 2]
    x = sampler.sample(20, seed=7).double()
    tol = m.ema.G.final.weight[0].numel() * u * float(x.abs().sum())
    assert float(x.sum()) == pytest.approx(-515.5481148663675, abs=tol)
    assert float(x.abs().sum()) == pytest.approx(1223.447872537421, abs=tol)
    assert m.ema.slot_used is None and torch.equal(m.usable_slots(), torch.arange(6))


@pytest.mark.numerical
def test_kmeans_usage_record_survives_state_dict_and_old_checkpoints_keep_every_slot():
    a = make(addressing="kmeans")
    a.meta_train_step(tasks(4, seed0=1))
    _mark(a, [2, 3])
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    b = make(addressing="kmeans", init_seed=9)
    b.load_state_dict(state)
    assert b.net.slot_used.nonzero().flatten().tolist() == [2, 3] == b.ema.slot_used.nonzero().flatten().tolist()
    assert b.usable_slots().tolist() == [2, 3]
    shot = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(5)) * 2 - 1
    assert torch.equal(a.adapt(shot, 0).sample(5, seed=4), b.adapt(shot, 0).sample(5, seed=4))
    for part in ("net", "ema"):  # a checkpoint written before the record: loads, samples every slot as it did
        del state[part]["slot_used"]
    c = make(addressing="kmeans")
    c.load_state_dict(state)
    assert c.net.slot_used.all() and c.ema.slot_used.all() and c.usable_slots().tolist() == list(range(6))


# ------------------------------------------------------------------ losses (eq. 9, 10)
@pytest.mark.numerical
def test_diversity_loss_is_a_per_pair_hinge_on_mean_l1():
    xa = torch.tensor([[[[0.0, 0.5], [1.0, -1.0]]], [[[0.2, 0.2], [0.2, 0.2]]]], requires_grad=True)
    xb = torch.tensor([[[[0.0, 0.0], [1.0, 0.0]]], [[[0.2, 0.2], [0.2, 0.3]]]])
    d = [(0 + 0.5 + 0 + 1.0) / 4, 0.1 / 4]  # 0.375 and 0.025 mean |pixel difference|
    alpha = 0.3
    loss = diversity_loss(xa, xb, alpha)
    assert loss.item() == pytest.approx((max(0, alpha - d[0]) + max(0, alpha - d[1])) / 2)  # = 0.1375
    (g,) = torch.autograd.grad(loss, xa)
    assert g[0].abs().max() == 0  # a pair already beyond the margin is left alone
    assert g[1].abs().sum() > 0
    assert diversity_loss(xa, xb, 0.0).item() == 0
    assert pairwise_l1(torch.stack([xa[0], xb[0]]).detach()) == pytest.approx(d[0])


@pytest.mark.numerical
def test_balance_kl_zero_at_uniform_log_n_at_one_hot_and_by_hand():
    assert balance_kl(torch.full((7,), 1 / 7)).item() == pytest.approx(0, abs=1e-7)
    assert balance_kl(torch.eye(4)[1]).item() == pytest.approx(math.log(4), rel=1e-6)
    q = torch.tensor([0.5, 0.25, 0.25])
    assert balance_kl(q).item() == pytest.approx(0.5 * math.log(1.5) + 2 * 0.25 * math.log(0.75))
    rows = torch.stack([q, torch.full((3,), 1 / 3)])  # per-row KL, averaged
    assert balance_kl(rows).item() == pytest.approx(balance_kl(q).item() / 2)


# ------------------------------------------------------------------ generator: CI below the split, CR above
@pytest.mark.numerical
@pytest.mark.parametrize("side,expect_ci", [(16, 2), (32, 2), (64, 3), (128, 3)])
def test_adain_takes_ci_in_the_first_half_and_cr_in_the_second(side, expect_ci):
    assert ci_layers(side) == expect_ci  # 128: 4, 8, 16 take CI; 32 and up CR (the paper's split)
    torch.manual_seed(0)
    G = Generator((1, side, side), 2, 8, 8)
    stats: list = []
    for norm in G.norms:  # the per-channel statistics each AdaIN imposes on its output
        norm.register_forward_hook(lambda mod, inp, out: stats.append(
            (out.mean(dim=(2, 3)).detach(), out.std(dim=(2, 3), unbiased=False).detach())))
    f_cr, f_ci = torch.randn(2, 8), torch.randn(2, 8)

    def layer_stats(a, b):
        stats.clear()
        with torch.no_grad():
            out = G(a, b)
        return list(stats), out

    base, out0 = layer_stats(f_cr, f_ci)
    moved_ci, out_ci = layer_stats(f_cr, f_ci + 1.0)
    moved_cr, out_cr = layer_stats(f_cr + 1.0, f_ci)
    n = len(G.norms)
    changed = lambda a, b: [not (torch.allclose(x[0], y[0], atol=1e-4) and torch.allclose(x[1], y[1], atol=1e-3))
                            for x, y in zip(a, b)]
    assert changed(base, moved_ci) == [True] * expect_ci + [False] * (n - expect_ci)
    assert changed(base, moved_cr)[expect_ci:] == [True] * (n - expect_ci)
    # gamma/beta: CI drives exactly the first layers' modulation, CR exactly the rest
    s0, s1, s2 = G.styles(f_cr, f_ci), G.styles(f_cr, f_ci + 1), G.styles(f_cr + 1, f_ci)
    same = lambda a, b: all(torch.equal(u, v) for u, v in zip(a, b))
    assert [same(a, b) for a, b in zip(s0, s1)] == [False] * expect_ci + [True] * (n - expect_ci)
    assert [same(a, b) for a, b in zip(s0, s2)] == [True] * expect_ci + [False] * (n - expect_ci)
    assert out0.shape == (2, 1, side, side) and out0.abs().max() <= 1
    assert (out_ci - out0).abs().max() > 1e-4 and (out_cr - out0).abs().max() > 1e-4


# ------------------------------------------------------------------ training step and data parallelism
@pytest.mark.numerical
def test_meta_step_moves_every_part_deterministically_without_global_rng():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a, b = make(), make()
    assert max_diff(params_of(a), params_of(b)) == 0
    assert max_diff(params_of(a), params_of(make(init_seed=1))) > 0
    before = {k: v.clone() for k, v in a.net.state_dict().items()}, {k: v.clone() for k, v in a.D.state_dict().items()}
    ts = tasks(4)
    stats = a.meta_train_step(ts)
    b.meta_train_step(ts)
    assert torch.equal(torch.get_rng_state(), state)
    assert max_diff(params_of(a), params_of(b)) == 0
    for part, old in zip((a.net, a.D), before):
        for name, p in part.named_parameters():
            if name != "memory":
                assert (p.detach() - old[name]).abs().max() > 0, name
    assert (a.ema.G.final.weight - before[0]["G.final.weight"]).abs().max() > 0  # EMA follows
    assert {"d_loss", "g_adv", "g_cls", "recon_l1", "diversity_hinge", "balance_kl", "pair_l1"} <= set(stats)
    assert all(isinstance(v, float) and v == v for v in stats.values())
    c = make()
    c.meta_train_step([Task(t.images, t.label, t.seed + 1) for t in ts])
    assert max_diff(params_of(a), params_of(c)) > 0  # the task seed drives Gumbel noise and the pair


def _workers(models: list[MFH], task_lists: list[list[Task]], steps: int) -> None:
    """Run the models as lock-step workers whose ``sync`` is a real mean all-reduce (threads + barrier)."""
    n, box, errors = len(models), [None] * len(models), []
    barrier = threading.Barrier(n)

    def make_sync(rank):
        def sync(params):
            params = list(params)
            box[rank] = [p.grad.clone() for p in params]
            barrier.wait()
            mean = [sum(g[i] for g in box) / n for i in range(len(params))]
            barrier.wait()
            for p, g in zip(params, mean):
                p.grad.copy_(g)
        return sync

    def run(rank):
        try:
            for s in range(steps):
                models[rank].meta_train_step(task_lists[rank][s], make_sync(rank))
        except BaseException as err:  # noqa: BLE001 (re-raised in the test thread)
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.mark.numerical
@pytest.mark.parametrize("over", [{}, {"addressing": "kmeans", "shots": 2}])
def test_two_workers_equal_one_worker_with_both_halves(over):
    steps = [tasks(4, n=over.get("shots", 1), seed0=10 * s) for s in range(2)]
    one = make(lr=1e-3, **over)
    for ts in steps:
        one.meta_train_step(ts)
    w0, w1 = make(lr=1e-3, **over), make(lr=1e-3, **over)
    _workers([w0, w1], [[ts[:2] for ts in steps], [ts[2:] for ts in steps]], steps=2)
    assert max_diff(params_of(w0), params_of(w1)) == 0  # workers stay in sync (EMA included)
    # equal up to rounding; Adam turns a rounding difference on a gradient element near its eps (1e-8)
    # into up to ~lr * 1% of a step, hence 1e-5 at lr 1e-3 (an unsynced worker differs by ~5e-3)
    assert max_diff(params_of(w0), params_of(one)) < 1e-5
    if over.get("addressing") == "kmeans":  # the usage record is the same on every worker and as one worker's
        assert one.net.slot_used.any()
        for w in (w0, w1):
            assert torch.equal(w.net.slot_used, one.net.slot_used) and torch.equal(w.ema.slot_used, one.net.slot_used)
    alone = make(lr=1e-3, **over)
    for ts in steps:
        alone.meta_train_step(ts[:2])
    assert max_diff(params_of(alone), params_of(one)) > 1e-4  # without the all-reduce it differs


@pytest.mark.numerical
def test_diversity_switch_removes_exactly_the_margin_term():
    ts = tasks(4)

    def g_grads(**over):
        m, out = make(**over), {}
        m.meta_train_step(ts, sync=lambda ps: out.setdefault(len(out), [p.grad.clone() for p in ps]))
        return out[max(out)]  # the G side's gradients (the last sync of the step)

    off = g_grads(diversity_loss=False, margin=2.0)
    assert max_diff(g_grads(diversity_loss=True, margin=0.0), off) == 0  # an inactive hinge adds nothing
    assert max_diff(g_grads(diversity_loss=True, margin=2.0), off) > 1e-6  # an active one does
    assert max_diff(g_grads(diversity_loss=False, margin=0.0), off) == 0  # off: the margin is irrelevant


# ------------------------------------------------------------------ inference
@pytest.mark.numerical
def test_adapt_encodes_the_shots_without_fine_tuning_and_depends_on_the_class():
    m = make()
    m.meta_train_step(tasks(4))
    state = io.BytesIO()
    torch.save(m.state_dict(), state)
    before = params_of(m)
    g = torch.Generator().manual_seed(5)
    shot_a, shot_b = torch.rand(1, *SHAPE, generator=g) * 2 - 1, torch.rand(1, *SHAPE, generator=g) * 2 - 1
    s = m.adapt(shot_a, seed=3)
    x = s.sample(9, seed=7)
    assert x.shape == (9, *SHAPE) and x.dtype == torch.float32 and x.abs().max() <= 1
    assert max_diff(params_of(m), before) == 0
    assert torch.equal(x, m.adapt(shot_a, seed=99, steps=50).sample(9, seed=7))  # no fine-tuning: steps ignored
    assert torch.equal(x, s.sample(9, seed=7)) and not torch.equal(x, s.sample(9, seed=8))
    with torch.no_grad():  # = G(CR of the shot, memory slots of a seeded permutation)
        gen = torch.Generator().manual_seed(7)
        idx = torch.cat([torch.randperm(6, generator=gen), torch.randperm(6, generator=gen)])[:9]
        f_cr = m.ema.E_cr(shot_a).mean(0, keepdim=True).expand(9, -1)
        assert torch.allclose(x, m.ema.G(f_cr, m.ema.memory[idx]), atol=1e-6)
        assert len(set(idx[:6].tolist())) == 6  # the first memory_size images use distinct slots
    assert (m.adapt(shot_b, seed=3).sample(9, seed=7) - x).abs().max() > 1e-4  # the shot's CR matters
    unadapted = m.adapt(shot_a, seed=3, steps=0).sample(9, seed=7)  # the protocol's control: zero CR
    with torch.no_grad():
        assert torch.allclose(unadapted, m.ema.G(torch.zeros(9, 8), m.ema.memory[idx]), atol=1e-6)
    assert torch.equal(unadapted, m.adapt(shot_b, seed=3, steps=0).sample(9, seed=7))
    strip = m.interpolate(shot_a, 5, seed=2)
    with torch.no_grad():
        a, b = torch.randperm(6, generator=torch.Generator().manual_seed(2))[:2].tolist()
        ends = m.ema.G(f_cr[:2], m.ema.memory[[a, b]])
    assert strip.shape == (5, *SHAPE) and torch.allclose(strip[[0, -1]], ends, atol=1e-6)
    assert (strip[2] - strip[0]).abs().max() > 0
    with pytest.raises(ValueError):
        m.adapt(shot_a, seed=0, steps=-1)


def test_adapt_many_shares_one_frozen_copy_and_samples_what_adapt_samples():
    """``adapt_many`` (the hook a protocol adapting once per image calls) returns, per shot set, the samples
    ``adapt`` returns, including the unadapted control (steps=0); its samplers keep sampling the model as it
    was when they were made while meta-training moves it on (what ``adapt``'s copy guarantees)."""
    m = make()
    m.meta_train_step(tasks(4))
    g = torch.Generator().manual_seed(6)
    shots = [torch.rand(k, *SHAPE, generator=g) * 2 - 1 for k in (3, 1, 3)]
    for steps in (None, 0):
        want = [m.adapt(s, seed=i, steps=steps).sample(4, seed=10 + i) for i, s in enumerate(shots)]
        samplers = m.adapt_many(shots, [0, 1, 2], steps)
        assert len(samplers) == 3
        assert all(torch.allclose(w, s.sample(4, seed=10 + i), atol=1e-6) for i, (w, s) in
                   enumerate(zip(want, samplers)))
    samplers = m.adapt_many(shots, [0, 1, 2])
    before = [s.sample(4, seed=3) for s in samplers]
    m.meta_train_step(tasks(4, seed0=200))
    assert (m.adapt(shots[0], seed=0).sample(4, seed=3) - before[0]).abs().max() > 1e-6  # the model moved
    assert all(torch.equal(b, s.sample(4, seed=3)) for b, s in zip(before, samplers))  # its samplers did not


@pytest.mark.numerical
def test_state_dict_round_trip_continues_identically():
    a = make()
    a.meta_train_step(tasks(4, seed0=1))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = make(init_seed=9)
    b.load_state_dict(torch.load(buf, weights_only=False))
    assert max_diff(params_of(a), params_of(b)) == 0
    nxt = tasks(4, seed0=50)
    a.meta_train_step(nxt)
    b.meta_train_step(nxt)
    assert max_diff(params_of(a), params_of(b)) == 0  # Adam, EMA step count and spectral-norm vectors restored
    with pytest.raises(ValueError, match="memory_size"):
        make(memory_size=7).load_state_dict(a.state_dict())


@pytest.mark.numerical
def test_diagnostics_memory_usage_diversity_and_figures():
    m = make()
    m.meta_train_step(tasks(4))
    g = torch.Generator().manual_seed(3)
    shots = {c: torch.rand(1, *SHAPE, generator=g) * 2 - 1 for c in (11, 12, 13, 14, 15)}
    d = m.diagnostics(shots, seed=0)
    with torch.no_grad():
        slots = m.ema.R(m.ema.E_ci(torch.cat(list(shots.values())))).argmax(1)
    counts = torch.bincount(slots, minlength=6).double()
    p = counts[counts > 0] / 5
    assert d.metrics["mfh_slots_used"] == len(set(slots.tolist()))
    assert d.metrics["mfh_slot_entropy"] == pytest.approx(float(-(p * p.log()).sum()), abs=1e-9)
    assert d.metrics["mfh_memory_size"] == 6
    per_class = [pairwise_l1(m.adapt(s, seed=0).sample(8, seed=0)) for s in shots.values()]
    assert d.metrics["mfh_pairwise_l1"] == pytest.approx(sum(per_class) / 5) and d.metrics["mfh_pairwise_l1"] > 0
    grid, nrow = d.figures["mfh_same_slot"]
    assert nrow == 5 and grid.shape == (5 * 7, *SHAPE)  # the shots, then 6 slots x 5 classes
    assert torch.equal(grid[:5], torch.cat(list(shots.values())))
    row = grid[5:10]  # one slot, five classes: the images differ by class
    assert (row[0] - row[1]).abs().max() > 1e-4
    strip, n = d.figures["mfh_interpolation"]
    assert n == 9 and strip.shape == (9, *SHAPE)
    assert not set(d.metrics) & {"diversity", "fid_domain", "class_hit"}  # never shadows the protocol's names


def test_bad_options_are_one_line_value_errors():
    for over, needle in (({"addressing": "kmean"}, "addressing"), ({"balance_over": "x"}, "balance_over"),
                         ({"memory_size": 1}, "memory_size"), ({"gumbel_tau": 0.0}, "gumbel_tau")):
        with pytest.raises(ValueError, match=needle) as err:
            make(**over)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="power of two"):
        MFH({}, (1, 28, 28), num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        MFH({}, (1, 32, 32))
    with pytest.raises(ValueError):
        make().meta_train_step([Task(torch.zeros(1, 3, 16, 16), 0, 0)])


# ------------------------------------------------------------------ end to end through the CLI
FAST = ["--set", "width=4", "--set", "memory_size=6", "--set", "ci_dim=8", "--set", "cr_dim=8",
        "--set", "addresser_hidden=16", "--set", "val_generate=72", "--set", "n_generate=40",
        "--set", "eval_every=2", "--set", "select_metric=last"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, ray_local):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow_mfh') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def trained(store):
    return _dispatch(parser().parse_args(["train", "mfh", "--steps", "4", "--tracking-uri", store, *FAST]))


def test_train_logs_protocol_and_memory_diagnostics(store, trained):
    c = tracking.client(store)
    run = c.get_run(trained["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["addressing"] == "gumbel"
    assert run.data.params["tasks_per_worker"] == "4"
    m = run.data.metrics
    for key in ("fid_domain", "class_hit", "class_hit_unadapted", "class_hit_scratch", "mfh_slots_used",
                "mfh_slot_entropy", "mfh_pairwise_l1", "val_mfh_slots_used", "val_fid_domain", "recon_l1",
                "balance_kl"):
        assert key in m and m[key] == m[key], key
    assert 1 <= m["mfh_slots_used"] <= 2 and trained["mfh_slots_used"] == m["mfh_slots_used"]  # 2 novel digits
    assert [h.step for h in c.get_metric_history(run.info.run_id, "recon_l1")] == [1, 2, 3, 4]
    samples = {a.path for a in c.list_artifacts(run.info.run_id, "samples")}
    assert {"samples/mfh_same_slot_novel_samples.png", "samples/mfh_interpolation_novel_samples.png",
            "samples/mfh_same_slot_val_step000002.png"} <= samples


def test_generate_from_one_image_and_interpolate(store, trained, tmp_path, capsys):
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    one = tmp_path / "one.png"
    Image.fromarray((digits.images[digits.target == 9][0] * 255 / 16).astype("uint8")).save(one)
    grid = tmp_path / "grid.png"
    args = ["generate", trained["run_id"], "--images", str(one), "--tracking-uri", store, "--json"]
    assert main([*args, "--n", "16", "--out", str(grid)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 16
    assert Image.open(grid).size[0] >= 4 * 32
    strip = tmp_path / "strip.png"
    assert main([*args, "--n", "6", "--out", str(strip), "--interpolate", "--save-images", str(tmp_path / "s")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["interpolate"] is True
    w, h = Image.open(strip).size
    assert w >= 6 * 32 and h < 2 * 32  # one row of 6
    assert len(list((tmp_path / "s").glob("*.png"))) == 6

    # a method without a memory: one line, exit 2 (a hand-made FIGR run record is enough to get there)
    run_id = tracking.start_run(store, "mfh-errors", "figr-record", {}, {"method": "figr"})
    tracking.log_dict(store, run_id, {"method": "figr", "config": {"image_size": 32, "channels": 1}}, "config.json")
    tracking.log_dict(store, run_id, {"class_names": ["a"]}, "split.json")
    torch.save({"state": {}, "step": 0, "elapsed_s": 0.0}, tmp_path / "model.pt")
    tracking.log_file(store, run_id, tmp_path / "model.pt", "checkpoint")
    tracking.end_run(store, run_id)
    assert main(["generate", run_id, "--images", str(one), "--interpolate", "--tracking-uri", store]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --interpolate") and "figr" in err and "\n" not in err


def test_pregenerate_from_the_trained_run_writes_variants_a_classifier_store_reads(store, trained, tmp_path, capsys):
    """The whole --from-run path on a real run's checkpoint (not a hand-made state dict)."""
    import pyarrow.parquet as pq

    from orchestrator import classify

    out = tmp_path / "store"
    assert main(["pregenerate", "--from-run", trained["run_id"], "--classes", "novel", "--per-class", "2",
                 "--variants", "3", "--out", str(out), "--no-progress", "--tracking-uri", store, "--json"]) == 0
    def no_nan(token):
        raise AssertionError(f"--json printed {token}, which strict JSON parsers refuse")

    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1], parse_constant=no_nan)
    assert summary["mean_final_loss"] is None  # no eq. 1 loss without FinetuneGAN: null, not NaN
    table = pq.read_table(out).to_pylist()
    assert len(table) == 2 * 2 * 3 and summary["rows_written"] == len(table)  # 2 novel digits x 2 images x 3
    ids = sorted({r["image_id"] for r in table})
    loaded = classify.GeneratedStore.load(out, (1, 32, 32), set(ids))
    assert loaded.missing(ids) == [] and loaded.variants == 3


def test_bad_method_option_is_a_user_error_before_any_run(store, capsys):
    exp = tracking.experiment_id(store, tracking.DEFAULT_EXPERIMENT)
    before = len(tracking.client(store).search_runs([exp]))
    assert main(["train", "mfh", "--steps", "1", "--set", "addressing=kmean", "--tracking-uri", store]) == 2
    err = capsys.readouterr().err.strip()
    assert "addressing" in err and "\n" not in err
    assert len(tracking.client(store).search_runs([exp])) == before


@pytest.mark.slow  # a whole sweep; the sweep record is test_sweep's, mfh's training the run above
def test_default_space_sweep_is_a_parent_with_two_children(store, capsys):
    from orchestrator import search_space, sweep

    space = search_space.load(search_space.default_path("mfh"), MFH.default_config)
    assert set(space.params) == {"lr", "recon_weight", "diversity_weight", "balance_weight", "margin",
                                 "memory_size", "gumbel_tau"} and (space.metric, space.mode) == ("val_class_hit", "max")
    pairs = [FAST[i:i + 2] for i in range(0, len(FAST), 2)]
    tiny = [a for pair in pairs if not pair[1].startswith("memory_size=") for a in pair]  # searched keys are refused
    rc = main(["sweep", "mfh", "--trials", "2", "--concurrency", "2", "--steps", "2", "--seed", "1",
               "--tracking-uri", store, "--experiment", "mfh-sweep", "--json", *tiny])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["trials_completed"] == 2 and set(out["best_config"]) == set(space.params)
    c = tracking.client(store)
    parent = c.get_run(out["parent_run_id"])
    kids = sweep.children(store, out["parent_run_id"], parent.info.experiment_id)
    assert parent.info.status == "FINISHED" and len(kids) == 2
    assert all(k.info.status == "FINISHED" and "val_mfh_slots_used" in k.data.metrics for k in kids)
    assert len({k.data.params["lr"] for k in kids}) == 2  # each trial its own searched values
