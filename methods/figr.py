"""FIGR: a WGAN-GP generator and critic meta-trained with Reptile (Clouâtre & Demers, 2019).

Meta-training (the paper's Algorithm 1), per task tau of n images of one class: copy Phi (G and D)
to W, run K inner iterations, each one SGD step of the critic on the WGAN-GP loss (real images
vs. n fakes) followed by one SGD step of the generator on the Wasserstein loss; then set the
gradient of every meta-parameter to Phi - W (averaged over this worker's tasks), let ``sync``
average it across workers, and take one Adam step (one Adam for G, one for D, as the authors'
code does). Generation for an unseen class (Algorithm 2): the same K inner iterations on its
shots, on copies, then sample.

Losses (Gulrajani et al. 2017, which the paper cites):
  L_D = mean D(fake) - mean D(real) + gp_weight * mean_i (||grad_x D(x_i)||_2 - 1)^2
  L_G = -mean D(G(z))
with x_i = eps_i * real_i + (1 - eps_i) * fake_i, one eps_i ~ U[0, 1) per sample, and the
gradient norm taken per sample over all of C x H x W.

Where the paper and the authors' public code (github.com/OctThe16th/FIGR) disagree, and what
this module does:
- Learning rates. Paper Table 1: inner 1e-4, outer 1e-5. Public code: inner SGD 1e-3, outer
  Adam 1e-4. Defaults follow the public code; the paper's values are
  ``--set inner_lr=0.0001 --set meta_lr=0.00001``.
- Outer Adam: the public code uses torch's default betas (0.9, 0.999); so do the defaults here.
- Architecture. The paper names ResNet-18-style nets; the code defaults to a DCGAN-style net
  (5x5 convs, width 64, nearest upsampling). Both are here (``arch=dcgan`` default, ``arch=resnet``),
  built as in the authors' code (methods/nets.py): LayerNorm over C x H x W and PReLU everywhere.
  Width: the public code's is 64 (``--set width=64``, ~18M parameters a net, meant for a GPU);
  the default here is 16, about 20 times cheaper a task, so short CPU runs make useful progress.
- Gradient penalty. The public code takes the norm over dim 1 only (the channels), i.e. one
  norm per pixel; here the norm is per sample over C x H x W as WGAN-GP defines it.
- Loss scale. The public code's critic loss is mean(D(x) * target) over the 2n real+fake scores
  with targets +1/-1, i.e. (mean D(real) - mean D(fake)) / 2 (critic sign flipped, Wasserstein term
  halved relative to the penalty); here the standard WGAN-GP form above is used.
- z ~ N(0, I) with z_dim = 100 and n fakes per inner step (n = number of task images), as in the
  public code.

Determinism: every random draw inside a task's inner loop (z, eps) comes from a
``torch.Generator`` seeded with ``task.seed``; each task starts from Phi and the per-task
differences are accumulated in float64, so the update from tasks [t0..t3] on one process equals
the worker-average of the updates from [t0, t1] and [t2, t3]. Initial weights depend only on
``init_seed`` (built on the CPU under a forked RNG: the global RNG is left untouched).

Task batching (``task_batch=T``, ours; default 1 = the loop above, unchanged): the tasks of a
meta-step run T at a time as one computation. Each net's parameters are stacked into T per-task
copies ([T, *shape]) and run through hand-written batched twins of the nets (methods/nets.py:
tasks in the channel dimension, every conv one grouped convolution), inside a pure-function inner
step differentiated with ``torch.func.grad`` -- nested for the penalty's per-sample input gradient.
No op mixes tasks, so task t's gradients, draws (its own generator, in the loop's order) and
updates are those of the loop; in float64 the two agree to ~1e-16 (tests/test_task_batch.py).
Grouped convolutions rather than ``torch.func.vmap`` of ``functional_call``: vmap's conv rule ends
in the same grouped convolution but adds per-op wrapping at two functorch levels. Batching removes
per-op overhead only, so its gain is on a GPU (docs/benchmarks_batched.md has the figures and
commands). Both inner optimizers (the inner Adam replays torch.optim.Adam's update on the stacks) and both
archs are batched. Tasks with different image counts go in separate batches.

``compile=true``: the same functional inner step through ``torch.compile(fullgraph=True)`` (also at
T=1, and in ``adapt``); equal to eager within float tolerance. A cold Inductor compile of the step
takes minutes on a CPU, so it pays only for long runs. Inductor needs a C++ compiler on the CPU.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn

from methods import register
from methods.base import GradSync, Method, Task, no_sync
from methods.nets import ARCHS, batched_critic, batched_generator, build_nets, check_image_shape, stack_params

INNER_OPTIMIZERS = ("sgd", "adam")
INNER_ADAM_BETAS = (0.0, 0.999)  # the inner Adam (fresh per task), as in the sequential loop
INNER_ADAM_EPS = 1e-8  # torch.optim.Adam's default
SAMPLE_CHUNK = 256
# torch.compile backend of ``compile=true``. Inductor generates C++ for the CPU (needs a compiler) or
# Triton for CUDA; tests switch to "aot_eager" (the same Dynamo graph capture and AOTAutograd, no code
# generation), because a cold Inductor compile of the step takes minutes on a 2-core CPU.
COMPILE_BACKEND = "inductor"

Params = dict[str, torch.Tensor]  # {parameter name: [T, *shape]} -- T stacked per-task copies (ours)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """mean_i (||d critic / d x_i||_2 - 1)^2, x_i = eps_i real_i + (1 - eps_i) fake_i, norm over C x H x W.

    Differentiable w.r.t. the critic's parameters (create_graph=True). ``eps`` has one entry per sample.
    """
    eps = eps.reshape(-1, *([1] * (real.dim() - 1)))
    x = (eps * real + (1 - eps) * fake).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def _batched_step(G: nn.Module, D: nn.Module, PG: Params, PD: Params, adam: tuple[Params, Params, Params, Params] | None,
                  real: torch.Tensor, zc: torch.Tensor, eps: torch.Tensor, zg: torch.Tensor, bc2_sqrt: torch.Tensor,
                  gp_weight: float, lr: float) -> tuple[Params, Params, tuple[Params, Params, Params, Params] | None, torch.Tensor]:
    """One inner iteration (critic step, then generator step) of T tasks at once, as a pure function (ours).

    The sequential loop's ``_inner_loop`` step on T stacked copies: the same losses per task, the same
    draws, summed over tasks before differentiating (no op mixes tasks, so task t's gradient is its own).
    Written with ``torch.func.grad`` (nested for the penalty's input gradient) rather than
    ``torch.autograd.grad`` so that ``torch.compile`` can trace the whole step into one graph
    (AOTAutograd refuses double backward through a compiled module; eager speed of the two is the same).

    Shapes (float32, all on one device): ``PG``/``PD`` {name: [T, *shape]}; ``real`` [n, T*C, H, W] (task t's
    images in channels t*C..); ``zc``, ``zg`` [n, T, z_dim] (critic's and generator's z); ``eps`` [n, T]
    (interpolation weights); ``bc2_sqrt`` 0-dim, sqrt(1 - beta2**k) of the inner Adam at this step k.
    ``adam``: None for SGD, else (m_G, v_G, m_D, v_D) moment stacks. Returns the updated (PG, PD, adam) and
    stats [4, T] = (d_loss, g_loss, gp, wdist) per task.
    """
    from torch.func import grad

    n, T = zc.shape[0], zc.shape[1]
    real5 = real.view(n, T, -1, *real.shape[2:])  # [n, T, C, H, W]
    with torch.no_grad():
        fake = batched_generator(G, PG, zc)  # [n, T*C, H, W]
    fake5 = fake.view(real5.shape)
    e = eps.view(n, T, 1, 1, 1)
    x = (e * real5 + (1 - e) * fake5).view(real.shape)  # per-sample interpolates for the penalty

    def d_loss(pd: Params) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        scores = batched_critic(D, pd, torch.cat([real, fake]))  # [2n, T]
        wdist = scores[:n].mean(0) - scores[n:].mean(0)  # [T]
        gx = grad(lambda xx: batched_critic(D, pd, xx).sum())(x)  # [n, T*C, H, W]: d critic_t / d x_i
        gp = ((gx.reshape(n, T, -1).norm(2, dim=2) - 1) ** 2).mean(0)  # [T]: norm per sample over C x H x W
        loss = -wdist + gp_weight * gp
        return loss.sum(), (loss, gp, wdist)

    gd, (dl, gp, wdist) = grad(d_loss, has_aux=True)(PD)
    mG = vG = mD = vD = None
    if adam is not None:
        mG, vG, mD, vD = adam
    PD, mD, vD = _inner_update(PD, gd, mD, vD, bc2_sqrt, lr)

    def g_loss(pg: Params) -> tuple[torch.Tensor, torch.Tensor]:
        loss = -batched_critic(D, PD, batched_generator(G, pg, zg)).mean(0)  # [T], through the updated critic
        return loss.sum(), loss

    gg, gl = grad(g_loss, has_aux=True)(PG)
    PG, mG, vG = _inner_update(PG, gg, mG, vG, bc2_sqrt, lr)
    stats = torch.stack([dl, gl, gp, wdist]).detach()
    return PG, PD, (None if adam is None else (mG, vG, mD, vD)), stats


def _inner_update(P: Params, grads: Params, m: Params | None, v: Params | None, bc2_sqrt: torch.Tensor,
                  lr: float) -> tuple[Params, Params | None, Params | None]:
    """SGD (``m is None``) or the inner Adam's step on stacked parameters (ours).

    Adam replays torch.optim.Adam's single-tensor CPU update op for op (betas INNER_ADAM_BETAS, so the
    bias correction of the first moment is 1 and the step size is ``lr``), so the batched path matches
    a fresh ``torch.optim.Adam`` per task.
    """
    if m is None or v is None:
        return {k: torch.add(P[k], grads[k], alpha=-lr) for k in P}, None, None
    beta1, beta2 = INNER_ADAM_BETAS
    new_p, new_m, new_v = {}, {}, {}
    for k in P:
        g = grads[k]
        new_m[k] = torch.lerp(m[k], g, 1 - beta1)
        new_v[k] = torch.addcmul(v[k] * beta2, g, g, value=1 - beta2)
        denom = (new_v[k].sqrt() / bc2_sqrt).add_(INNER_ADAM_EPS)
        new_p[k] = torch.addcdiv(P[k], new_m[k], denom, value=-lr)
    return new_p, new_m, new_v


class FIGRSampler:
    """An adapted generator: ``sample(n, seed)`` -> [n, C, H, W] in [-1, 1] on the CPU."""

    def __init__(self, generator: nn.Module, z_dim: int, image_shape: tuple[int, int, int], device: torch.device):
        self.generator = generator.eval()
        self.z_dim = z_dim
        self.image_shape = tuple(image_shape)
        self.device = device

    @torch.no_grad()
    def sample(self, n: int, seed: int) -> torch.Tensor:
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        z = torch.randn(int(n), self.z_dim, generator=gen, device=self.device)  # all at once: chunking never changes z
        out = [self.generator(chunk).float().cpu() for chunk in z.split(SAMPLE_CHUNK)]
        return torch.cat(out) if out else torch.empty(0, *self.image_shape)


@register
class FIGR(Method):
    name = "figr"
    default_config = {
        "arch": "dcgan",  # "dcgan" (public code default) or "resnet" (the paper's ResNet-18-style nets)
        "width": 16,  # base channel count of both nets (public code: 64; see the module docstring)
        "z_dim": 100,  # public code: 100
        "shots": 4,  # n: images per task in meta-training and shots given at adaptation (8 on FIGR-8)
        "inner_steps": 10,  # K
        "inner_lr": 1e-3,  # public code; paper Table 1: 1e-4
        "inner_optimizer": "sgd",  # "sgd" (paper and public code) or "adam" (fresh per task, betas (0, 0.999))
        "meta_lr": 1e-4,  # public code; paper Table 1: 1e-5
        "outer_beta1": 0.9,  # public code: torch's default Adam betas
        "outer_beta2": 0.999,
        "gp_weight": 10.0,
        "adapt_steps": 10,  # inner iterations at test-time adaptation (Algorithm 2)
        "init_seed": 0,
        "task_batch": 1,  # T: tasks of a meta-step run as one batched computation (1: one after another)
        "compile": False,  # torch.compile the inner step (the batched functional step, also at T=1)
    }
    variant_keys = ("arch",)  # the public code's DCGAN-style net or the paper's ResNet

    def __init__(self, config: dict[str, Any], image_shape: tuple[int, int, int], device: torch.device | str = "cpu",
                 num_classes: int = 0):
        super().__init__(config, image_shape, device, num_classes)
        cfg = self.config
        self.arch = str(cfg["arch"])
        if self.arch not in ARCHS:
            raise ValueError(f"figr: unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        self.inner_optimizer = str(cfg["inner_optimizer"])
        if self.inner_optimizer not in INNER_OPTIMIZERS:
            raise ValueError(f"figr: unknown inner_optimizer {self.inner_optimizer!r}; choose one of {', '.join(INNER_OPTIMIZERS)}")
        self.image_shape = check_image_shape(self.image_shape)
        self.z_dim = int(cfg["z_dim"])
        self.width = int(cfg["width"])
        self.inner_steps = int(cfg["inner_steps"])
        self.adapt_steps = int(cfg["adapt_steps"])
        self.inner_lr = float(cfg["inner_lr"])
        self.gp_weight = float(cfg["gp_weight"])
        if self.inner_steps < 1 or self.adapt_steps < 0:
            raise ValueError(f"figr: inner_steps must be >= 1 and adapt_steps >= 0, got {self.inner_steps}, {self.adapt_steps}")
        task_batch = cfg["task_batch"]
        if isinstance(task_batch, bool) or not isinstance(task_batch, int) or task_batch < 1:
            raise ValueError(f"figr: task_batch must be an integer >= 1 (1: tasks one after another), got {task_batch!r}")
        self.task_batch = int(task_batch)
        if not isinstance(cfg["compile"], bool):
            raise ValueError(f"figr: compile must be true or false, got {cfg['compile']!r}")
        self.compile = bool(cfg["compile"])
        self._compiled: Callable[..., Any] | None = None  # built on first use (torch.compile of _batched_step)

        with torch.random.fork_rng(devices=[]):  # built on the CPU from init_seed alone
            torch.manual_seed(int(cfg["init_seed"]))
            G, D = build_nets(self.arch, self.z_dim, self.image_shape, self.width)
        self.G = G.to(self.device)
        self.D = D.to(self.device)
        betas = (float(cfg["outer_beta1"]), float(cfg["outer_beta2"]))
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=float(cfg["meta_lr"]), betas=betas)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=float(cfg["meta_lr"]), betas=betas)
        self._fast: tuple[nn.Module, nn.Module] | None = None  # reused per-task copies W (reloaded from Phi)

    # ----------------------------------------------------------------- inner loop (Algorithms 1 and 2)
    def _images(self, images: torch.Tensor) -> torch.Tensor:
        images = torch.as_tensor(images)
        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape or images.shape[0] < 1:
            raise ValueError(f"figr: expected images [n>=1, {', '.join(map(str, self.image_shape))}], got {tuple(images.shape)}")
        return images.to(self.device, torch.get_default_dtype())  # float32 unless a test sets float64

    def _inner_loop(self, G: nn.Module, D: nn.Module, real: torch.Tensor, gen: torch.Generator, steps: int) -> dict[str, torch.Tensor]:
        """``steps`` x (one critic step on WGAN-GP, one generator step on -mean D(G(z))) on G, D in place."""
        n, dev = real.shape[0], real.device
        g_params, d_params = list(G.parameters()), list(D.parameters())
        if self.inner_optimizer == "adam":
            opt_g = torch.optim.Adam(g_params, lr=self.inner_lr, betas=(0.0, 0.999))
            opt_d = torch.optim.Adam(d_params, lr=self.inner_lr, betas=(0.0, 0.999))

        def step(params: list[nn.Parameter], grads: tuple[torch.Tensor, ...], opt) -> None:
            if self.inner_optimizer == "sgd":
                with torch.no_grad():
                    torch._foreach_add_(params, list(grads), alpha=-self.inner_lr)
            else:
                for p, g in zip(params, grads):
                    p.grad = g
                opt.step()
                opt.zero_grad(set_to_none=True)

        totals = {k: torch.zeros((), device=dev) for k in ("d_loss", "g_loss", "gp", "wdist")}
        for _ in range(steps):
            # critic: fakes from a fresh z, interpolation eps per sample
            z = torch.randn(n, self.z_dim, generator=gen, device=dev)
            with torch.no_grad():
                fake = G(z)
            eps = torch.rand(n, generator=gen, device=dev)
            scores = D(torch.cat([real, fake]))
            wdist = scores[:n].mean() - scores[n:].mean()
            gp = gradient_penalty(D, real, fake, eps)
            d_loss = -wdist + self.gp_weight * gp
            step(d_params, torch.autograd.grad(d_loss, d_params), opt_d if self.inner_optimizer == "adam" else None)
            # generator: a fresh z, Wasserstein loss through the just-updated critic
            z = torch.randn(n, self.z_dim, generator=gen, device=dev)
            g_loss = -D(G(z)).mean()
            step(g_params, torch.autograd.grad(g_loss, g_params), opt_g if self.inner_optimizer == "adam" else None)
            for k, v in (("d_loss", d_loss), ("g_loss", g_loss), ("gp", gp), ("wdist", wdist)):
                totals[k] += v.detach()
        return totals

    def _step_fn(self) -> Callable[..., Any]:
        """``_batched_step``, compiled once with torch.compile when ``compile`` is set."""
        if not self.compile:
            return _batched_step
        if self._compiled is None:
            # fullgraph: a graph break would silently leave pieces eager; dynamic=False: one graph per
            # (T, n) shape -- a meta-step sees at most two (full chunks and the remainder).
            self._compiled = torch.compile(_batched_step, fullgraph=True, dynamic=False, backend=COMPILE_BACKEND)
        return self._compiled

    def _batched_inner_loop(self, reals: list[torch.Tensor], seeds: list[int], steps: int) -> tuple[Params, Params, dict[str, torch.Tensor]]:
        """``steps`` inner iterations of T = len(reals) tasks at once, each from Phi (ours).

        ``reals``: T tensors [n, C, H, W] float32 on the device (the same n); ``seeds``: each task's seed,
        drawn from exactly as the sequential loop draws (per step: z for the critic, eps, z for the
        generator, from the task's own generator). Returns the final stacks W (PG, PD) {name: [T, *shape]}
        and the losses summed over tasks and steps.
        """
        T, (n, dev) = len(reals), (reals[0].shape[0], self.device)
        real = torch.stack(reals, 1).flatten(1, 2)  # [n, T*C, H, W]
        gens = [torch.Generator(device=dev).manual_seed(int(s)) for s in seeds]
        PG, PD = stack_params(self.G, T), stack_params(self.D, T)
        adam = None
        if self.inner_optimizer == "adam":
            adam = tuple({k: torch.zeros_like(p) for k, p in P.items()} for P in (PG, PG, PD, PD))
        step_fn = self._step_fn()
        stats = torch.zeros(4, device=dev)
        for k in range(1, steps + 1):
            zc, eps, zg = [], [], []
            for gen in gens:  # per task, in the sequential loop's order
                zc.append(torch.randn(n, self.z_dim, generator=gen, device=dev))
                eps.append(torch.rand(n, generator=gen, device=dev))
                zg.append(torch.randn(n, self.z_dim, generator=gen, device=dev))
            bc2_sqrt = torch.tensor((1 - INNER_ADAM_BETAS[1] ** k) ** 0.5, device=dev)
            PG, PD, adam, st = step_fn(self.G, self.D, PG, PD, adam, real, torch.stack(zc, 1), torch.stack(eps, 1),
                                       torch.stack(zg, 1), bc2_sqrt, self.gp_weight, self.inner_lr)
            stats += st.sum(1)
        return PG, PD, dict(zip(("d_loss", "g_loss", "gp", "wdist"), stats))

    def _chunks(self, tasks: list[Task]) -> list[list[tuple[torch.Tensor, int]]]:
        """Consecutive runs of at most ``task_batch`` tasks with the same number of images: (images, seed)."""
        chunks: list[list[tuple[torch.Tensor, int]]] = []
        for task in tasks:
            real = self._images(task.images)
            if not chunks or len(chunks[-1]) == self.task_batch or chunks[-1][0][0].shape[0] != real.shape[0]:
                chunks.append([])
            chunks[-1].append((real, int(task.seed)))
        return chunks

    def _fast_nets(self) -> tuple[nn.Module, nn.Module]:
        if self._fast is None:
            self._fast = (copy.deepcopy(self.G), copy.deepcopy(self.D))
        G, D = self._fast
        G.load_state_dict(self.G.state_dict())
        D.load_state_dict(self.D.state_dict())
        return G, D

    # ----------------------------------------------------------------- Method interface
    def meta_train_step(self, tasks: list[Task], sync: GradSync = no_sync) -> dict[str, float]:
        if not tasks:
            raise ValueError("figr: meta_train_step needs at least one task per worker")
        phi = self.parameters()
        acc = [torch.zeros_like(p, dtype=torch.float64) for p in phi]
        totals: dict[str, torch.Tensor] = {}
        if self.task_batch == 1 and not self.compile:  # the sequential loop
            for task in tasks:
                real = self._images(task.images)
                G, D = self._fast_nets()  # W starts at Phi
                gen = torch.Generator(device=self.device).manual_seed(int(task.seed))
                for k, v in self._inner_loop(G, D, real, gen, self.inner_steps).items():
                    totals[k] = totals.get(k, 0) + v
                with torch.no_grad():
                    for a, p, w in zip(acc, phi, list(G.parameters()) + list(D.parameters())):
                        a.add_(p.double()).sub_(w.double())
        else:  # T tasks at a time as one computation (and/or the compiled step)
            names = [k for k, _ in self.G.named_parameters()] + [k for k, _ in self.D.named_parameters()]
            for chunk in self._chunks(tasks):
                PG, PD, part = self._batched_inner_loop([r for r, _ in chunk], [s for _, s in chunk], self.inner_steps)
                for k, v in part.items():
                    totals[k] = totals.get(k, 0) + v
                stacks = [PG[k] for k in names[: len(PG)]] + [PD[k] for k in names[len(PG):]]
                with torch.no_grad():  # sum over the chunk's tasks of Phi - W_t, in float64 (exact, as in the loop above)
                    for a, p, w in zip(acc, phi, stacks):
                        a.add_(p.double(), alpha=w.shape[0]).sub_(w.sum(0, dtype=torch.float64))
        with torch.no_grad():
            for p, a in zip(phi, acc):
                p.grad = a.div_(len(tasks)).to(p.dtype)
        del acc
        sync(phi)  # average the meta-gradient (Phi - W) across workers, in place
        with torch.no_grad():
            meta_grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in phi))
        self.opt_G.step()
        self.opt_D.step()
        self.opt_G.zero_grad(set_to_none=True)
        self.opt_D.zero_grad(set_to_none=True)
        denom = len(tasks) * self.inner_steps
        out = {k: float(v) / denom for k, v in totals.items()}
        out["meta_grad_norm"] = float(meta_grad_norm)
        return out

    def adapt(self, shots: torch.Tensor, seed: int, steps: int | None = None) -> FIGRSampler:
        steps = self.adapt_steps if steps is None else int(steps)
        if steps < 0:
            raise ValueError(f"figr: adapt steps must be >= 0, got {steps}")
        G, D = copy.deepcopy(self.G), copy.deepcopy(self.D)
        if steps and self.compile:  # the compiled step, on one task
            PG, _, _ = self._batched_inner_loop([self._images(shots)], [int(seed)], steps)
            with torch.no_grad():
                for k, p in G.named_parameters():
                    p.copy_(PG[k][0])
        elif steps:
            gen = torch.Generator(device=self.device).manual_seed(int(seed))
            self._inner_loop(G, D, self._images(shots), gen, steps)
        del D
        for p in G.parameters():
            p.requires_grad_(False)
        return FIGRSampler(G, self.z_dim, self.image_shape, self.device)

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(
            {
                "arch": self.arch,
                "width": self.width,
                "z_dim": self.z_dim,
                "image_shape": list(self.image_shape),
                "G": self.G.state_dict(),
                "D": self.D.state_dict(),
                "opt_G": self.opt_G.state_dict(),
                "opt_D": self.opt_D.state_dict(),
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = {"arch": self.arch, "width": self.width, "z_dim": self.z_dim, "image_shape": list(self.image_shape)}
        theirs = {k: (list(state[k]) if k == "image_shape" else state[k]) for k in mine if k in state}
        if any(theirs[k] != mine[k] for k in theirs):
            raise ValueError(f"figr: checkpoint was built with {theirs}, this model with {mine}")
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])

    def parameters(self) -> list[nn.Parameter]:
        return list(self.G.parameters()) + list(self.D.parameters())
