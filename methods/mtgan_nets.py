"""MT-GAN's generator body (image constructor, IC) and discriminator body (feature extractor, FE).

The fully connected ends live in ``methods/mtgan.py`` (noise mapping NM = G's first layer on
[z, one-hot], classifier CF = D's last layer); these bodies hold every convolution, each wrapped
in :class:`SSConv2d` so Meta-Transfer Learning's scale-and-shift (SS) can be applied to it while its
own weight and bias stay frozen.

Layout: FIGR's DCGAN-style nets (methods/nets.py, the authors' public code): 5x5 convs, PReLU,
LayerNorm over C x H x W, nearest 2x upsampling in G, 2x2 average pooling in D, 4 stages, so the
image side must be a multiple of 16. LayerNorm rather than batch norm: no running statistics, so
"frozen" really means every tensor is constant, and a sample never depends on its batch (which
keeps N workers equal to one worker with N times the tasks).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods.nets import BLOCKS, check_image_shape

SS_GRANULARITIES = ("channel", "layer")


class SSConv2d(nn.Module):
    """conv(x; W * scale, b + shift): Meta-Transfer Learning's SS on a (frozen) convolution.

    ``granularity="channel"``: one scale and one shift per output channel (MTL's per-filter SS);
    ``"layer"``: one scalar scale and one scalar shift for the whole layer (the MT-GAN paper's
    text, section 4.2). Scale starts at 1 and shift at 0, so the layer computes exactly the
    pre-trained convolution (x * 1.0 and x + 0.0 are exact in floating point).
    """

    def __init__(self, cin: int, cout: int, k: int, granularity: str = "channel"):
        super().__init__()
        if granularity not in SS_GRANULARITIES:
            raise ValueError(f"unknown SS granularity {granularity!r}; choose one of {', '.join(SS_GRANULARITIES)}")
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2)
        n = cout if granularity == "channel" else 1
        self.ss_scale = nn.Parameter(torch.ones(n))
        self.ss_shift = nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight * self.ss_scale.view(-1, 1, 1, 1)
        return F.conv2d(x, w, self.conv.bias + self.ss_shift, padding=self.conv.padding)


class _Block(nn.Module):
    """SSConv -> (PReLU, LayerNorm) in G's order or (LayerNorm, PReLU) in D's, as in FIGR's nets."""

    def __init__(self, cin: int, cout: int, size: int, ss: str, act_first: bool):
        super().__init__()
        self.conv = SSConv2d(cin, cout, 5, ss)
        self.activ = nn.PReLU(cout)
        self.norm = nn.LayerNorm([cout, size, size])
        self.act_first = act_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.norm(self.activ(x)) if self.act_first else self.activ(self.norm(x))


class ImageConstructor(nn.Module):
    """G after NM: [B, nm_dim] -> PReLU -> LayerNorm -> [B, 16w, s, s] -> 4 x (conv, up) -> conv -> tanh."""

    def __init__(self, image_shape: tuple[int, int, int], width: int, ss: str = "channel"):
        super().__init__()
        c, h, _ = check_image_shape(image_shape)
        s = h // 2**BLOCKS
        ch = width * 2**BLOCKS
        self.shape = (ch, s, s)
        self.nm_dim = ch * s * s
        self.activ = nn.PReLU(self.nm_dim)
        self.norm = nn.LayerNorm(self.nm_dim)
        self.blocks = nn.ModuleList(
            _Block(ch // 2**i, ch // 2 ** (i + 1), s * 2**i, ss, act_first=True) for i in range(BLOCKS))
        self.final = SSConv2d(width, c, 5, ss)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.activ(h)).view(h.shape[0], *self.shape)
        for block in self.blocks:
            x = F.interpolate(block(x), scale_factor=2, mode="nearest")
        return torch.tanh(self.final(x))


class FeatureExtractor(nn.Module):
    """D before CF: conv -> 4 x (conv, avg-pool) -> flatten, [B, C, H, W] -> [B, feat_dim]."""

    def __init__(self, image_shape: tuple[int, int, int], width: int, ss: str = "channel"):
        super().__init__()
        c, h, _ = check_image_shape(image_shape)
        self.first = _Block(c, width, h, ss, act_first=False)
        self.blocks = nn.ModuleList(
            _Block(width * 2**i, width * 2 ** (i + 1), h // 2**i, ss, act_first=False) for i in range(BLOCKS))
        s = h // 2**BLOCKS
        self.feat_dim = width * 2**BLOCKS * s * s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        for block in self.blocks:
            x = F.avg_pool2d(block(x), 2)
        return x.flatten(1)


def ss_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The SS parameters of every SSConv2d in ``module`` (scale, shift per layer, in module order)."""
    out: list[nn.Parameter] = []
    for m in module.modules():
        if isinstance(m, SSConv2d):
            out += [m.ss_scale, m.ss_shift]
    return out


def frozen_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Everything in ``module`` but SS: the convolutions, PReLU slopes and LayerNorm affines."""
    ss = {id(p) for p in ss_parameters(module)}
    return [p for p in module.parameters() if id(p) not in ss]
