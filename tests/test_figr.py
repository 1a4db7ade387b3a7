"""FIGR (Reptile + WGAN-GP): the parts that are easy to get wrong, checked against hand computations."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import methods
from methods.base import Task
from methods.figr import FIGR, gradient_penalty
from methods.nets import build_nets

pytestmark = pytest.mark.numerical  # float results of CPU kernels: .ci/run runs these under two kernel families

SHAPE = (1, 32, 32)
SMALL = {"width": 8, "inner_steps": 3, "adapt_steps": 3}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets: extra threads only add overhead (and thrash badly on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(shape=SHAPE, **over) -> FIGR:
    return FIGR({**SMALL, **over}, shape)


def tasks(k: int, shape=SHAPE, n: int = 4, seed0: int = 100) -> list[Task]:
    g = torch.Generator().manual_seed(seed0)
    return [Task(torch.rand(n, *shape, generator=g) * 2 - 1, label=i, seed=seed0 + i) for i in range(k)]


def params_of(m: FIGR) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b)
    return max(float((x.detach() - y.detach()).abs().max()) for x, y in zip(a, b))


def test_registered_and_config_types():
    assert methods.get("figr") is FIGR
    cfg = FIGR.default_config
    for key in ("inner_lr", "meta_lr", "outer_beta1", "outer_beta2", "gp_weight"):
        assert isinstance(cfg[key], float), key
    assert (cfg["arch"], cfg["shots"], cfg["inner_steps"], cfg["z_dim"]) == ("dcgan", 4, 10, 100)
    assert (cfg["inner_lr"], cfg["meta_lr"], cfg["inner_optimizer"]) == (1e-3, 1e-4, "sgd")
    # the paper's Table 1 learning rates are one override away
    m = make(inner_lr=1e-4, meta_lr=1e-5)
    assert m.inner_lr == 1e-4 and m.opt_G.param_groups[0]["lr"] == 1e-5 == m.opt_D.param_groups[0]["lr"]


# ------------------------------------------------------------------ gradient penalty
class _Linear(nn.Module):
    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, x):
        return (x * self.a).flatten(1).sum(1) + 0.3


class _Quadratic(nn.Module):
    """D(x) = sum(a * x^2) / 2, so dD/dx_i = a * x_i differs per sample."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, x):
        return 0.5 * (self.a * x * x).flatten(1).sum(1)


def test_gradient_penalty_linear_critic_is_norm_of_a_over_chw():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, 4, generator=g) * 0.2
    real, fake = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    eps = torch.rand(5, generator=g)
    gp = gradient_penalty(_Linear(a), real, fake, eps)
    expected = (a.flatten().norm() - 1) ** 2  # the same for every sample: mean over samples is itself
    assert torch.allclose(gp, expected, atol=1e-6)
    # the authors' code's norm over channels only (one norm per pixel) gives another number
    per_pixel = ((a.norm(dim=0) - 1) ** 2).mean()
    assert not torch.allclose(gp, per_pixel, atol=1e-3)


def test_gradient_penalty_per_sample_with_interpolation_and_differentiable():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 4, 4, generator=g)
    real, fake = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    eps = torch.rand(6, generator=g)
    critic = _Quadratic(a)
    gp = gradient_penalty(critic, real, fake, eps)
    x = eps.view(-1, 1, 1, 1) * real + (1 - eps.view(-1, 1, 1, 1)) * fake
    norms = (a * x).flatten(1).norm(dim=1)
    assert torch.allclose(gp, ((norms - 1) ** 2).mean(), atol=1e-6)
    # a single norm over the whole batch is a different (wrong) penalty
    assert not torch.allclose(gp, ((a * x).norm() - 1) ** 2, atol=1e-3)
    # it is a loss for the critic: its gradient w.r.t. a matches the hand derivative
    (ga,) = torch.autograd.grad(gp, critic.a)
    hand = (2 * (norms - 1) / norms).view(-1, 1, 1, 1) * a * x * x
    assert torch.allclose(ga, hand.mean(0), atol=1e-5)


# ------------------------------------------------------------------ inner loop = Algorithm 1's U
def test_one_inner_iteration_is_critic_sgd_on_wgan_gp_then_generator_sgd():
    m = make(inner_lr=0.05)
    t = tasks(1)[0]
    G, D = copy.deepcopy(m.G), copy.deepcopy(m.D)
    m._inner_loop(G, D, t.images, torch.Generator().manual_seed(t.seed), 1)

    # by hand, with the same draws in the same order: z (critic), eps, z (generator)
    Gh, Dh = copy.deepcopy(m.G), copy.deepcopy(m.D)
    gen = torch.Generator().manual_seed(t.seed)
    n, lr = t.images.shape[0], 0.05
    z = torch.randn(n, 100, generator=gen)
    eps = torch.rand(n, generator=gen)
    fake = Gh(z).detach()
    real = t.images
    x = (eps.view(-1, 1, 1, 1) * real + (1 - eps.view(-1, 1, 1, 1)) * fake).requires_grad_(True)
    (gx,) = torch.autograd.grad(Dh(x).sum(), x, create_graph=True)
    gp = ((gx.flatten(1).norm(dim=1) - 1) ** 2).mean()
    d_loss = Dh(fake).mean() - Dh(real).mean() + 10.0 * gp
    d_grads = torch.autograd.grad(d_loss, list(Dh.parameters()))
    with torch.no_grad():
        for p, gr in zip(Dh.parameters(), d_grads):
            p -= lr * gr
    z2 = torch.randn(n, 100, generator=gen)
    g_loss = -Dh(Gh(z2)).mean()
    g_grads = torch.autograd.grad(g_loss, list(Gh.parameters()))
    with torch.no_grad():
        for p, gr in zip(Gh.parameters(), g_grads):
            p -= lr * gr

    assert max_diff(list(D.parameters()), list(Dh.parameters())) < 1e-5
    assert max_diff(list(G.parameters()), list(Gh.parameters())) < 1e-5
    # and the step moved both nets (so the comparison above has power)
    assert max_diff(list(D.parameters()), list(m.D.parameters())) > 1e-4
    assert max_diff(list(G.parameters()), list(m.G.parameters())) > 1e-4


# ------------------------------------------------------------------ outer update
def test_meta_update_is_adam_on_phi_minus_w_and_adapt_matches_inner_loop():
    m = make(meta_lr=1e-3)
    ref = copy.deepcopy(m)  # reference Phi, updated by hand with torch.optim.Adam
    ref_params = ref.parameters()
    opt = torch.optim.Adam(ref_params, lr=1e-3, betas=(0.9, 0.999))
    for round_ in range(2):  # two rounds: Adam's moments must carry over
        ts = tasks(2, seed0=10 * round_)
        ws = []
        for t in ts:
            G, D = copy.deepcopy(ref.G), copy.deepcopy(ref.D)
            ref._inner_loop(G, D, t.images, torch.Generator().manual_seed(t.seed), ref.inner_steps)
            ws.append([p.detach() for p in list(G.parameters()) + list(D.parameters())])
            if round_ == 0:  # Algorithm 2 = the same K inner iterations, on the generator returned by adapt
                adapted = m.adapt(t.images, seed=t.seed, steps=m.inner_steps).generator
                assert max_diff(list(adapted.parameters()), ws[-1][: len(list(G.parameters()))]) == 0
        for i, p in enumerate(ref_params):  # the exact mean (float64), rounded once: Adam's first steps amplify rounding
            p.grad = (sum(p.detach().double() - w[i].double() for w in ws) / len(ws)).float()
        opt.step()
        before = params_of(m)
        stats = m.meta_train_step(ts)
        assert max_diff(params_of(m), [p.detach() for p in ref_params]) < 1e-6
        assert max_diff(params_of(m), before) > 1e-4  # Phi did move
        assert set(stats) >= {"d_loss", "g_loss", "gp", "wdist", "meta_grad_norm"}
        assert all(isinstance(v, float) and v == v for v in stats.values())
        assert stats["meta_grad_norm"] > 0


def test_sync_is_called_on_all_meta_parameters_and_its_result_is_used():
    m = make()
    seen = {}

    def sync(params):
        params = list(params)
        seen["ids"] = [id(p) for p in params]
        for p in params:
            p.grad.zero_()  # e.g. the other workers cancelled this one out

    before = params_of(m)
    m.meta_train_step(tasks(1), sync=sync)
    assert seen["ids"] == [id(p) for p in m.parameters()]
    assert {id(p) for p in m.G.parameters()} | {id(p) for p in m.D.parameters()} == set(seen["ids"])
    assert max_diff(params_of(m), before) == 0  # Adam on a zero gradient does not move


# ------------------------------------------------------------------ determinism and distribution
def test_same_tasks_same_update_and_global_rng_untouched():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a, b = make(), make()
    assert max_diff(params_of(a), params_of(b)) == 0
    assert max_diff(params_of(a), params_of(make(init_seed=1))) > 0
    ts = tasks(2)
    a.meta_train_step(ts)
    b.meta_train_step(ts)
    assert torch.equal(torch.get_rng_state(), state)  # construction and steps draw nothing globally
    assert max_diff(params_of(a), params_of(b)) == 0
    c = make()
    c.meta_train_step([Task(t.images, t.label, t.seed + 1) for t in ts])
    assert max_diff(params_of(a), params_of(c)) > 0  # the task seed drives the draws


def test_two_workers_mean_of_means_equals_one_worker_with_all_tasks():
    t = tasks(4)
    one = make()
    one.meta_train_step(t)

    def grads_of(ts):  # what a worker would contribute to the all-reduce
        out = []
        make().meta_train_step(ts, sync=lambda ps: out.extend(p.grad.clone() for p in ps))
        return out

    g_first, g_second = grads_of(t[:2]), grads_of(t[2:])

    def worker(ts, other):
        def sync(ps):  # all-reduce mean over 2 workers, in place
            for p, o in zip(ps, other):
                p.grad.add_(o).div_(2)

        w = make()
        w.meta_train_step(ts, sync=sync)
        return params_of(w)

    w0, w1 = worker(t[:2], g_second), worker(t[2:], g_first)
    assert max_diff(w0, w1) == 0  # workers stay in sync
    assert max_diff(w0, params_of(one)) < 1e-6
    alone = make()
    alone.meta_train_step(t[:2])  # without the average the update differs: the check has power
    assert max_diff(params_of(alone), params_of(one)) > 1e-5


# ------------------------------------------------------------------ adaptation and sampling
def test_adapt_leaves_meta_parameters_and_steps0_is_the_meta_generator():
    m = make()
    m.meta_train_step(tasks(1))
    before = params_of(m)
    shots = tasks(1, seed0=7)[0].images
    adapted = m.adapt(shots, seed=3)
    assert max_diff(params_of(m), before) == 0
    x = adapted.sample(10, seed=5)
    assert x.shape == (10, *SHAPE) and x.dtype == torch.float32 and x.abs().max() <= 1
    assert torch.equal(x, adapted.sample(10, seed=5))
    assert not torch.equal(x, adapted.sample(10, seed=6))
    assert torch.equal(x, m.adapt(shots, seed=3).sample(10, seed=5))  # adaptation is seeded too

    plain = m.adapt(shots, seed=3, steps=0).sample(10, seed=5)
    with torch.no_grad():
        z = torch.randn(10, 100, generator=torch.Generator().manual_seed(5))
        assert torch.equal(plain, m.G(z))
    assert (plain - x).abs().max() > 1e-4  # three adaptation steps changed the generator
    assert m.adapt(shots, seed=3, steps=0).sample(0, seed=1).shape == (0, *SHAPE)
    assert max_diff(params_of(m), before) == 0


def test_adapt_default_steps_and_chunked_sampling():
    m = make(adapt_steps=2)
    shots = tasks(1)[0].images
    a = m.adapt(shots, seed=1)
    b = m.adapt(shots, seed=1, steps=2)
    assert torch.equal(a.sample(4, 0), b.sample(4, 0))
    assert not torch.equal(a.sample(4, 0), m.adapt(shots, seed=1, steps=1).sample(4, 0))
    big = a.sample(300, seed=2)  # more than one chunk
    with torch.no_grad():
        z = torch.randn(300, 100, generator=torch.Generator().manual_seed(2))
        assert torch.allclose(big, a.generator(z), atol=1e-6)


# ------------------------------------------------------------------ nets
@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_no_batch_norm_only_layer_norm_and_prelu(arch):
    G, D = build_nets(arch, 100, (3, 32, 32), 4)
    for net in (G, D):
        kinds = {type(mod) for mod in net.modules()}
        assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)
        assert not any(issubclass(k, (nn.ReLU, nn.LeakyReLU, nn.GroupNorm, nn.InstanceNorm2d)) for k in kinds)
        assert nn.LayerNorm in kinds and nn.PReLU in kinds
        assert list(net.buffers()) == []  # no running statistics anywhere: all state is parameters
    # the critic scores each image independently of the rest of the batch
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    assert torch.allclose(D(x)[1:2], D(x[1:2]), atol=1e-5)


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_range(arch, size, channels):
    G, D = build_nets(arch, 16, (channels, size, size), 4)
    z = torch.randn(3, 16) * 5  # large z: still inside [-1, 1] (tanh)
    with torch.no_grad():
        y = G(z)
        s = D(y)
    assert y.shape == (3, channels, size, size)
    assert y.abs().max() <= 1
    assert s.shape == (3,)


def test_dcgan_matches_the_public_code_layout():
    G, D = build_nets("dcgan", 100, (1, 32, 32), 64)
    convs = [mod for mod in list(G.modules()) + list(D.modules()) if isinstance(mod, nn.Conv2d)]
    assert all(c.kernel_size == (5, 5) for c in convs)
    assert [c.out_channels for c in G.blocks.modules() if isinstance(c, nn.Conv2d)] == [512, 256, 128, 64]
    assert G.stem.linear.out_features == 1024 * 2 * 2 and D.final.in_features == 1024 * 2 * 2


def test_bad_shapes_and_options_are_value_errors():
    with pytest.raises(ValueError, match="multiple of 16"):
        FIGR({}, (1, 28, 28))
    with pytest.raises(ValueError):
        FIGR({}, (1, 32, 64))
    with pytest.raises(ValueError, match="arch"):
        make(arch="vgg")
    with pytest.raises(ValueError, match="inner_optimizer"):
        make(inner_optimizer="rmsprop")
    with pytest.raises(ValueError):
        make().meta_train_step([Task(torch.zeros(4, 3, 32, 32), 0, 0)])


def test_resnet_and_inner_adam_train_and_stay_deterministic():
    ts = tasks(1)
    runs = []
    for _ in range(2):
        m = make(arch="resnet", width=4, inner_steps=2, inner_optimizer="adam")
        before = params_of(m)
        stats = m.meta_train_step(ts)
        assert all(v == v for v in stats.values())
        runs.append(params_of(m))
    assert max_diff(runs[0], runs[1]) == 0 and max_diff(runs[0], before) > 0


# ------------------------------------------------------------------ checkpoints
def test_state_dict_round_trip_continues_identically():
    a = make()
    a.meta_train_step(tasks(2, seed0=1))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)

    b = make(init_seed=9)  # different init: everything must come from the checkpoint
    b.load_state_dict(state)
    assert max_diff(params_of(a), params_of(b)) == 0
    nxt = tasks(2, seed0=50)
    a.meta_train_step(nxt)
    b.meta_train_step(nxt)
    assert max_diff(params_of(a), params_of(b)) == 0

    c = make(init_seed=9)  # weights only, fresh Adam: a different continuation (the Adam state matters)
    c.G.load_state_dict(state["G"])
    c.D.load_state_dict(state["D"])
    c.meta_train_step(nxt)
    assert max_diff(params_of(a), params_of(c)) > 0

    with pytest.raises(ValueError):
        make(width=4).load_state_dict(state)
