"""Transfer-learning baselines (Batra, Mahajan & Vartak, NYU): DCGAN, conditional DCGAN and InfoGAN
pre-trained on the base classes, then fine-tuned on the k shots of a new class augmented to a few
hundred images ("Few Shot Learning for Image Generation", sections 2 and 3.2).

``--set arch=dcgan|cdcgan|infogan`` (methods/transfer_nets.py holds the nets):
- ``dcgan``: G(z), D(x); the non-saturating GAN loss (binary cross-entropy on D's logit).
- ``cdcgan``: G([z, one-hot(y)]), D(x, y) with the label as an extra input channel; y indexes the
  dataset's classes plus one extra slot for "the new class", which fine-tuning conditions on. The
  slot starts as the mean of the classes seen in pre-training (their columns in G's first layer and
  in D's label input), a transfer of "a typical class" rather than an untrained random code.
- ``infogan``: G([z, c]) with c = a categorical code (``n_cat`` values, uniform) and ``n_cont``
  continuous codes (uniform in [-1, 1]); Q shares D's body. The mutual-information lower bound
  is maximised by minimising ``info_weight`` * CE(Q_cat(G(z, c)), c_cat) + ``info_cont_weight`` *
  MSE(Q_cont(G(z, c)), c_cont) (a unit-variance Gaussian Q up to constants), added to D's loss
  (trains Q and D's body, fakes detached) and to G's loss (Chen et al. 2016, lambda 1 for the
  discrete code; 0.1 for continuous codes here, as their continuous-code experiments favour
  a smaller weight).

Pre-training (``meta_train_step``): one D step then one G step (Adam, lr 2e-4, beta1 0.5, as DCGAN)
on the images of this worker's tasks (``tasks_per_worker`` = 8 tasks of ``shots`` images: a batch
of 32 at the defaults), gradients through ``sync`` before each step.

Fine-tuning (``adapt``, the paper's "load the weights, fine-tune with the augmented images"): the
shots are augmented to ``augment_to`` (300, as the paper) images (methods/augment.py: random
resized crop, affine, colour jitter), then ``adapt_steps`` GAN iterations on copies of G and D
with fresh Adam optimisers on seeded mini-batches of ``finetune_batch``. The paper fine-tunes 60-100
epochs of 300 images (~600-1000 steps of 32); the default of 50 steps (~5 epochs) keeps the
protocol's per-class adaptation (and its scratch control) affordable on CPUs (~3-8 s a class at
width 16 on a shared 2-core machine); set ``adapt_steps=600`` and ``width=64`` on GPUs.

Not in the paper and chosen here: the nets' per-sample GroupNorm instead of batch norm (see
transfer_nets), z of 100 dims, 10 categorical and 2 continuous InfoGAN codes (the paper gives
no architecture or sizes; its public code was not available to us).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from methods import register
from methods.augment import augment
from methods.base import GradSync, Method, Task, no_sync
from methods.nets import stacked_update
from methods.transfer_nets import Discriminator, Generator, check_side

ARCHS = ("dcgan", "cdcgan", "infogan")
SAMPLE_CHUNK = 256


class TransferSampler:
    """Samples of a (fine-tuned) generator: ``sample(n, seed)`` -> [n, C, H, W] in [-1, 1] on the CPU."""

    def __init__(self, method: "Transfer", G: nn.Module, label: int):
        self.method, self.G, self.label = method, G.eval(), label

    @torch.no_grad()
    def sample(self, n: int, seed: int) -> torch.Tensor:
        m = self.method
        gen = torch.Generator(device=m.device).manual_seed(int(seed))
        y = torch.full((int(n),), self.label, dtype=torch.long, device=m.device)
        inputs = m._latent(int(n), gen, y)[0]
        out = [self.G(chunk).float().cpu() for chunk in inputs.split(SAMPLE_CHUNK)]
        return torch.cat(out) if out else torch.empty(0, *m.image_shape)


@register
class Transfer(Method):
    name = "transfer"
    default_config = {
        "arch": "dcgan",  # dcgan | cdcgan | infogan
        "width": 16,  # base channel count of G and D (16 keeps per-class fine-tuning affordable on CPUs; 64 on GPUs)
        "z_dim": 100,
        "shots": 4,  # images per task in pre-training and shots at fine-tuning (the paper: 4)
        "lr": 2e-4,  # pre-training Adam (DCGAN's)
        "beta1": 0.5,
        "augment_to": 300,  # augmented images made from the shots (the paper: 300)
        "finetune_batch": 32,
        "finetune_lr": 2e-4,
        "adapt_steps": 50,  # fine-tuning iterations (the paper: 60-100 epochs, ~600-1000 steps)
        "n_cat": 10,  # InfoGAN categorical code size
        "n_cont": 2,  # InfoGAN continuous codes
        "info_weight": 1.0,
        "info_cont_weight": 0.1,
        "init_seed": 0,
        "task_batch": 1,  # classes fine-tuned as one batched computation in adapt_many (1: one after another)
    }
    harness_defaults = {"tasks_per_worker": 8}  # a pre-training batch of 8 x shots images
    variant_keys = ("arch",)  # DCGAN, cDCGAN, InfoGAN: three baselines

    def __init__(self, config: dict[str, Any], image_shape: tuple[int, int, int], device: torch.device | str = "cpu",
                 num_classes: int = 0):
        super().__init__(config, image_shape, device, num_classes)
        cfg = self.config
        self.arch = str(cfg["arch"])
        if self.arch not in ARCHS:
            raise ValueError(f"transfer: unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        self.image_shape = check_side(self.image_shape)
        self.z_dim, self.width = int(cfg["z_dim"]), int(cfg["width"])
        self.n_cat, self.n_cont = int(cfg["n_cat"]), int(cfg["n_cont"])
        self.adapt_steps, self.batch = int(cfg["adapt_steps"]), int(cfg["finetune_batch"])
        self.augment_to = int(cfg["augment_to"])
        self.info_weight, self.info_cont_weight = float(cfg["info_weight"]), float(cfg["info_cont_weight"])
        if min(self.z_dim, self.width, self.batch, self.augment_to) < 1 or self.adapt_steps < 0:
            raise ValueError("transfer: z_dim, width, finetune_batch, augment_to must be >= 1 and adapt_steps >= 0")
        task_batch = cfg["task_batch"]
        if isinstance(task_batch, bool) or not isinstance(task_batch, int) or task_batch < 1:
            raise ValueError(f"transfer: task_batch must be an integer >= 1 (1: classes fine-tuned one after "
                             f"another), got {task_batch!r}")
        self.task_batch = int(task_batch)
        if self.arch == "cdcgan" and self.num_classes < 1:
            raise ValueError("transfer: arch=cdcgan needs num_classes (the dataset's class count)")
        if self.arch == "infogan" and (self.n_cat < 1 or self.n_cont < 0):
            raise ValueError("transfer: arch=infogan needs n_cat >= 1 and n_cont >= 0")
        self.labels = self.num_classes + 1 if self.arch == "cdcgan" else 0  # + the new-class slot
        self.new_label = self.labels - 1
        cond = {"dcgan": 0, "cdcgan": self.labels, "infogan": self.n_cat + self.n_cont}[self.arch]
        with torch.random.fork_rng(devices=[]):  # built on the CPU from init_seed alone
            torch.manual_seed(int(cfg["init_seed"]))
            self.G = Generator(self.z_dim + cond, self.image_shape, self.width)
            self.D = Discriminator(self.image_shape, self.width, label_dim=self.labels,
                                   q_dim=self.n_cat + self.n_cont if self.arch == "infogan" else 0)
        self.G.to(self.device)
        self.D.to(self.device)
        # 1 for each class seen in pre-training by any worker (through sync): cDCGAN's new-class slot uses them.
        self.class_usage = nn.Parameter(torch.zeros(max(self.labels, 1), device=self.device), requires_grad=False)
        self.lr, self.finetune_lr, self.betas = float(cfg["lr"]), float(cfg["finetune_lr"]), (float(cfg["beta1"]), 0.999)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=self.lr, betas=self.betas)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=self.lr, betas=self.betas)

    # ------------------------------------------------------------------ losses
    def _latent(self, n: int, gen: torch.Generator, y: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """G's input for n samples (z, then the codes, drawn from ``gen`` in that order) and the codes."""
        z = torch.randn(n, self.z_dim, generator=gen, device=self.device)
        if self.arch == "cdcgan":
            return torch.cat([z, F.one_hot(y, self.labels).float()], 1), {}
        if self.arch == "infogan":
            c = torch.randint(self.n_cat, (n,), generator=gen, device=self.device)
            u = torch.rand(n, self.n_cont, generator=gen, device=self.device) * 2 - 1
            return torch.cat([z, F.one_hot(c, self.n_cat).float(), u], 1), {"cat": c, "cont": u}
        return z, {}

    def info_loss(self, q: torch.Tensor, codes: dict[str, torch.Tensor]) -> torch.Tensor:
        """-(MI lower bound) up to constants: weighted CE on the categorical code + MSE on the continuous ones."""
        loss = self.info_weight * F.cross_entropy(q[:, :self.n_cat], codes["cat"])
        if self.n_cont:
            loss = loss + self.info_cont_weight * F.mse_loss(q[:, self.n_cat:], codes["cont"])
        return loss

    def _gan_step(self, G: nn.Module, D: nn.Module, opt_G, opt_D, real: torch.Tensor, y: torch.Tensor | None,
                  draw, sync: GradSync, extra_d: list[nn.Parameter] = ()) -> dict[str, float]:
        """One D step, then one G step. ``draw()`` -> (G input, codes) for len(real) fakes."""
        n = real.shape[0]
        y1h = F.one_hot(y, self.labels).to(real.dtype) if self.arch == "cdcgan" else None
        ones, zeros = torch.ones(n, device=self.device), torch.zeros(n, device=self.device)
        inp, codes = draw()
        with torch.no_grad():
            fake = G(inp)
        lr_, _ = D(real, y1h)
        lf, qf = D(fake, y1h)
        loss_d = F.binary_cross_entropy_with_logits(lr_, ones) + F.binary_cross_entropy_with_logits(lf, zeros)
        info_d = self.info_loss(qf, codes) if self.arch == "infogan" else None
        d_params = list(D.parameters())
        total = loss_d + info_d if info_d is not None else loss_d
        for p, g in zip(d_params, torch.autograd.grad(total, d_params, allow_unused=True)):
            p.grad = g if g is not None else torch.zeros_like(p)
        sync(d_params + list(extra_d))
        opt_D.step()
        opt_D.zero_grad(set_to_none=True)

        inp, codes = draw()
        lf, qf = D(G(inp), y1h)
        loss_g = F.binary_cross_entropy_with_logits(lf, ones)
        info_g = self.info_loss(qf, codes) if self.arch == "infogan" else None
        g_params = list(G.parameters())
        total = loss_g + info_g if info_g is not None else loss_g
        for p, g in zip(g_params, torch.autograd.grad(total, g_params)):
            p.grad = g
        sync(g_params)
        opt_G.step()
        opt_G.zero_grad(set_to_none=True)
        out = {"d_loss": loss_d.item(), "g_loss": loss_g.item(),
               "d_real": torch.sigmoid(lr_).mean().item(), "d_fake": torch.sigmoid(lf).mean().item()}
        if info_d is not None:
            out["info_loss"] = info_g.item()
        return out

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        images = torch.as_tensor(images)
        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape or images.shape[0] < 1:
            raise ValueError(f"transfer: expected images [n>=1, {', '.join(map(str, self.image_shape))}], got {tuple(images.shape)}")
        return images.to(self.device, torch.get_default_dtype())  # float32 unless a test sets float64

    # ------------------------------------------------------------------ Method interface
    def meta_train_step(self, tasks: list[Task], sync: GradSync = no_sync) -> dict[str, float]:
        """Pre-training on the base classes: one GAN step on this worker's task images."""
        if not tasks:
            raise ValueError("transfer: meta_train_step needs at least one task per worker")
        real = torch.cat([self._images(t.images) for t in tasks])
        counts = [len(t.images) for t in tasks]
        y = None
        if self.arch == "cdcgan":
            if any(not 0 <= int(t.label) < self.num_classes for t in tasks):
                raise ValueError(f"transfer: task labels must be class indices below num_classes={self.num_classes}")
            y = torch.tensor([int(t.label) for t, k in zip(tasks, counts) for _ in range(k)], device=self.device)
            self.class_usage.grad = (torch.bincount(y, minlength=self.labels) > 0).float()
        gens = [torch.Generator(device=self.device).manual_seed(int(t.seed)) for t in tasks]

        def draw():  # per task from its own seed, so a batch split over workers draws the same fakes
            parts = [self._latent(k, g, y[sum(counts[:i]):sum(counts[:i + 1])] if y is not None else None)
                     for i, (k, g) in enumerate(zip(counts, gens))]
            codes = {key: torch.cat([p[1][key] for p in parts]) for key in parts[0][1]}
            return torch.cat([p[0] for p in parts]), codes

        extra = [self.class_usage] if self.arch == "cdcgan" else []
        out = self._gan_step(self.G, self.D, self.opt_G, self.opt_D, real, y, draw, sync, extra)
        if self.arch == "cdcgan":
            with torch.no_grad():
                self.class_usage.copy_(torch.maximum(self.class_usage, (self.class_usage.grad > 0).float()))
            self.class_usage.grad = None
        return out

    def _new_class_slot(self, G: nn.Module, D: nn.Module) -> None:
        """cDCGAN: the new-class slot = the mean of the classes seen in pre-training (G's input, D's label map)."""
        seen = self.class_usage[: self.new_label] > 0
        if not bool(seen.any()):
            return
        with torch.no_grad():
            cols = G.fc.weight[:, self.z_dim: self.z_dim + self.new_label]
            G.fc.weight[:, self.z_dim + self.new_label] = cols[:, seen].mean(1)
            D.label.weight[:, self.new_label] = D.label.weight[:, : self.new_label][:, seen].mean(1)

    def adapt(self, shots: torch.Tensor, seed: int, steps: int | None = None) -> TransferSampler:
        """Fine-tune copies of G and D on the shots augmented to ``augment_to`` images, ``steps`` iterations."""
        steps = self.adapt_steps if steps is None else int(steps)
        if steps < 0:
            raise ValueError(f"transfer: adapt steps must be >= 0, got {steps}")
        shots = self._images(shots)
        G, D = copy.deepcopy(self.G), copy.deepcopy(self.D)
        if self.arch == "cdcgan":
            self._new_class_slot(G, D)
        if steps:
            pool = augment(shots, self.augment_to, seed).to(shots.dtype)
            opt_G = torch.optim.Adam(G.parameters(), lr=self.finetune_lr, betas=self.betas)
            opt_D = torch.optim.Adam(D.parameters(), lr=self.finetune_lr, betas=self.betas)
            gen = torch.Generator(device=self.device).manual_seed(int(seed) + 1)
            y = torch.full((self.batch,), self.new_label, dtype=torch.long, device=self.device) if self.arch == "cdcgan" else None
            for _ in range(steps):
                real = pool[torch.randint(len(pool), (self.batch,), generator=gen, device=self.device)]
                self._gan_step(G, D, opt_G, opt_D, real, y, lambda: self._latent(self.batch, gen, y), no_sync)
        for p in G.parameters():
            p.requires_grad_(False)
        return TransferSampler(self, G, self.new_label)

    def adapt_many(self, shots: list[torch.Tensor], seeds: list[int], steps: int | None = None) -> list[TransferSampler]:
        """``adapt`` for several classes; with ``task_batch`` T > 1, T classes are fine-tuned as one computation.

        Batched (ours): T stacked copies of G's and D's parameters ([T, *shape]), one ``torch.func.vmap`` over
        ``grad`` of ``functional_call`` per D and G step (each task's own losses, so its own gradients), and the
        fresh Adams replayed on the stacks (``methods.nets.stacked_update``). Every task keeps ``adapt``'s own
        draws (augmentation seed, then per step: the mini-batch indices, D's latents, G's latents, from its
        generator), so the samplers equal ``adapt``'s within float tolerance (tests/test_task_batch.py).
        vmap rather than hand-written grouped convolutions: this net has transposed convolutions, GroupNorm
        and the cDCGAN/InfoGAN inputs and heads, which vmap's batching rules cover without a twin per layer.
        """
        steps = self.adapt_steps if steps is None else int(steps)
        if steps < 0:
            raise ValueError(f"transfer: adapt steps must be >= 0, got {steps}")
        if len(shots) != len(seeds):
            raise ValueError(f"transfer: adapt_many needs one seed per class, got {len(shots)} shots, {len(seeds)} seeds")
        if self.task_batch == 1 or steps == 0:
            return [self.adapt(s, seed, steps) for s, seed in zip(shots, seeds)]
        out: list[TransferSampler] = []
        for i in range(0, len(shots), self.task_batch):
            out += self._adapt_batched(shots[i:i + self.task_batch], seeds[i:i + self.task_batch], steps)
        return out

    def _adapt_batched(self, shots: list[torch.Tensor], seeds: list[int], steps: int) -> list[TransferSampler]:
        from torch.func import functional_call, grad, vmap

        shots = [self._images(s) for s in shots]
        T, B, dtype = len(shots), self.batch, shots[0].dtype
        G, D = copy.deepcopy(self.G), copy.deepcopy(self.D)
        if self.arch == "cdcgan":
            self._new_class_slot(G, D)
        pools = torch.stack([augment(s, self.augment_to, int(seed)).to(dtype) for s, seed in zip(shots, seeds)])
        gens = [torch.Generator(device=self.device).manual_seed(int(seed) + 1) for seed in seeds]
        names_g, names_d = [k for k, _ in G.named_parameters()], [k for k, _ in D.named_parameters()]
        PG = [p.detach().unsqueeze(0).expand(T, *p.shape).clone() for p in G.parameters()]
        PD = [p.detach().unsqueeze(0).expand(T, *p.shape).clone() for p in D.parameters()]
        st_g = [[torch.zeros_like(p) for p in PG] for _ in range(2)]
        st_d = [[torch.zeros_like(p) for p in PD] for _ in range(2)]
        y = torch.full((B,), self.new_label, dtype=torch.long, device=self.device) if self.arch == "cdcgan" else None
        y1h = F.one_hot(y, self.labels).to(dtype) if y is not None else None
        ones, zeros = torch.ones(B, dtype=dtype, device=self.device), torch.zeros(B, dtype=dtype, device=self.device)
        info = self.arch == "infogan"

        def loss_d(pd, pg, real, inp, codes):  # _gan_step's D loss for one task
            fake = functional_call(G, dict(zip(names_g, pg)), (inp,)).detach()
            lr_, _ = functional_call(D, dict(zip(names_d, pd)), (real, y1h))
            lf, qf = functional_call(D, dict(zip(names_d, pd)), (fake, y1h))
            loss = F.binary_cross_entropy_with_logits(lr_, ones) + F.binary_cross_entropy_with_logits(lf, zeros)
            return loss + self.info_loss(qf, codes) if info else loss

        def loss_g(pg, pd, inp, codes):  # _gan_step's G loss for one task, through the updated D
            lf, qf = functional_call(D, dict(zip(names_d, pd)), (functional_call(G, dict(zip(names_g, pg)), (inp,)), y1h))
            loss = F.binary_cross_entropy_with_logits(lf, ones)
            return loss + self.info_loss(qf, codes) if info else loss

        grad_d, grad_g = vmap(grad(loss_d)), vmap(grad(loss_g))
        for k in range(1, steps + 1):
            real, lat_d, lat_g = [], [], []
            for pool, gen in zip(pools, gens):  # per task, in adapt's order
                real.append(pool[torch.randint(len(pool), (B,), generator=gen, device=self.device)])
                lat_d.append(self._latent(B, gen, y))
                lat_g.append(self._latent(B, gen, y))
            stack = lambda lats: (torch.stack([l[0] for l in lats]),  # noqa: E731, E741
                                  {key: torch.stack([l[1][key] for l in lats]) for key in lats[0][1]})
            (inp_d, codes_d), (inp_g, codes_g) = stack(lat_d), stack(lat_g)
            PD = stacked_update(PD, grad_d(PD, PG, torch.stack(real), inp_d, codes_d), st_d, k, self.finetune_lr, self.betas)
            PG = stacked_update(PG, grad_g(PG, PD, inp_g, codes_g), st_g, k, self.finetune_lr, self.betas)
        out = []
        for t in range(T):
            Gt = copy.deepcopy(G)
            with torch.no_grad():
                for p, stacked in zip(Gt.parameters(), PG):
                    p.copy_(stacked[t])
                    p.requires_grad_(False)
            out.append(TransferSampler(self, Gt, self.new_label))
        return out

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy({"arch": self.arch, "width": self.width, "z_dim": self.z_dim,
                              "image_shape": list(self.image_shape), "labels": self.labels,
                              "G": self.G.state_dict(), "D": self.D.state_dict(), "class_usage": self.class_usage.data,
                              "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict()})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = {"arch": self.arch, "width": self.width, "z_dim": self.z_dim, "image_shape": list(self.image_shape),
                "labels": self.labels}
        theirs = {k: (list(state[k]) if k == "image_shape" else state[k]) for k in mine if k in state}
        if any(theirs[k] != mine[k] for k in theirs):
            raise ValueError(f"transfer: checkpoint was built with {theirs}, this model with {mine}")
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        with torch.no_grad():
            self.class_usage.copy_(state["class_usage"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])

    def parameters(self) -> list[nn.Parameter]:
        return list(self.G.parameters()) + list(self.D.parameters()) + [self.class_usage]
