"""Meta Transfer GAN (Zhang & Hu): a conditional GAN pre-trained on the base classes, then
Meta-Transfer-Learning's scale-and-shift (SS) meta-learned on frozen convolutions.

No public code exists; this follows the equations of "Meta Transfer GAN: A Meta-learning Approach
to Few-shot GAN" (Hao Zhang, Zhe Hu).
One ``train mtgan`` run goes through the phases, switched by this method's own step counter
(the harness drives the steps), so the phase is always derivable from the checkpoint:

1. Pre-training, steps ``[0, pretrain_steps)``. G(z, y) = IC(NM_pre([z, one-hot(y)])) over all
   dataset classes; D(x) = softmax(CF_pre(FE(x))) with num_classes + 1 outputs, the last = fake.
   Each step is one D step then one G step (Adam) on the images of this worker's tasks, each fake
   asking for the label of a real image of the batch:
     L_D = -mean_R log D_y(x) - mean_F log D_fake(x)      (eq. 4; see "eq. 7" below)
     L_G = -mean_F log D_y(G(z, y))                        (eq. 6, ``g_target=class``)
         or -mean_F log (1 - D_fake(G(z, y)))               (eq. 5, ``g_target=real``)
2. Meta-training, steps ``>= pretrain_steps``. NM_pre and CF_pre are dropped; every IC/FE tensor
   (convolutions, PReLU slopes, LayerNorm affines) is frozen and left bit-identical; the SS
   parameters (1 and 0 at first) act on every convolution. NM (input z_dim + ``ways``) and CF
   (``ways`` + 1 outputs) are new heads. This worker's tasks are cut into N-way tasks of ``ways``
   consecutive harness tasks (one class each, way = order of first appearance; a repeated class
   shares its way). Per N-way task i: NM^i, CF^i start from NM, CF and take ``inner_steps``
   steps on the support set (eq. 10: a CF step on L_D, then an NM step on L_G); then the SS
   gradient is taken on the query set at (NM^i, CF^i, SS): FE's SS on L_D, IC's SS on L_G
   (eq. 11). After all tasks: SS <- Adam step on the task-mean gradient; NM, CF <- the mean of
   the NM^i, CF^i (eq. 12). Both go through ``sync``, so W workers equal one worker with W times
   the tasks.
3. Test (``adapt``): NM and CF fitted as in eq. 10 on the shots, SS and IC/FE as meta-trained;
   then sample G(z, way 0).

Where the paper is ambiguous or inconsistent, and what this module does:
- eq. 7 writes the fake term of L_D as -log(1 - D_{N+1}(x)), which would train D to call fakes
  real and contradicts eq. 4 (max log D_{N+1}(G(z))); we use eq. 4's -log D_{N+1}. Eq. 6 writes
  "min_G E[log D_y]", a sign slip: eq. 7's L_G = -log D_y is used. Eq. 9 updates D with L_G,
  clearly meaning L_D. Sums in eq. 7 are means here (a constant factor for Adam).
- Phase 2 "drops" the FCs (section 4.1) yet Algorithm 1 never re-initialises NM/CF, and eq. 10
  starts task i from Phi_NM while eq. 12 averages the NM^i: we read this as fresh heads sized for
  N-way tasks at the phase switch, then Reptile-style averaging (eq. 12 is the new NM/CF, and
  the start of the next tasks and of the test fit). ``head_init=fresh`` instead starts every task
  and every test fit from a seeded re-initialisation (the averages then only feed the logs).
- SS: the text (section 4.2) says one scalar scale and shift per layer; Meta-Transfer Learning
  scales each filter. ``ss=channel`` (default: one scale and shift per output channel) or
  ``ss=layer``. Channel is the default because a per-layer scale in front of a LayerNorm is
  almost cancelled (PReLU is positively homogeneous and the norm removes a common factor), so
  per-layer SS barely moves the network; MTL's own per-filter choice keeps that freedom.
- "L" of eq. 11 is unnamed; FE's SS follows L_D and IC's SS follows L_G (each net's own loss),
  first-order (no gradient through the inner steps, which eq. 11 does not ask for). The update
  is Adam (``meta_lr``) rather than eq. 11's plain step: SS gradients of the 10 layers differ by
  orders of magnitude. ``meta_ss=false`` keeps SS at 1 and 0 (the "SS left at its initial
  values" control); the query losses are still computed and logged, so both arms cost the same.
- Support and query: the harness draws ``shots + queries`` images per class; the first
  ``shots`` are the support set, the rest the query set (if a task has no extra images, the
  support doubles as the query).
- Evaluation gives ``adapt`` the shots of ONE class: that is a 1-way task whose class takes way 0
  (ways are exchangeable in meta-training: their order is the sampler's random order), so NM/CF
  are fitted on the shots with label 0 and the other ways stay unused; steps=0 samples the
  meta-learned NM for way 0 unadapted.
- Architecture, noise and learning rates are not given: FIGR's DCGAN-style nets (LayerNorm,
  PReLU, 5x5 convs, methods/mtgan_nets.py) at ``width`` 16, z ~ N(0, I) of 100 dims, Adam 2e-4
  (beta1 0.5) in pre-training, SGD on NM/CF (eq. 10) and Adam 1e-3 on SS.
- Paper setting: 5-way and 3-way 10-shot (``--set shots=10``); the default here is 4 shots, the
  shots every method in the comparison is given (FIGR's n and the transfer baselines' 4 images).

Determinism: every draw comes from a ``torch.Generator`` seeded by the task seeds (the first task
of an N-way group for phase 2, each task for phase 1); initial weights depend only on ``init_seed``.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from methods import register
from methods.base import Diagnostics, GradSync, Method, Task, no_sync
from methods.mtgan_nets import (SS_GRANULARITIES, FeatureExtractor, ImageConstructor, SSConv2d, frozen_parameters,
                                ss_parameters)
from methods.nets import check_image_shape, stacked_update

G_TARGETS = ("class", "real")
HEAD_INITS = ("meta", "fresh")
INNER_OPTIMIZERS = ("sgd", "adam")
SAMPLE_CHUNK = 256


def d_loss(real_logits: torch.Tensor, real_labels: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-mean log D_y(real) - mean log D_fake(fake), D = softmax over N+1 outputs, the last = fake (eq. 4)."""
    real = F.log_softmax(real_logits, dim=1).gather(1, real_labels.view(-1, 1)).mean()
    fake = F.log_softmax(fake_logits, dim=1)[:, -1].mean()
    return -real - fake


def g_loss(fake_logits: torch.Tensor, labels: torch.Tensor, target: str = "class") -> torch.Tensor:
    """Generator loss on D's logits for G(z, y): eq. 6 (``class``: -log D_y) or eq. 5 (``real``: -log sum_{i<=N} D_i)."""
    logp = F.log_softmax(fake_logits, dim=1)
    if target == "class":
        return -logp.gather(1, labels.view(-1, 1)).mean()
    if target == "real":
        return -torch.logsumexp(logp[:, :-1], dim=1).mean()
    raise ValueError(f"unknown g_target {target!r}; choose one of {', '.join(G_TARGETS)}")


Heads = list[torch.Tensor]  # [weight [T, O, I], bias [T, O]]: T stacked per-task copies of a Linear head (ours)


def _b_linear(head: Heads, x: torch.Tensor) -> torch.Tensor:
    """T Linear heads at once (ours): x [T, n, I] -> [T, n, O], task t through (weight[t], bias[t])."""
    return torch.baddbmm(head[1].unsqueeze(1), x, head[0].transpose(1, 2))


def _b_d_loss(real_logits: torch.Tensor, real_labels: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``d_loss`` per task (ours): logits [T, n, N+1], labels [T, n] -> [T]."""
    real = F.log_softmax(real_logits, dim=2).gather(2, real_labels.unsqueeze(2)).squeeze(2).mean(1)
    fake = F.log_softmax(fake_logits, dim=2)[..., -1].mean(1)
    return -real - fake


def _b_g_loss(fake_logits: torch.Tensor, labels: torch.Tensor, target: str) -> torch.Tensor:
    """``g_loss`` per task (ours): logits [T, n, N+1], labels [T, n] -> [T]."""
    logp = F.log_softmax(fake_logits, dim=2)
    if target == "class":
        return -logp.gather(2, labels.unsqueeze(2)).squeeze(2).mean(1)
    return -torch.logsumexp(logp[..., :-1], dim=2).mean(1)


class MTGANSampler:
    """G(z, way) with the fitted NM; ``sample(n, seed)`` -> [n, C, H, W] in [-1, 1] on the CPU."""

    def __init__(self, ic: nn.Module, nm: nn.Module, z_dim: int, ways: int, way: int,
                 image_shape: tuple[int, int, int], device: torch.device):
        self.ic, self.nm = ic.eval(), nm.eval()
        self.z_dim, self.ways, self.way = z_dim, ways, way
        self.image_shape = tuple(image_shape)
        self.device = device

    @torch.no_grad()
    def sample(self, n: int, seed: int) -> torch.Tensor:
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        z = torch.randn(int(n), self.z_dim, generator=gen, device=self.device)
        y = F.one_hot(torch.full((int(n),), self.way, device=self.device), self.ways).float()
        out = [self.ic(self.nm(torch.cat([zc, yc], 1))).float().cpu()
               for zc, yc in zip(z.split(SAMPLE_CHUNK), y.split(SAMPLE_CHUNK))]
        return torch.cat(out) if out else torch.empty(0, *self.image_shape)


@register
class MTGAN(Method):
    name = "mtgan"
    default_config = {
        "width": 16,  # base channel count of IC and FE (as FIGR's default; 64 on GPUs)
        "z_dim": 100,
        "shots": 4,  # K: support images per class, in meta-training and at test (paper: 10)
        "queries": 4,  # Q: query images per class in meta-training (the harness draws shots + queries)
        "n_way": 5,  # N of the N-way meta-training tasks (paper: 5 and 3); keep tasks_per_worker a multiple
        "pretrain_steps": 200,  # phase 1 length in meta-steps; phase 2 (meta-training) runs after it
        "pretrain_lr": 2e-4,  # Adam, phase 1 (IC, FE, NM_pre, CF_pre)
        "pretrain_beta1": 0.5,
        "g_target": "class",  # eq. 6 (the paper's choice) or "real" (eq. 5)
        "inner_steps": 10,  # eq. 10 steps on each task's support set
        "inner_lr": 0.02,  # eq. 10 learning rate (NM and CF)
        "inner_optimizer": "sgd",  # "sgd" (eq. 10) or "adam" (fresh per task, betas (0.5, 0.999))
        "meta_lr": 1e-3,  # Adam on SS (eq. 11)
        "meta_ss": True,  # false: SS stays at 1/0 (the "SS at initial values" control)
        "ss": "channel",  # "channel" (per output channel, MTL) or "layer" (one scalar pair a layer, the paper's text)
        "head_init": "meta",  # "meta" (eq. 10 from the eq. 12 average) or "fresh" (seeded re-init per task / test)
        "adapt_steps": 10,  # eq. 10 steps on the shots at test (phase 3)
        "init_seed": 0,
        "task_batch": 1,  # N-way tasks of a phase-2 step fitted as one batched computation (1: one after another)
    }
    # One 5-way task per worker per step. The final checkpoint is the model: validation scores in
    # phase 1 would rank checkpoints that have no meta-learned SS yet, so selecting on them could
    # evaluate a pre-trained cGAN as "MT-GAN". --set select_metric=val_fid_domain still works.
    harness_defaults = {"tasks_per_worker": 5, "select_metric": "last"}
    variant_keys = ("meta_ss",)  # meta-learned SS vs the SS-at-initial-values control

    def __init__(self, config: dict[str, Any], image_shape: tuple[int, int, int], device: torch.device | str = "cpu",
                 num_classes: int = 0):
        super().__init__(config, image_shape, device, num_classes)
        cfg = self.config
        self.image_shape = check_image_shape(self.image_shape)
        for key, allowed in (("g_target", G_TARGETS), ("head_init", HEAD_INITS),
                             ("inner_optimizer", INNER_OPTIMIZERS), ("ss", SS_GRANULARITIES)):
            if str(cfg[key]) not in allowed:
                raise ValueError(f"mtgan: unknown {key} {cfg[key]!r}; choose one of {', '.join(allowed)}")
        self.z_dim, self.width, self.ways = int(cfg["z_dim"]), int(cfg["width"]), int(cfg["n_way"])
        self.shots, self.pretrain_steps = int(cfg["shots"]), int(cfg["pretrain_steps"])
        self.inner_steps, self.adapt_steps = int(cfg["inner_steps"]), int(cfg["adapt_steps"])
        self.inner_lr, self.g_target = float(cfg["inner_lr"]), str(cfg["g_target"])
        self.inner_optimizer, self.head_init = str(cfg["inner_optimizer"]), str(cfg["head_init"])
        self.meta_ss, self.ss = bool(cfg["meta_ss"]), str(cfg["ss"])
        if self.num_classes < 1:
            raise ValueError("mtgan: needs num_classes (the dataset's class count) for its pre-training classifier")
        if min(self.ways, self.shots, self.z_dim, self.width, self.inner_steps) < 1 or min(
                self.pretrain_steps, self.adapt_steps, int(cfg["queries"])) < 0:
            raise ValueError("mtgan: n_way, shots, z_dim, width, inner_steps must be >= 1 and "
                             "pretrain_steps, adapt_steps, queries >= 0")
        task_batch = cfg["task_batch"]
        if isinstance(task_batch, bool) or not isinstance(task_batch, int) or task_batch < 1:
            raise ValueError(f"mtgan: task_batch must be an integer >= 1 (1: N-way tasks one after another), "
                             f"got {task_batch!r}")
        self.task_batch = int(task_batch)

        with torch.random.fork_rng(devices=[]):  # built on the CPU from init_seed alone
            torch.manual_seed(int(cfg["init_seed"]))
            self.ic = ImageConstructor(self.image_shape, self.width, self.ss)
            self.fe = FeatureExtractor(self.image_shape, self.width, self.ss)
            self.nm_pre = nn.Linear(self.z_dim + self.num_classes, self.ic.nm_dim)
            self.cf_pre = nn.Linear(self.fe.feat_dim, self.num_classes + 1)
            self.nm = nn.Linear(self.z_dim + self.ways, self.ic.nm_dim)
            self.cf = nn.Linear(self.fe.feat_dim, self.ways + 1)
        for mod in (self.ic, self.fe, self.nm_pre, self.cf_pre, self.nm, self.cf):
            mod.to(self.device)
        betas = (float(cfg["pretrain_beta1"]), 0.999)
        lr = float(cfg["pretrain_lr"])
        self.opt_g_pre = torch.optim.Adam(self._pre_g_params(), lr=lr, betas=betas)
        self.opt_d_pre = torch.optim.Adam(self._pre_d_params(), lr=lr, betas=betas)
        self.opt_ss = torch.optim.Adam(self.ss_params(), lr=float(cfg["meta_lr"]))
        self.step = 0  # meta_train_step calls so far: the phase is a function of it
        self._set_phase_flags()

    # ------------------------------------------------------------------ parameter groups
    def _pre_g_params(self) -> list[nn.Parameter]:
        return frozen_parameters(self.ic) + list(self.nm_pre.parameters())

    def _pre_d_params(self) -> list[nn.Parameter]:
        return frozen_parameters(self.fe) + list(self.cf_pre.parameters())

    def ss_params(self) -> list[nn.Parameter]:
        """SS of IC, then SS of FE."""
        return ss_parameters(self.ic) + ss_parameters(self.fe)

    def frozen_params(self) -> list[nn.Parameter]:
        """Every IC/FE tensor that phase 2 leaves bit-identical."""
        return frozen_parameters(self.ic) + frozen_parameters(self.fe)

    @property
    def phase(self) -> int:
        """1 = pre-training, 2 = meta-training (phase 3 is ``adapt``)."""
        return 1 if self.step < self.pretrain_steps else 2

    def _set_phase_flags(self) -> None:
        # In phase 2 the frozen tensors need no gradient (nor does anything in phase 1's SS).
        for p in self.frozen_params():
            p.requires_grad_(self.phase == 1)
        for p in self.ss_params():
            p.requires_grad_(self.phase == 2)

    # ------------------------------------------------------------------ helpers
    def _images(self, images: torch.Tensor) -> torch.Tensor:
        images = torch.as_tensor(images)
        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape or images.shape[0] < 1:
            raise ValueError(f"mtgan: expected images [n>=1, {', '.join(map(str, self.image_shape))}], got {tuple(images.shape)}")
        return images.to(self.device, torch.get_default_dtype())  # float32 unless a test sets float64

    def _g(self, nm: nn.Module, z: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
        return self.ic(nm(torch.cat([z, F.one_hot(y, classes).float()], 1)))

    def _task_heads(self, gen: torch.Generator) -> tuple[nn.Module, nn.Module]:
        """NM^i, CF^i at the start of a task: copies of the meta heads, or seeded fresh ones."""
        if self.head_init == "meta":
            return copy.deepcopy(self.nm), copy.deepcopy(self.cf)
        seed = int(torch.randint(2**31 - 1, (1,), generator=gen, device=self.device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            nm, cf = nn.Linear(*self.nm.weight.shape[::-1]), nn.Linear(*self.cf.weight.shape[::-1])
        return nm.to(self.device), cf.to(self.device)

    def _fit_heads(self, nm: nn.Module, cf: nn.Module, real: torch.Tensor, y: torch.Tensor,
                   gen: torch.Generator, steps: int) -> dict[str, float]:
        """Eq. 10 in place: ``steps`` x (one CF step on L_D, one NM step on L_G) on support images ``real``."""
        nm_p, cf_p = list(nm.parameters()), list(cf.parameters())
        if self.inner_optimizer == "adam":
            opts = (torch.optim.Adam(cf_p, lr=self.inner_lr, betas=(0.5, 0.999)),
                    torch.optim.Adam(nm_p, lr=self.inner_lr, betas=(0.5, 0.999)))

        def apply(params, grads, opt) -> None:
            if self.inner_optimizer == "sgd":
                with torch.no_grad():
                    torch._foreach_add_(params, list(grads), alpha=-self.inner_lr)
            else:
                for p, g in zip(params, grads):
                    p.grad = g
                opt.step()
                opt.zero_grad(set_to_none=True)

        n, dl, gl = real.shape[0], 0.0, 0.0
        with torch.no_grad():
            real_feat = self.fe(real)  # FE and SS are fixed during the inner loop
        for _ in range(steps):
            z = torch.randn(n, self.z_dim, generator=gen, device=self.device)
            with torch.no_grad():
                fake_feat = self.fe(self._g(nm, z, y, self.ways))
            loss_d = d_loss(cf(real_feat), y, cf(fake_feat))
            apply(cf_p, torch.autograd.grad(loss_d, cf_p), opts[0] if self.inner_optimizer == "adam" else None)
            z = torch.randn(n, self.z_dim, generator=gen, device=self.device)
            loss_g = g_loss(cf(self.fe(self._g(nm, z, y, self.ways))), y, self.g_target)
            apply(nm_p, torch.autograd.grad(loss_g, nm_p), opts[1] if self.inner_optimizer == "adam" else None)
            dl, gl = dl + loss_d.item(), gl + loss_g.item()
        return {"inner_d_loss": dl / max(steps, 1), "inner_g_loss": gl / max(steps, 1)}

    def _g_b(self, nm: Heads, z: torch.Tensor, y1h: torch.Tensor) -> torch.Tensor:
        """G for T tasks at once (ours): z [T, n, z_dim], y1h [T, n, ways] -> images [T*n, C, H, W] (IC is shared)."""
        return self.ic(_b_linear(nm, torch.cat([z, y1h], 2)).flatten(0, 1))

    def _fit_heads_batched(self, NM: Heads, CF: Heads, real: torch.Tensor, y: torch.Tensor,
                           gens: list[torch.Generator], steps: int) -> tuple[Heads, Heads, torch.Tensor, torch.Tensor]:
        """Eq. 10 for T tasks at once (ours): ``_fit_heads`` on T stacked head copies, IC/FE shared.

        ``real`` [T, n, C, H, W], ``y`` [T, n] way labels, ``gens`` task t's generator (drawn from in
        ``_fit_heads``'s order). The shared IC and FE see all T*n samples as one batch; nothing mixes tasks
        (per-sample LayerNorm, per-task heads and losses), so task t's gradient of the summed loss is its own.
        Returns the fitted (NM, CF) stacks and the summed D and G losses per task, [T] each.
        """
        T, n = y.shape
        y1h = F.one_hot(y, self.ways).to(real.dtype)
        with torch.no_grad():
            real_feat = self.fe(real.flatten(0, 1)).view(T, n, -1)  # FE and SS are fixed during the inner loop
        adam = self.inner_optimizer == "adam"
        st_cf = [[torch.zeros_like(p) for p in CF] for _ in range(2)] if adam else None
        st_nm = [[torch.zeros_like(p) for p in NM] for _ in range(2)] if adam else None
        dl = gl = torch.zeros(T, dtype=real.dtype, device=self.device)
        betas = (0.5, 0.999)
        NM, CF = [p.detach() for p in NM], [p.detach() for p in CF]
        for k in range(1, steps + 1):
            z = torch.stack([torch.randn(n, self.z_dim, generator=g, device=self.device) for g in gens])
            with torch.no_grad():
                fake_feat = self.fe(self._g_b(NM, z, y1h)).view(T, n, -1)
            cf = [p.requires_grad_(True) for p in CF]
            loss_d = _b_d_loss(_b_linear(cf, real_feat), y, _b_linear(cf, fake_feat))
            CF = [p.detach() for p in stacked_update(cf, torch.autograd.grad(loss_d.sum(), cf), st_cf, k, self.inner_lr, betas)]
            z = torch.stack([torch.randn(n, self.z_dim, generator=g, device=self.device) for g in gens])
            nm = [p.requires_grad_(True) for p in NM]
            loss_g = _b_g_loss(_b_linear(CF, self.fe(self._g_b(nm, z, y1h)).view(T, n, -1)), y, self.g_target)
            NM = [p.detach() for p in stacked_update(nm, torch.autograd.grad(loss_g.sum(), nm), st_nm, k, self.inner_lr, betas)]
            dl, gl = dl + loss_d.detach(), gl + loss_g.detach()
        return NM, CF, dl, gl

    def _stacked_heads(self, gens: list[torch.Generator]) -> tuple[Heads, Heads]:
        """NM^i, CF^i of T tasks at their start (``_task_heads`` per task, same draws), stacked (ours)."""
        heads = [self._task_heads(g) for g in gens]
        stack = lambda mods: [torch.stack([m.weight.detach() for m in mods]),  # noqa: E731
                              torch.stack([m.bias.detach() for m in mods])]
        return stack([h[0] for h in heads]), stack([h[1] for h in heads])

    def _meta_tasks_batched(self, splits: list[tuple[torch.Tensor, ...]], seeds: list[int], ic_ss: list[nn.Parameter],
                            fe_ss: list[nn.Parameter], acc_ss: list[torch.Tensor], acc_heads: list[torch.Tensor],
                            totals: dict[str, float], n_groups: int) -> None:
        """Phase 2 for T N-way tasks of equal support/query sizes at once (ours); adds to the accumulators
        exactly what ``_meta_step``'s per-task loop adds (SS gradients summed over tasks, heads summed)."""
        T = len(splits)
        sup, sup_y, qry, qry_y = (torch.stack([s[i] for s in splits]) for i in range(4))
        gens = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]
        NM, CF = self._stacked_heads(gens)
        NM, CF, dl, gl = self._fit_heads_batched(NM, CF, sup, sup_y, gens, self.inner_steps)
        # eq. 11 at (NM^i, CF^i, SS) on the query sets: one backward per net gives the sum over tasks
        nq = qry_y.shape[1]
        z = torch.stack([torch.randn(nq, self.z_dim, generator=g, device=self.device) for g in gens])
        fake = self._g_b(NM, z, F.one_hot(qry_y, self.ways).to(z.dtype))
        feats = self.fe(torch.cat([qry.flatten(0, 1), fake.detach()])).view(2, T, nq, -1)
        loss_d = _b_d_loss(_b_linear(CF, feats[0]), qry_y, _b_linear(CF, feats[1]))
        grads_fe = torch.autograd.grad(loss_d.sum(), fe_ss)
        loss_g = _b_g_loss(_b_linear(CF, self.fe(fake).view(T, nq, -1)), qry_y, self.g_target)
        grads_ic = torch.autograd.grad(loss_g.sum(), ic_ss)
        with torch.no_grad():
            for a, g in zip(acc_ss, list(grads_ic) + list(grads_fe)):
                a.add_(g.double())
            for a, w in zip(acc_heads, NM + CF):
                a.add_(w.sum(0, dtype=torch.float64))
        steps = max(self.inner_steps, 1)
        per_task = torch.stack([dl / steps, gl / steps, loss_d.detach(), loss_g.detach()]).tolist()  # one sync
        for key, values in zip(("inner_d_loss", "inner_g_loss", "query_d_loss", "query_g_loss"), per_task):
            for v in values:
                totals[key] = totals.get(key, 0.0) + v / n_groups

    def _split(self, group: list[Task]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Support/query images and way labels of one N-way task (ways by first appearance of a class)."""
        ways: dict[int, int] = {}
        sup, sup_y, qry, qry_y = [], [], [], []
        for t in group:
            images = self._images(t.images)
            way = ways.setdefault(int(t.label), len(ways))
            s = images[: self.shots]
            q = images[self.shots:] if images.shape[0] > self.shots else s
            sup.append(s); qry.append(q)
            sup_y += [way] * len(s); qry_y += [way] * len(q)
        as_y = lambda v: torch.tensor(v, dtype=torch.long, device=self.device)  # noqa: E731
        return torch.cat(sup), as_y(sup_y), torch.cat(qry), as_y(qry_y)

    # ------------------------------------------------------------------ phases
    def _pretrain_step(self, tasks: list[Task], sync: GradSync) -> dict[str, float]:
        real, y, gens = [], [], []
        for t in tasks:
            if not 0 <= int(t.label) < self.num_classes:
                raise ValueError(f"mtgan: task label {t.label} is not a class index below num_classes={self.num_classes}")
            images = self._images(t.images)
            real.append(images)
            y += [int(t.label)] * len(images)
            gens.append(torch.Generator(device=self.device).manual_seed(int(t.seed)))
        real = torch.cat(real)
        y = torch.tensor(y, dtype=torch.long, device=self.device)

        def draw_z() -> torch.Tensor:  # per task from its own seed: the batch splits across workers exactly
            return torch.cat([torch.randn(len(t.images), self.z_dim, generator=g, device=self.device)
                              for t, g in zip(tasks, gens)])

        n = real.shape[0]
        with torch.no_grad():
            fake = self._g(self.nm_pre, draw_z(), y, self.num_classes)
        logits = self.cf_pre(self.fe(torch.cat([real, fake])))
        loss_d = d_loss(logits[:n], y, logits[n:])
        d_params = self._pre_d_params()
        for p, g in zip(d_params, torch.autograd.grad(loss_d, d_params)):
            p.grad = g
        sync(d_params)
        self.opt_d_pre.step()
        self.opt_d_pre.zero_grad(set_to_none=True)

        g_params = self._pre_g_params()
        loss_g = g_loss(self.cf_pre(self.fe(self._g(self.nm_pre, draw_z(), y, self.num_classes))), y, self.g_target)
        for p, g in zip(g_params, torch.autograd.grad(loss_g, g_params)):
            p.grad = g
        sync(g_params)
        self.opt_g_pre.step()
        self.opt_g_pre.zero_grad(set_to_none=True)
        with torch.no_grad():
            real_acc = float((logits[:n].argmax(1) == y).float().mean())
            fake_acc = float((logits[n:].argmax(1) == self.num_classes).float().mean())
        return {"phase": 1.0, "d_loss": loss_d.item(), "g_loss": loss_g.item(),
                "d_real_acc": real_acc, "d_fake_acc": fake_acc}

    def _meta_step(self, tasks: list[Task], sync: GradSync) -> dict[str, float]:
        groups = [tasks[i:i + self.ways] for i in range(0, len(tasks), self.ways)]
        ic_ss, fe_ss = ss_parameters(self.ic), ss_parameters(self.fe)
        heads = list(self.nm.parameters()) + list(self.cf.parameters())
        acc_ss = [torch.zeros_like(p, dtype=torch.float64) for p in ic_ss + fe_ss]
        acc_heads = [torch.zeros_like(p, dtype=torch.float64) for p in heads]
        totals: dict[str, float] = {}
        if self.task_batch > 1:  # T N-way tasks at a time (consecutive, equal support/query sizes)
            chunk: list[tuple[tuple[torch.Tensor, ...], int]] = []
            for group in groups + [None]:
                split = self._split(group) if group is not None else None
                if chunk and (split is None or len(chunk) == self.task_batch or any(
                        a.shape != b.shape for a, b in zip(chunk[0][0], split))):
                    self._meta_tasks_batched([c[0] for c in chunk], [c[1] for c in chunk], ic_ss, fe_ss, acc_ss,
                                             acc_heads, totals, len(groups))
                    chunk = []
                if split is not None:
                    chunk.append((split, int(group[0].seed)))
            groups_seq: list[list[Task]] = []
        else:
            groups_seq = groups
        for group in groups_seq:
            sup, sup_y, qry, qry_y = self._split(group)
            gen = torch.Generator(device=self.device).manual_seed(int(group[0].seed))
            nm_i, cf_i = self._task_heads(gen)
            stats = self._fit_heads(nm_i, cf_i, sup, sup_y, gen, self.inner_steps)
            # eq. 11 at (NM^i, CF^i, SS) on the query set
            z = torch.randn(qry.shape[0], self.z_dim, generator=gen, device=self.device)
            fake = self._g(nm_i, z, qry_y, self.ways)
            loss_d = d_loss(cf_i(self.fe(qry)), qry_y, cf_i(self.fe(fake.detach())))
            grads_fe = torch.autograd.grad(loss_d, fe_ss)
            loss_g = g_loss(cf_i(self.fe(fake)), qry_y, self.g_target)
            grads_ic = torch.autograd.grad(loss_g, ic_ss)
            with torch.no_grad():
                for a, g in zip(acc_ss, list(grads_ic) + list(grads_fe)):
                    a.add_(g.double())
                for a, w in zip(acc_heads, list(nm_i.parameters()) + list(cf_i.parameters())):
                    a.add_(w.double())
            stats.update(query_d_loss=loss_d.item(), query_g_loss=loss_g.item())
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v / len(groups)

        ss = ic_ss + fe_ss
        with torch.no_grad():
            for p, a in zip(ss, acc_ss):
                p.grad = a.div_(len(groups)).to(p.dtype) if self.meta_ss else None
            for p, a in zip(heads, acc_heads):  # Phi - mean_i Phi^i: a unit step lands on the eq. 12 mean
                p.grad = (p.double() - a.div_(len(groups))).to(p.dtype)
        sync(ss + heads)
        with torch.no_grad():
            ss_norm = sum(float((p.grad.double() ** 2).sum()) for p in ss if p.grad is not None) ** 0.5
            head_norm = sum(float((p.grad.double() ** 2).sum()) for p in heads) ** 0.5
            for p in heads:
                p.sub_(p.grad)
                p.grad = None
        if self.meta_ss:
            self.opt_ss.step()
        self.opt_ss.zero_grad(set_to_none=True)
        return {"phase": 2.0, **totals, "ss_grad_norm": ss_norm, "head_move": head_norm}

    # ------------------------------------------------------------------ Method interface
    def meta_train_step(self, tasks: list[Task], sync: GradSync = no_sync) -> dict[str, float]:
        if not tasks:
            raise ValueError("mtgan: meta_train_step needs at least one task per worker")
        self._set_phase_flags()
        out = self._pretrain_step(tasks, sync) if self.phase == 1 else self._meta_step(tasks, sync)
        self.step += 1
        self._set_phase_flags()
        return out

    def adapt(self, shots: torch.Tensor, seed: int, steps: int | None = None) -> MTGANSampler:
        """Phase 3 for one class: NM/CF fitted on its shots as way 0 (eq. 10), then G(z, way 0)."""
        steps = self.adapt_steps if steps is None else int(steps)
        if steps < 0:
            raise ValueError(f"mtgan: adapt steps must be >= 0, got {steps}")
        real = self._images(shots)
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        nm, cf = self._task_heads(gen)
        y = torch.zeros(real.shape[0], dtype=torch.long, device=self.device)
        if steps:
            self._fit_heads(nm, cf, real, y, gen, steps)
        ic = copy.deepcopy(self.ic)
        for p in list(ic.parameters()) + list(nm.parameters()):
            p.requires_grad_(False)
        return MTGANSampler(ic, nm, self.z_dim, self.ways, 0, self.image_shape, self.device)

    def diagnostics(self, shots: dict[int, torch.Tensor], seed: int) -> Diagnostics:
        """Phase and how far SS moved from 1 / 0 (0 while SS is at its initial values)."""
        with torch.no_grad():
            scale = torch.cat([m.ss_scale.flatten() for m in self._ss_modules()])
            shift = torch.cat([m.ss_shift.flatten() for m in self._ss_modules()])
        return Diagnostics(metrics={"mtgan_phase": float(self.phase), "mtgan_step": float(self.step),
                                    "mtgan_ss_scale_dev": float((scale - 1).abs().mean()),
                                    "mtgan_ss_shift_dev": float(shift.abs().mean())})

    def _ss_modules(self) -> list[SSConv2d]:
        return [m for net in (self.ic, self.fe) for m in net.modules() if isinstance(m, SSConv2d)]

    def _meta(self) -> dict[str, Any]:
        return {"width": self.width, "z_dim": self.z_dim, "ways": self.ways, "ss": self.ss,
                "num_classes": self.num_classes, "image_shape": list(self.image_shape)}

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy({
            **self._meta(), "step": self.step,
            **{k: getattr(self, k).state_dict() for k in ("ic", "fe", "nm_pre", "cf_pre", "nm", "cf",
                                                          "opt_g_pre", "opt_d_pre", "opt_ss")},
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self._meta()
        theirs = {k: (list(state[k]) if k == "image_shape" else state[k]) for k in mine if k in state}
        if any(theirs[k] != mine[k] for k in theirs):
            raise ValueError(f"mtgan: checkpoint was built with {theirs}, this model with {mine}")
        for k in ("ic", "fe", "nm_pre", "cf_pre", "nm", "cf", "opt_g_pre", "opt_d_pre", "opt_ss"):
            getattr(self, k).load_state_dict(state[k])
        self.step = int(state["step"])
        self._set_phase_flags()

    def parameters(self) -> list[nn.Parameter]:
        return [p for mod in (self.ic, self.fe, self.nm_pre, self.cf_pre, self.nm, self.cf) for p in mod.parameters()]
