"""FIGR's generator and critic, in the two flavours of the authors' code.

``dcgan`` (the public code's default, ``model.py: DCGANGenerator/DCGANDiscriminator``):
  G: z -> Linear -> PReLU -> LayerNorm -> [B, 16w, H/16, W/16], then 4 x (5x5 conv halving the
  channels -> PReLU -> LayerNorm -> nearest-neighbour 2x upsampling), 5x5 conv to C, tanh.
  D: 5x5 conv to w -> LayerNorm -> PReLU, then 4 x (5x5 conv doubling the channels -> LayerNorm
  -> PReLU -> 2x2 average pooling), flatten, Linear to one scalar (no sigmoid: a WGAN critic).

``resnet`` (the paper's "residual networks with 18 layers", as the same code builds them):
  each of the 4 stages holds two residual units of two 3x3 convs (16 convs) between a first and
  a last layer (18 weight layers), plus one 3x3 transition conv per stage that changes the width;
  G upsamples (nearest) after each stage, D average-pools after each stage and ends with global
  average pooling and a Linear to one scalar.

Normalisation is ``nn.LayerNorm`` over each sample's whole C x H x W (with an elementwise affine,
as in the authors' code), never batch norm: batch norm's running statistics are buffers that
Reptile's meta-update (Phi - W on parameters) cannot average, and its batch coupling would make a
sample's output depend on the other samples in the batch. Every rectifier is a PReLU with one
slope per channel (per feature after the first Linear). All of these are meta-parameters.

Image sizes: H == W, a multiple of 16 (4 halvings/doublings), at least 16 -- so 32 and 64 work,
28 is refused with a ValueError (resize the data to 32).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS = 4  # the authors' code uses 4 up/down-sampling stages for every image size
ARCHS = ("dcgan", "resnet")


def check_image_shape(image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Return (C, H, W) or raise a ValueError that says what sizes work."""
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    c, h, w = (int(v) for v in image_shape)
    m = 2**BLOCKS
    if c < 1:
        raise ValueError(f"image channels must be >= 1, got {c}")
    if h != w or h % m or h < m:
        raise ValueError(
            f"FIGR nets need square images whose side is a multiple of {m} (e.g. 32 or 64), "
            f"got {h}x{w}; resize the dataset (the paper resizes to 32x32 or 64x64)"
        )
    return c, h, w


def _ln(c: int, h: int, w: int) -> nn.LayerNorm:
    return nn.LayerNorm([c, h, w])


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class _Stem(nn.Module):
    """z -> Linear -> PReLU -> LayerNorm -> [B, ch, s, s] (the generator's first layer)."""

    def __init__(self, z_dim: int, ch: int, s: int):
        super().__init__()
        n = ch * s * s
        self.shape = (ch, s, s)
        self.linear = nn.Linear(z_dim, n)
        self.activ = nn.PReLU(n)
        self.norm = nn.LayerNorm(n)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.norm(self.activ(self.linear(z))).view(z.shape[0], *self.shape)


class _ConvActNorm(nn.Module):
    """conv -> PReLU -> LayerNorm (the order of the authors' generator and ResNet blocks)."""

    def __init__(self, cin: int, cout: int, k: int, size: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2)
        self.activ = nn.PReLU(cout)
        self.norm = _ln(cout, size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.activ(self.conv(x)))


class _ConvNormAct(nn.Module):
    """conv -> LayerNorm -> PReLU (the order of the authors' DCGAN critic)."""

    def __init__(self, cin: int, cout: int, k: int, size: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2)
        self.norm = _ln(cout, size, size)
        self.activ = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activ(self.norm(self.conv(x)))


class _ResUnit(nn.Module):
    """x + (conv3x3 -> PReLU -> LN -> conv3x3 -> PReLU -> LN)(x)."""

    def __init__(self, ch: int, size: int):
        super().__init__()
        self.a = _ConvActNorm(ch, ch, 3, size)
        self.b = _ConvActNorm(ch, ch, 3, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.a(x))


class DCGANGenerator(nn.Module):
    def __init__(self, z_dim: int, image_shape: tuple[int, int, int], width: int = 64):
        super().__init__()
        c, h, _ = check_image_shape(image_shape)
        s = h // 2**BLOCKS
        self.stem = _Stem(z_dim, width * 2**BLOCKS, s)
        self.blocks = nn.ModuleList(
            _ConvActNorm(width * 2 ** (BLOCKS - i), width * 2 ** (BLOCKS - i - 1), 5, s * 2**i) for i in range(BLOCKS)
        )
        self.final = nn.Conv2d(width, c, 5, padding=2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.stem(z)
        for block in self.blocks:
            x = _up(block(x))
        return torch.tanh(self.final(x))


class DCGANCritic(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], width: int = 64):
        super().__init__()
        c, h, _ = check_image_shape(image_shape)
        self.first = _ConvNormAct(c, width, 5, h)
        self.blocks = nn.ModuleList(
            _ConvNormAct(width * 2**i, width * 2 ** (i + 1), 5, h // 2**i) for i in range(BLOCKS)
        )
        s = h // 2**BLOCKS
        self.final = nn.Linear(width * 2**BLOCKS * s * s, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        for block in self.blocks:
            x = F.avg_pool2d(block(x), 2)
        return self.final(x.flatten(1)).squeeze(1)


class ResNetGenerator(nn.Module):
    def __init__(self, z_dim: int, image_shape: tuple[int, int, int], width: int = 64):
        super().__init__()
        c, h, _ = check_image_shape(image_shape)
        s = h // 2**BLOCKS
        self.stem = _Stem(z_dim, width * 2**BLOCKS, s)
        stages = []
        for i in range(BLOCKS):
            ch, size = width * 2 ** (BLOCKS - i), s * 2**i
            stages.append(nn.Sequential(_ResUnit(ch, size), _ResUnit(ch, size), _ConvActNorm(ch, ch // 2, 3, size)))
        self.stages = nn.ModuleList(stages)
        self.final = nn.Conv2d(width, c, 5, padding=2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.stem(z)
        for stage in self.stages:
            x = _up(stage(x))
        return torch.tanh(self.final(x))


class ResNetCritic(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], width: int = 64):
        super().__init__()
        c, h, _ = check_image_shape(image_shape)
        self.first = _ConvActNorm(c, width, 7, h)
        stages = []
        for i in range(BLOCKS):
            ch, size = width * 2**i, h // 2**i
            stages.append(nn.Sequential(_ResUnit(ch, size), _ResUnit(ch, size), _ConvActNorm(ch, ch * 2, 3, size)))
        self.stages = nn.ModuleList(stages)
        self.final = nn.Linear(width * 2**BLOCKS, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        for stage in self.stages:
            x = F.avg_pool2d(stage(x), 2)
        return self.final(x.mean(dim=(2, 3))).squeeze(1)


def build_nets(arch: str, z_dim: int, image_shape: tuple[int, int, int], width: int) -> tuple[nn.Module, nn.Module]:
    """(generator, critic) for ``arch`` in ARCHS; the critic returns one scalar per image, shape [B]."""
    check_image_shape(image_shape)
    if width < 1 or z_dim < 1:
        raise ValueError(f"width and z_dim must be >= 1, got width={width}, z_dim={z_dim}")
    if arch == "dcgan":
        return DCGANGenerator(z_dim, image_shape, width), DCGANCritic(image_shape, width)
    if arch == "resnet":
        return ResNetGenerator(z_dim, image_shape, width), ResNetCritic(image_shape, width)
    raise ValueError(f"unknown FIGR arch {arch!r}; choose one of {', '.join(ARCHS)}")


# ----------------------------------------------------------------------------------------------
# Batched twins (ours): T copies of a net, one per task, run as one computation.
#
# Parameters: ``P[name]`` is the stack of the T copies of the parameter ``name`` of the module (the
# names of ``module.named_parameters()``), shape [T, *param.shape], the module's dtype. Activations keep the
# tasks in the channel dimension: [n, T*C, H, W] with channel index t*C + c, so every 2-D conv is one
# grouped convolution (groups=T) and pooling / upsampling / PReLU act on the tensor unchanged;
# LayerNorm views it as [n, T, C, H, W]; Linear layers take [n, T, F]. Because no op mixes tasks,
# the gradient of a sum of per-task losses w.r.t. P[name][t] is that task's own gradient, and a
# sample's output never depends on the other tasks or samples (LayerNorm is per sample).
#
# Why grouped convolutions and not torch.func.vmap over functional_call (measured on the 2-core CPU,
# FIGR dcgan width 16, n=4, K=10, T=8, one thread): vmap's batching rule for conv2d also ends in a
# grouped convolution, but adds per-op wrapping (and a second level for the penalty's nested grad):
# 0.64 tasks/s against 0.76 for the hand-written grouped forward below. See methods/figr.py.
# ----------------------------------------------------------------------------------------------
def stack_params(module: nn.Module, copies: int) -> dict[str, torch.Tensor]:
    """{name: [copies, *p.shape]} -- ``copies`` detached copies of every parameter of ``module`` (ours)."""
    return {k: v.detach().unsqueeze(0).expand(copies, *v.shape).clone() for k, v in module.named_parameters()}


def _tasks(P: dict[str, torch.Tensor]) -> int:
    return next(iter(P.values())).shape[0]


def _conv_unfold(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, pad: int, T: int) -> torch.Tensor:
    """Grouped conv as unfold + one batched matmul per task (ours): x [n, T*C, H, W], w [T, O, C, k, k], b [T, O].

    Stride 1, 'same' padding. Used on the CPU for tiny maps (H <= 2), where MKLDNN's grouped kernel is slow.
    """
    n, _, H, W = x.shape
    O, C, k = w.shape[1], w.shape[2], w.shape[-1]
    cols = F.unfold(x, k, padding=pad).view(n, T, C * k * k, H * W).permute(1, 0, 3, 2).reshape(T, n * H * W, C * k * k)
    y = torch.baddbmm(b.unsqueeze(1), cols, w.reshape(T, O, C * k * k).transpose(1, 2))  # [T, n*H*W, O]
    return y.view(T, n, H * W, O).permute(1, 0, 3, 2).reshape(n, T * O, H, W)


def _b_conv(P: dict[str, torch.Tensor], pre: str, conv: nn.Conv2d, x: torch.Tensor, T: int) -> torch.Tensor:
    """[n, T*Cin, H, W] -> [n, T*Cout, H, W]: task t's conv on its channel group (``conv`` gives the geometry).

    One grouped convolution (groups=T), except on the CPU where two layer shapes have a faster form
    (measured, forward + backward, T=8, width 16, one thread; ms per call, sequential / grouped / chosen):
    2x2 maps (the generator's first block, 256->128) as unfold + bmm: 34 / 41 / 28; at most 4 output
    channels per task (the generator's last conv, 16->1 at 32x32) grouped in channels_last: 12 / 40 / 9.
    Every form computes the same sums (only the order of float additions differs).
    """
    w, b = P[pre + "weight"], P[pre + "bias"]  # [T, Cout, Cin, k, k], [T, Cout]
    same = tuple(conv.stride) == (1, 1) and tuple(conv.padding) == (w.shape[-2] // 2, w.shape[-1] // 2)
    if x.device.type == "cpu" and T > 1 and same:
        if x.shape[-1] <= 2 and x.shape[-2] <= 2:
            return _conv_unfold(x, w, b, conv.padding[0], T)
        if w.shape[1] <= 4:
            x = x.contiguous(memory_format=torch.channels_last)
            return F.conv2d(x, w.flatten(0, 1), b.flatten(), padding=conv.padding, groups=T).contiguous()
    return F.conv2d(x, w.flatten(0, 1), b.flatten(), stride=conv.stride, padding=conv.padding, groups=T)


def _b_layernorm(P: dict[str, torch.Tensor], pre: str, x: torch.Tensor, T: int) -> torch.Tensor:
    """LayerNorm over each (sample, task)'s trailing dims, with task t's affine; x [n, T*C, ...] or [n, T, F]."""
    w, b = P[pre + "weight"], P[pre + "bias"]  # [T, *normalized_shape]
    y = F.layer_norm(x.reshape(x.shape[0], T, *w.shape[1:]), tuple(w.shape[1:]))
    return torch.addcmul(b, y, w).view(x.shape)


def _b_prelu(P: dict[str, torch.Tensor], pre: str, x: torch.Tensor) -> torch.Tensor:
    """PReLU with one slope per (task, channel): x [n, T*C, ...], weight [T, C]."""
    return F.prelu(x, P[pre + "weight"].flatten())


def _b_linear(P: dict[str, torch.Tensor], pre: str, x: torch.Tensor) -> torch.Tensor:
    """[n, T, I] -> [n, T, O] with task t's Linear (weight [T, O, I], bias [T, O])."""
    return torch.baddbmm(P[pre + "bias"].unsqueeze(1), x.transpose(0, 1), P[pre + "weight"].transpose(1, 2)).transpose(0, 1)


def _b_block(m: nn.Module, P: dict[str, torch.Tensor], pre: str, x: torch.Tensor, T: int) -> torch.Tensor:
    """The batched forward of one of this module's blocks (``pre``: its name prefix in ``P``)."""
    if isinstance(m, _ConvActNorm):
        x = _b_prelu(P, pre + "activ.", _b_conv(P, pre + "conv.", m.conv, x, T))
        return _b_layernorm(P, pre + "norm.", x, T)
    if isinstance(m, _ConvNormAct):
        x = _b_layernorm(P, pre + "norm.", _b_conv(P, pre + "conv.", m.conv, x, T), T)
        return _b_prelu(P, pre + "activ.", x)
    if isinstance(m, _ResUnit):
        return x + _b_block(m.b, P, pre + "b.", _b_block(m.a, P, pre + "a.", x, T), T)
    if isinstance(m, nn.Sequential):
        for i, sub in enumerate(m):
            x = _b_block(sub, P, f"{pre}{i}.", x, T)
        return x
    raise TypeError(f"no batched twin for {type(m).__name__}")


def batched_generator(G: nn.Module, P: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """T generators at once (ours). z [n, T, z_dim] float32 -> images [n, T*C, H, W] in [-1, 1].

    ``G`` (a DCGANGenerator or ResNetGenerator) supplies only the structure; the weights are ``P``.
    Equals ``G_t(z[:, t])`` in channels t*C:(t+1)*C with G_t's parameters ``P[...][t]``.
    """
    T, n = _tasks(P), z.shape[0]
    stem = G.stem
    x = _b_linear(P, "stem.linear.", z)  # [n, T, F]
    x = _b_prelu(P, "stem.activ.", x.reshape(n, -1)).view(n, T, -1)
    x = _b_layernorm(P, "stem.norm.", x, T).reshape(n, T * stem.shape[0], *stem.shape[1:])
    if isinstance(G, DCGANGenerator):
        for i, block in enumerate(G.blocks):
            x = _up(_b_block(block, P, f"blocks.{i}.", x, T))
    elif isinstance(G, ResNetGenerator):
        for i, stage in enumerate(G.stages):
            x = _up(_b_block(stage, P, f"stages.{i}.", x, T))
    else:
        raise TypeError(f"no batched twin for {type(G).__name__}")
    return torch.tanh(_b_conv(P, "final.", G.final, x, T))


def batched_critic(D: nn.Module, P: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """T critics at once (ours). x [m, T*C, H, W] float32 -> scores [m, T] (column t: critic t on its images)."""
    T, m = _tasks(P), x.shape[0]
    if isinstance(D, DCGANCritic):
        x = _b_block(D.first, P, "first.", x, T)
        for i, block in enumerate(D.blocks):
            x = F.avg_pool2d(_b_block(block, P, f"blocks.{i}.", x, T), 2)
        feats = x.reshape(m, T, -1)
    elif isinstance(D, ResNetCritic):
        x = _b_block(D.first, P, "first.", x, T)
        for i, stage in enumerate(D.stages):
            x = F.avg_pool2d(_b_block(stage, P, f"stages.{i}.", x, T), 2)
        feats = x.mean(dim=(2, 3)).view(m, T, -1)
    else:
        raise TypeError(f"no batched twin for {type(D).__name__}")
    return _b_linear(P, "final.", feats).squeeze(-1)


def stacked_update(P: list[torch.Tensor], grads: list[torch.Tensor] | tuple[torch.Tensor, ...],
                   state: list[list[torch.Tensor]] | None, k: int, lr: float, betas: tuple[float, float],
                   eps: float = 1e-8) -> list[torch.Tensor]:
    """SGD (``state`` None) or the k-th step (k >= 1) of a fresh ``torch.optim.Adam`` on stacked per-task tensors (ours).

    ``P``, ``grads``: tensors [T, *shape]; ``state`` = [m, v] (lists like ``P``, zeros at k = 1, updated in place).
    Adam replays torch.optim.Adam's single-tensor update op for op (lerp of m, v * beta2 + (1 - beta2) g^2,
    step size lr / (1 - beta1^k), denominator sqrt(v) / sqrt(1 - beta2^k) + eps), so one call equals one
    ``optimizer.step()`` of a fresh Adam per task. Returns new detached tensors.
    """
    with torch.no_grad():
        if state is None:
            return [torch.add(p, g, alpha=-lr) for p, g in zip(P, grads)]
        out = []
        for i, (p, g) in enumerate(zip(P, grads)):
            m, v = state[0][i], state[1][i]
            m.lerp_(g, 1 - betas[0])
            v.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
            denom = (v.sqrt() / ((1 - betas[1] ** k) ** 0.5)).add_(eps)
            out.append(torch.addcdiv(p, m, denom, value=-lr / (1 - betas[0] ** k)))
        return out
