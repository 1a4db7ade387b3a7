"""MFH: Learning to Memorize Feature Hallucination for one-shot image generation (Xie et al., CVPR 2022).

Model (nets in methods/mfh_nets.py). E_cr encodes each image; a class's category-related (CR)
feature is the mean over its images (eq. 1; one image at test time). E_ci encodes the
category-independent (CI) part, the addresser R (an MLP) turns it into logits over a learned
memory M of ``memory_size`` slots, Gumbel-softmax with a hard one-hot forward and the soft
gradient backward (straight-through) picks a slot pi, and f_ci = pi . M (eq. 3-4). G(f_cr, f_ci)
conditions AdaIN on f_ci in the first half of its resolutions and on f_cr in the second.
D is a spectral-normalised projection discriminator that also classifies the classes.

One meta-step on this worker's tasks (each Task = ``shots`` images of one base class; the
harness's ``tasks_per_worker`` = classes per step), eq. 6-10 and Algorithm 1:
  reconstruction  x_rec = G(f_cr(class), f_ci(x)),  L_R = mean |x - x_rec|
  pair (Alg. 1)   two random memory slots a != b per image, x_a = G(f_cr, M_a), x_b = G(f_cr, M_b);
                  L_ds = mean max(0, alpha - mean|x_a - x_b|)  (per pair, L1 per pixel)
  GAN (eq. 7)     D: softplus(-D(x, y)) + softplus(D(x_a|x_b, y)) + CE(cls(x), y)
                  G: softplus(-D(x_a|x_b, y)) + CE(cls(x_a|x_b), y)   (Alg. 1 line 5)
  balance (10)    L_cb = KL(q || uniform), q = the addresser's mean softmax over the batch
  total           G side: adv + cls_weight*cls + recon_weight*L_R + diversity_weight*L_ds
                  + balance_weight*L_cb (+ the VQ losses with ``addressing=kmeans``)
D steps first (on detached fakes), then the G side through the updated D; each side's gradient
goes through ``sync`` before its Adam step; then the EMA copy of the G side is updated.

Where the paper is ambiguous, what this module does:
- L_ds: eq. 9 is written ``alpha - E||G(a) - G(b)||_1`` without a floor; here it is a per-pair
  hinge (the distance is pushed above the margin alpha, then left alone), L1 as the mean absolute
  pixel difference so alpha is in pixel units of [-1, 1] images (Omniglot 32x32: two images of one
  character differ by ~0.17, hence alpha = 0.15).
- L_cb: eq. 10 writes KL(pi_i || uniform) per image, which pushes every image's address towards
  uniform, i.e. towards random addressing. ``balance_over=batch`` (default) balances slot *usage*:
  the KL of the batch's mean address distribution (noise-free softmax), the mean taken over all
  workers' images (averaged through ``sync``) so N workers still equal one; ``balance_over=sample``
  is eq. 10 literally.
- GAN fakes: the hallucinated pair (random slots, the class's CR), the images generation uses;
  the reconstruction is trained by L1 only. The class-conditional score and the classification
  head are both in D (eq. 7's "includes classification supervision").
- Adam: lr 1e-4 and betas (0.001, 0.999) as printed in the paper (beta1 = 0.001 is effectively 0).
- EMA: "historical average with update weight 0.001" = decay 0.999, over the whole G side
  (encoders, addresser, memory, generator, as FUNIT-style code keeps one averaged generator),
  with the usual warm-up min(decay, (1+t)/(10+t)) so short CPU runs are not stuck at the init.
- ``addressing=kmeans`` (Table 4's ablation): nearest slot by Euclidean distance, straight-through
  to E_ci, memory moved only by VQ-VAE's codebook loss ||sg(f) - M_k||^2, encoder held by the
  commitment loss ``commitment``*||f - sg(M_k)||^2; the pair samples read M through a stop-gradient
  too, and L_cb (defined on R's distribution) does not apply. Nearest-slot addressing collapses to a
  few slots; the others keep their random initial vectors, which Table 4's ablation never reads. So
  the model keeps a usage record ``slot_used`` (slots whose memory row got a gradient, identical on
  every worker after the all-reduce); the pair samples and generation draw only from recorded slots
  (details at ``Hallucinator`` and ``MFH._kmeans_pairs``). Gumbel addressing draws from every slot.
- ``diversity_loss=false`` (Table 4) drops L_ds only; the pair is still generated for the GAN.
- ``shots`` is both the training images per class and the evaluation shots: the default 1 is the
  paper's one-shot setting (its training samples "one image x from one category y").

Inference (no fine-tuning): ``adapt`` encodes the shots' CR feature with the EMA encoder (``steps``
ignored) and the sampler draws usable memory slots in seeded permutations (``MFHSampler``).
``adapt(steps=0)``, the "unadapted" control, uses a zero CR feature: same memory and generator, no
class information. ``interpolate`` walks linearly between two slots (Fig. 10).

Determinism: every draw inside a step (Gumbel noise, pair slots) comes from a ``torch.Generator``
seeded by its task's seed, images are processed independently (no batch norm), losses are means
over equally sized tasks, so one process with tasks [t0..t3] equals two workers with [t0, t1] and
[t2, t3]. Initial weights depend only on ``init_seed`` (global RNG untouched).
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from methods import register
from methods.base import Diagnostics, GradSync, Method, Task, no_sync
from methods.mfh_nets import Addresser, Encoder, Generator, ProjectionDiscriminator, check_image_shape

ADDRESSING = ("gumbel", "kmeans")
BALANCE_OVER = ("batch", "sample")
SAMPLE_CHUNK = 256
DIAG_CLASSES = 8  # columns of the "same CI slot, different classes" grid (Fig. 5)
DIAG_SLOTS = 6  # its rows (after the shots)
DIAG_SAMPLES = 8  # images per class behind mfh_pairwise_l1
INTERP_STEPS = 8


# ----------------------------------------------------------------------------- pieces with a paper formula
def gumbel_noise(shape: tuple[int, ...], gen: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """i.i.d. Gumbel(0, 1) samples from a seeded generator."""
    u = torch.rand(shape, generator=gen, device=device)
    return -torch.log((-torch.log(u.clamp_min(1e-10))).clamp_min(1e-10))


def gumbel_address(logits: torch.Tensor, noise: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3 with a hard forward: (pi one-hot with the soft gradient, soft probabilities)."""
    soft = torch.softmax((logits + noise) / tau, dim=-1)
    hard = F.one_hot(soft.argmax(dim=-1), soft.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft, soft


def read_memory(pi: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Eq. 4: f_ci = pi . M  ([B, n] x [n, w] -> [B, w])."""
    return pi @ memory


def kmeans_address(f: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest slot, VQ-VAE style: (f_ci straight-through to f, slot index, codebook loss, commitment loss).

    The codebook loss moves only the memory (f is detached), the commitment loss only the encoder.
    """
    idx = torch.cdist(f.detach(), memory.detach()).argmin(dim=1)
    q = memory[idx]
    codebook = F.mse_loss(q, f.detach())
    commit = F.mse_loss(f, q.detach())
    return f + (q - f).detach(), idx, codebook, commit


def diversity_loss(xa: torch.Tensor, xb: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 9 as a per-pair hinge: mean_i max(0, alpha - mean|xa_i - xb_i|)."""
    return torch.relu(alpha - (xa - xb).abs().flatten(1).mean(dim=1)).mean()


def balance_kl(probs: torch.Tensor) -> torch.Tensor:
    """Eq. 10: KL(q || uniform) = sum_k q_k log(n q_k) for q = probs [n] (or each row of [B, n], averaged)."""
    q = probs if probs.dim() == 2 else probs[None]
    n = q.shape[-1]
    return (q * torch.log(q.clamp_min(1e-12) * n)).sum(dim=-1).mean()


def pairwise_l1(images: torch.Tensor) -> float:
    """Mean absolute pixel difference over all distinct pairs of ``images`` [k, ...]."""
    k = images.shape[0]
    if k < 2:
        return 0.0
    flat = images.flatten(1)
    return float(torch.cdist(flat, flat, p=1).sum() / (k * (k - 1) * flat.shape[1]))


def slot_permutation(n: int, slots: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` slot indices: fresh random permutations of all slots concatenated (distinct within each block)."""
    blocks = [torch.randperm(slots, generator=gen) for _ in range(math.ceil(max(n, 0) / slots))]
    return torch.cat(blocks)[:n] if blocks else torch.zeros(0, dtype=torch.long)


# ----------------------------------------------------------------------------- the G side
class Hallucinator(nn.Module):
    """E_cr, E_ci, R (gumbel only), memory M and G: everything the EMA copy averages and generation uses.

    With ``addressing=kmeans`` it also holds ``slot_used`` [n] (bool buffer, in the state dict): which
    slots the nearest-slot addresser has selected during meta-training (see ``MFH.meta_train_step``).
    With gumbel addressing ``slot_used`` is None (no buffer, the state dict is unchanged).
    """

    slot_used: torch.Tensor | None

    def __init__(self, image_shape: tuple[int, int, int], cfg: dict[str, Any]):
        super().__init__()
        w, cr, ci, n = int(cfg["width"]), int(cfg["cr_dim"]), int(cfg["ci_dim"]), int(cfg["memory_size"])
        self.addressing = str(cfg["addressing"])
        self.E_cr = Encoder(image_shape, w, cr)
        self.E_ci = Encoder(image_shape, w, ci)
        self.R = Addresser(ci, int(cfg["addresser_hidden"]), n) if self.addressing == "gumbel" else None
        self.memory = nn.Parameter(torch.randn(n, ci))
        self.G = Generator(image_shape, w, cr, ci)
        # a None buffer is left out of the state dict: gumbel checkpoints keep exactly their old keys
        self.register_buffer("slot_used", torch.zeros(n, dtype=torch.bool) if self.addressing == "kmeans" else None)

    def slots(self, x: torch.Tensor) -> torch.Tensor:
        """The slot each image addresses, without noise (argmax of R, or the nearest slot)."""
        f = self.E_ci(x)
        if self.R is not None:
            return self.R(f).argmax(dim=1)
        return torch.cdist(f, self.memory).argmin(dim=1)

    def usable_slots(self) -> torch.Tensor:
        """Slot indices generation may draw from (CPU, ascending): all of them with gumbel addressing;
        with kmeans the slots in ``slot_used``, or all of them while that record is empty (a model
        before its first meta-step has addressed nothing, so no slot is more "used" than another)."""
        n = self.memory.shape[0]
        if self.slot_used is None or not bool(self.slot_used.any()):
            return torch.arange(n)
        return self.slot_used.nonzero().flatten().cpu()

    def sample_slots(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` slot indices for generation (CPU): seeded permutations of ``usable_slots`` concatenated.

        With gumbel addressing this is ``slot_permutation(n, memory_size, gen)``, the draw MFH always made.
        """
        usable = self.usable_slots()
        if len(usable) == self.memory.shape[0]:
            return slot_permutation(n, len(usable), gen)
        return usable[slot_permutation(n, len(usable), gen)]

    def class_feature(self, shots: torch.Tensor) -> torch.Tensor:
        """Eq. 1: mean CR feature of one class's images, [cr_dim]."""
        return self.E_cr(shots).mean(dim=0)

    def generate(self, f_cr: torch.Tensor, f_ci: torch.Tensor) -> torch.Tensor:
        """G on one CR feature [cr] (broadcast) or one per image [B, cr], in chunks."""
        f_cr = f_cr.expand(f_ci.shape[0], -1) if f_cr.dim() == 1 else f_cr
        return torch.cat([self.G(a, b) for a, b in zip(f_cr.split(SAMPLE_CHUNK), f_ci.split(SAMPLE_CHUNK))]) \
            if len(f_ci) else f_ci.new_zeros(0, *self._out_shape())

    def _out_shape(self) -> tuple[int, ...]:
        return (self.G.final.out_channels, 4 * 2 ** (len(self.G.convs) - 1), 4 * 2 ** (len(self.G.convs) - 1))


class MFHSampler:
    """One class's CR feature + the memory: ``sample(n, seed)`` -> [n, C, H, W] in [-1, 1] on the CPU."""

    def __init__(self, net: Hallucinator, f_cr: torch.Tensor):
        self.net = net
        self.f_cr = f_cr

    def slot_indices(self, n: int, seed: int) -> torch.Tensor:
        """The memory slots ``sample(n, seed)`` reads, in order (CPU long tensor)."""
        return self.net.sample_slots(int(n), torch.Generator().manual_seed(int(seed)))

    @torch.no_grad()
    def sample(self, n: int, seed: int) -> torch.Tensor:
        """``n`` images: G(this class's CR feature, memory slot i) for the slots of ``slot_indices(n, seed)``."""
        idx = self.slot_indices(n, seed).to(self.net.memory.device)
        return self.net.generate(self.f_cr, self.net.memory[idx]).float().cpu()


@register
class MFH(Method):
    name = "mfh"
    supports_interpolation = True  # generate --interpolate (Fig. 10)
    default_config = {
        "shots": 1,  # images per training task and shots at evaluation (one-shot, as the paper)
        "memory_size": 50,  # n slots in M (paper: 50)
        "ci_dim": 64,  # w: width of a CI feature / memory slot
        "cr_dim": 64,
        "width": 16,  # base channels of the encoders, G and D (small for CPUs; try 32-64 on GPUs)
        "addresser_hidden": 128,
        "addressing": "gumbel",  # "gumbel" (the paper) or "kmeans" (Table 4 ablation, VQ-VAE rule)
        "gumbel_tau": 1.0,
        "diversity_loss": True,  # False: Table 4's ablation without L_ds
        "margin": 0.15,  # alpha of L_ds, in mean |pixel difference| of [-1, 1] images
        "recon_weight": 10.0,  # lambda_R
        "diversity_weight": 1.0,  # lambda_ds
        "balance_weight": 1.0,  # lambda_cb
        "balance_over": "batch",  # "batch" (slot usage over all workers' images) or "sample" (eq. 10 per image)
        "cls_weight": 1.0,  # D's base-class classification (real for D, hallucinated pair for G)
        "commitment": 0.25,  # VQ-VAE beta, kmeans addressing only
        "lr": 1e-4,
        "beta1": 0.001,  # as printed in the paper
        "beta2": 0.999,
        "ema_decay": 0.999,  # paper: update weight 0.001; 0 = no averaging
        "init_seed": 0,
    }
    harness_defaults = {"tasks_per_worker": 4}  # classes per meta-step on each worker
    variant_keys = ("addressing", "diversity_loss")  # Table 4's ablations

    def __init__(self, config: dict[str, Any], image_shape: tuple[int, int, int], device: torch.device | str = "cpu",
                 num_classes: int = 0):
        super().__init__(config, image_shape, device, num_classes)
        cfg = self.config
        self.image_shape = check_image_shape(self.image_shape)
        self.addressing = str(cfg["addressing"])
        if self.addressing not in ADDRESSING:
            raise ValueError(f"mfh: unknown addressing {self.addressing!r}; --set addressing= one of {', '.join(ADDRESSING)}")
        self.balance_over = str(cfg["balance_over"])
        if self.balance_over not in BALANCE_OVER:
            raise ValueError(f"mfh: unknown balance_over {self.balance_over!r}; choose one of {', '.join(BALANCE_OVER)}")
        if int(cfg["memory_size"]) < 2:
            raise ValueError(f"mfh: memory_size must be >= 2 (the pair needs two slots), got {cfg['memory_size']}")
        if float(cfg["gumbel_tau"]) <= 0 or not 0 <= float(cfg["ema_decay"]) < 1:
            raise ValueError(f"mfh: need gumbel_tau > 0 and 0 <= ema_decay < 1, got {cfg['gumbel_tau']}, {cfg['ema_decay']}")
        if self.num_classes < 1:
            raise ValueError("mfh: num_classes (the dataset's class count) must be >= 1: D classifies the classes")
        self.tau = float(cfg["gumbel_tau"])
        self.slots_n = int(cfg["memory_size"])
        with torch.random.fork_rng(devices=[]):  # built on the CPU from init_seed alone
            torch.manual_seed(int(cfg["init_seed"]))
            net = Hallucinator(self.image_shape, cfg)
            D = ProjectionDiscriminator(self.image_shape, int(cfg["width"]), self.num_classes)
        self.net = net.to(self.device)
        self.D = D.to(self.device)
        self.ema = copy.deepcopy(self.net).requires_grad_(False).eval()
        betas = (float(cfg["beta1"]), float(cfg["beta2"]))
        self.opt_G = torch.optim.Adam(self.net.parameters(), lr=float(cfg["lr"]), betas=betas)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=float(cfg["lr"]), betas=betas)
        self.step = 0

    # ----------------------------------------------------------------- helpers
    def _images(self, images: torch.Tensor, what: str = "images") -> torch.Tensor:
        images = torch.as_tensor(images)
        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape or images.shape[0] < 1:
            raise ValueError(f"mfh: expected {what} [k>=1, {', '.join(map(str, self.image_shape))}], got {tuple(images.shape)}")
        return images.to(self.device, torch.float32)

    @staticmethod
    def _grads(loss: torch.Tensor, params: list[nn.Parameter]) -> None:
        """Set every param's .grad (zeros where unused: all workers must all-reduce the same tensors)."""
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = torch.zeros_like(p) if g is None else g

    def _ema_update(self) -> None:
        decay = min(float(self.config["ema_decay"]), (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.net.parameters()):
                e.lerp_(p, 1 - decay)

    def _kmeans_pairs(self, slots: torch.Tensor, gens: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """The hallucinated pair's slots with kmeans addressing (CPU, [tasks * k] each).

        Task j draws from its allowed set: the usage record ``slot_used`` (slots addressed in earlier
        steps, identical on every worker) plus the slots its own images address now (``slots[j]``), so
        the draw depends only on the task and the shared parameters, whichever worker holds it. a is
        uniform over the set, b uniform over the set without a (b = a when the set has one slot).
        """
        record = self.net.slot_used.detach().cpu()
        pair_a, pair_b = [], []
        for own, gen in zip(slots, gens):
            allowed = record.clone()
            allowed[own] = True
            allowed = allowed.nonzero().flatten()
            m, k = len(allowed), len(own)
            ia = torch.randint(m, (k,), generator=gen)
            ib = (ia + torch.randint(1, m, (k,), generator=gen)) % m if m > 1 else ia
            pair_a.append(allowed[ia])
            pair_b.append(allowed[ib])
        return torch.cat(pair_a), torch.cat(pair_b)

    @torch.no_grad()
    def _record_usage(self) -> None:
        """Kmeans addressing: mark the slots the addresser selected this step, on any worker.

        Read from the memory's gradient after ``sync``: with kmeans addressing only the codebook loss
        reaches M, and only through the selected rows (the reconstruction and the pair read M through
        stop-gradients), so a row's all-reduced gradient is non-zero exactly when some worker's image
        addressed that slot (barring an exact cancellation, of probability zero). The all-reduced
        gradient is the same on every worker, so the record is too, and N workers record what one
        worker with all their tasks records. The EMA copy carries the same record.
        """
        hit = self.net.memory.grad.ne(0).any(dim=1)
        self.net.slot_used |= hit
        self.ema.slot_used.copy_(self.net.slot_used)

    def usable_slots(self) -> torch.Tensor:
        """Slot indices generation draws from (see ``Hallucinator.usable_slots``)."""
        return self.ema.usable_slots()

    # ----------------------------------------------------------------- Method interface
    def meta_train_step(self, tasks: list[Task], sync: GradSync = no_sync) -> dict[str, float]:
        if not tasks:
            raise ValueError("mfh: meta_train_step needs at least one task per worker")
        xs = [self._images(t.images, "task images") for t in tasks]
        if len({x.shape[0] for x in xs}) != 1:
            raise ValueError("mfh: every task of a step must have the same number of images")
        cfg, dev, net, D = self.config, self.device, self.net, self.D
        k = xs[0].shape[0]
        x = torch.cat(xs)
        B = x.shape[0]
        y = torch.tensor([t.label for t in tasks], device=dev).repeat_interleave(k)
        gens = [torch.Generator().manual_seed(int(t.seed)) for t in tasks]  # per-task draws: worker-independent
        noise: list[torch.Tensor] = []
        if self.addressing == "gumbel":  # the pair may use any slot: drawn up front (kmeans: after addressing)
            a_s, b_s = [], []
            for gen in gens:
                noise.append(gumbel_noise((k, self.slots_n), gen))
                a = torch.randint(self.slots_n, (k,), generator=gen)
                b = (a + torch.randint(1, self.slots_n, (k,), generator=gen)) % self.slots_n  # b != a
                a_s.append(a)
                b_s.append(b)
            pair_a, pair_b = torch.cat(a_s).to(dev), torch.cat(b_s).to(dev)

        # L2M: CR class means (eq. 1), CI addressing (eq. 3-4)
        f_cr = net.E_cr(x).view(len(tasks), k, -1).mean(dim=1).repeat_interleave(k, dim=0)
        f_tilde = net.E_ci(x)
        stats: dict[str, torch.Tensor] = {}
        extra = x.new_zeros(())
        if self.addressing == "gumbel":
            logits = net.R(f_tilde)
            pi, _ = gumbel_address(logits, torch.cat(noise).to(dev), self.tau)
            f_ci = read_memory(pi, net.memory)
            slot = pi.detach().argmax(dim=1)
            probs = torch.softmax(logits, dim=1)
            if self.balance_over == "sample":
                cb = balance_kl(probs)
                cb_surrogate = cb
            else:  # usage over every worker's images: average the batch's mean distribution through sync
                holder = nn.Parameter(torch.zeros(self.slots_n, device=dev))
                holder.grad = probs.detach().mean(dim=0)
                sync([holder])
                q = holder.grad
                cb = balance_kl(q)
                # gradient of KL(q || U) w.r.t. each image's probs is (log(n q) + 1) / B_total
                cb_surrogate = (probs * (torch.log(q.clamp_min(1e-12) * self.slots_n) + 1)).sum(dim=1).mean()
            stats["balance_kl"] = cb
            extra = extra + float(cfg["balance_weight"]) * cb_surrogate
            pair_memory = net.memory
        else:
            f_ci, slot, codebook, commit = kmeans_address(f_tilde, net.memory)
            extra = extra + codebook + float(cfg["commitment"]) * commit
            stats["vq_codebook"], stats["vq_commit"] = codebook, commit
            pair_memory = net.memory.detach()  # memory moves by the codebook loss only
            pair_a, pair_b = self._kmeans_pairs(slot.detach().cpu().view(len(tasks), k), gens)
            pair_a, pair_b = pair_a.to(dev), pair_b.to(dev)
        # FeaHa: reconstruction and the hallucinated pair in one generator pass
        out = net.G(torch.cat([f_cr, f_cr, f_cr]), torch.cat([f_ci, pair_memory[pair_a], pair_memory[pair_b]]))
        x_rec, x_a, x_b = out[:B], out[B:2 * B], out[2 * B:]
        fake, y2 = torch.cat([x_a, x_b]), torch.cat([y, y])

        # D step (eq. 7 for D + classification of the reals)
        d_params = list(D.parameters())
        score, cls = D(torch.cat([x, fake.detach()]), torch.cat([y, y2]))
        d_adv = F.softplus(-score[:B]).mean() + F.softplus(score[B:]).mean()
        d_cls = F.cross_entropy(cls[:B], y)
        self._grads(d_adv + float(cfg["cls_weight"]) * d_cls, d_params)
        sync(d_params)
        self.opt_D.step()
        self.opt_D.zero_grad(set_to_none=True)

        # G side through the updated D
        g_params = list(net.parameters())
        score_f, cls_f = D(fake, y2)
        g_adv = F.softplus(-score_f).mean()
        g_cls = F.cross_entropy(cls_f, y2)
        recon = (x_rec - x).abs().mean()
        ds = diversity_loss(x_a, x_b, float(cfg["margin"]))
        total = g_adv + float(cfg["cls_weight"]) * g_cls + float(cfg["recon_weight"]) * recon + extra
        if bool(cfg["diversity_loss"]):
            total = total + float(cfg["diversity_weight"]) * ds
        self._grads(total, g_params)
        sync(g_params)
        if self.addressing == "kmeans":
            self._record_usage()
        self.opt_G.step()
        self.opt_G.zero_grad(set_to_none=True)
        self.step += 1
        self._ema_update()

        with torch.no_grad():
            stats.update({
                "d_loss": d_adv, "d_cls": d_cls, "g_adv": g_adv, "g_cls": g_cls, "recon_l1": recon,
                "diversity_hinge": ds, "pair_l1": (x_a - x_b).abs().mean(),
                "d_real": score[:B].mean(), "d_fake": score[B:].mean(),
            })
            out_stats = {k_: float(v) for k_, v in stats.items()}
            out_stats["slots_in_batch"] = float(slot.unique().numel())
            if net.slot_used is not None:
                out_stats["slots_recorded"] = float(net.slot_used.sum())
        return out_stats

    def _class_feature(self, shots: torch.Tensor, steps: int | None) -> torch.Tensor:
        if steps is not None and int(steps) < 0:
            raise ValueError(f"mfh: adapt steps must be >= 0, got {steps}")
        shots = self._images(shots, "shots")
        with torch.no_grad():
            if steps is not None and int(steps) == 0:  # the "unadapted" control: no class information
                return torch.zeros(self.ema.E_cr.out.out_features, device=self.device)
            return self.ema.class_feature(shots)

    def adapt(self, shots: torch.Tensor, seed: int, steps: int | None = None) -> MFHSampler:
        """Encode the shots' CR feature (no fine-tuning: ``steps`` > 0 changes nothing); ``steps=0``: zero CR."""
        f_cr = self._class_feature(shots, steps)
        return MFHSampler(copy.deepcopy(self.ema), f_cr)

    def adapt_many(self, shots: list[torch.Tensor], seeds: list[int], steps: int | None = None) -> list[MFHSampler]:
        """``adapt`` for several shot sets: each CR feature computed exactly as ``adapt`` computes it, and one
        frozen copy of the EMA side shared by all the samplers (a sampler only reads it), instead of one copy per
        set: the copy is most of ``adapt``'s cost when a protocol adapts once per generated image (LoFGAN's)."""
        net = copy.deepcopy(self.ema)
        return [MFHSampler(net, self._class_feature(s, steps)) for s in shots]

    @torch.no_grad()
    def interpolate(self, shots: torch.Tensor, n: int, seed: int, slots: tuple[int, int] | None = None) -> torch.Tensor:
        """Fig. 10: ``n`` images with the shots' CR feature and f_ci walking linearly from slot a to slot b.

        ``slots`` (a, b) default to two distinct slots drawn by ``seed``.
        """
        if n < 2:
            raise ValueError(f"mfh: an interpolation needs at least 2 images, got {n}")
        f_cr = self._class_feature(shots, None)
        if slots is None:  # two distinct usable slots (the same one twice if only one is usable)
            a, b = self.ema.sample_slots(2, torch.Generator().manual_seed(int(seed))).tolist()
        else:
            a, b = (int(s) for s in slots)
        t = torch.linspace(0, 1, n, device=self.device)[:, None]
        mem = self.ema.memory
        return self.ema.generate(f_cr, (1 - t) * mem[a] + t * mem[b]).float().cpu()

    @torch.no_grad()
    def diagnostics(self, shots: dict[int, torch.Tensor], seed: int) -> Diagnostics:
        """Memory usage of the addresser on the given classes' shots, generated diversity, Fig. 5 and Fig. 10.

        ``mfh_slots_used``: distinct slots the addresser picks for these shots; ``mfh_slots_sampled``:
        how many slots generation draws from (``memory_size`` with gumbel addressing); with kmeans also
        ``mfh_slots_trained``: slots in the meta-training usage record. Fig. 5's rows are usable slots.
        """
        if not shots:
            return Diagnostics()
        classes = list(shots)
        all_shots = torch.cat([self._images(shots[c], "shots") for c in classes])
        counts = torch.bincount(self.ema.slots(all_shots).cpu(), minlength=self.slots_n).double()
        p = counts[counts > 0] / counts.sum()
        n_usable = len(self.ema.usable_slots())
        metrics = {"mfh_slots_used": float((counts > 0).sum()), "mfh_slot_entropy": float(-(p * p.log()).sum()) + 0.0,
                   "mfh_memory_size": float(self.slots_n), "mfh_slots_sampled": float(n_usable)}
        if self.ema.slot_used is not None:  # kmeans: slots addressed during meta-training
            metrics["mfh_slots_trained"] = float(self.ema.slot_used.sum())
        feats = {c: self._class_feature(shots[c], None) for c in classes}
        l1 = [pairwise_l1(MFHSampler(self.ema, feats[c]).sample(DIAG_SAMPLES, seed)) for c in classes]
        metrics["mfh_pairwise_l1"] = float(sum(l1) / len(l1))
        # Fig. 5: row 0 the shots, then one row per slot: the same CI slot across classes
        cols = classes[:DIAG_CLASSES]
        chosen = self.ema.sample_slots(min(DIAG_SLOTS, n_usable), torch.Generator().manual_seed(int(seed)))
        rows = [torch.stack([shots[c][0].float().cpu() for c in cols])]
        for s in chosen.tolist():
            f_ci = self.ema.memory[s].expand(len(cols), -1)
            rows.append(self.ema.generate(torch.stack([feats[c] for c in cols]), f_ci).float().cpu())
        interp = self.interpolate(shots[classes[0]], INTERP_STEPS, seed)
        figures = {"mfh_same_slot": (torch.cat(rows), len(cols)),
                   "mfh_interpolation": (torch.cat([shots[classes[0]][:1].float().cpu(), interp]), INTERP_STEPS + 1)}
        return Diagnostics(metrics=metrics, figures=figures)

    def _identity(self) -> dict[str, Any]:
        keys = ("memory_size", "ci_dim", "cr_dim", "width", "addresser_hidden", "addressing")
        return {"image_shape": list(self.image_shape), "num_classes": self.num_classes,
                **{k: self.config[k] for k in keys}}

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy({
            "identity": self._identity(), "step": self.step, "net": self.net.state_dict(), "ema": self.ema.state_dict(),
            "D": self.D.state_dict(), "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict()})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine, theirs = self._identity(), state.get("identity", {})
        if theirs != mine:
            diff = {k: (theirs.get(k), mine[k]) for k in mine if theirs.get(k) != mine[k]}
            raise ValueError(f"mfh: checkpoint does not fit this model (checkpoint, model): {diff}")
        net_state, ema_state = dict(state["net"]), dict(state["ema"])
        if self.addressing == "kmeans" and "slot_used" not in net_state:
            # a kmeans checkpoint from before the usage record: its generator was trained and sampled
            # on every slot, so that is what it keeps (retrain for the slot-restricted ablation)
            net_state["slot_used"] = ema_state["slot_used"] = torch.ones(self.slots_n, dtype=torch.bool)
        self.net.load_state_dict(net_state)
        self.ema.load_state_dict(ema_state)
        self.D.load_state_dict(state["D"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.step = int(state["step"])

    def parameters(self) -> list[nn.Parameter]:
        """Trained parameters (G side, D) then the EMA copy (kept equal on every worker by construction)."""
        return list(self.net.parameters()) + list(self.D.parameters()) + list(self.ema.parameters())
