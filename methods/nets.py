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
