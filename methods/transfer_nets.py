"""DCGAN-style generator and discriminator for the transfer baselines (DCGAN, cDCGAN, InfoGAN).

Radford et al.'s layout for small images: G = Linear to [4w, H/8, W/8], then three 4x4 stride-2
transposed convolutions (4w -> 2w -> w -> C), ReLU, tanh out; D = three 4x4 stride-2 convolutions
(C -> w -> 2w -> 4w), LeakyReLU(0.2), then a Linear to one logit. Normalisation is GroupNorm with
one group (a per-sample layer norm over C x H x W with a per-channel affine) instead of DCGAN's
batch norm: batch statistics would couple the samples of a batch, so two workers with half the
batch each would not equal one worker with all of it, and a generated image would depend on the
others generated with it.

Conditioning: ``cond_dim`` extra inputs are concatenated to z (cDCGAN's one-hot class, InfoGAN's
codes); ``label_dim`` > 0 gives D a label input, a bias-free Linear from the one-hot label to one
extra H x W input channel (the NYU paper "added the labels to the discriminator input");
``q_dim`` > 0 gives D InfoGAN's Q head (a hidden layer on D's features, then ``q_dim`` outputs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def check_side(image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(C, H, W) with H == W a multiple of 8 (three stride-2 stages), else a ValueError naming the fix."""
    c, h, w = (int(v) for v in image_shape)
    if c < 1 or h != w or h % 8 or h < 8:
        raise ValueError(f"transfer nets need square images whose side is a multiple of 8 (e.g. 32), got "
                         f"{c}x{h}x{w}; resize the dataset (--image-size 32)")
    return c, h, w


class Generator(nn.Module):
    def __init__(self, in_dim: int, image_shape: tuple[int, int, int], width: int):
        super().__init__()
        c, h, _ = check_side(image_shape)
        self.shape = (4 * width, h // 8, h // 8)
        self.fc = nn.Linear(in_dim, 4 * width * (h // 8) ** 2)
        self.norm0 = nn.GroupNorm(1, 4 * width)
        self.up = nn.ModuleList([nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1),
                                 nn.ConvTranspose2d(2 * width, width, 4, 2, 1)])
        self.norms = nn.ModuleList([nn.GroupNorm(1, 2 * width), nn.GroupNorm(1, width)])
        self.out = nn.ConvTranspose2d(width, c, 4, 2, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm0(self.fc(z).view(z.shape[0], *self.shape)))
        for up, norm in zip(self.up, self.norms):
            x = F.relu(norm(up(x)))
        return torch.tanh(self.out(x))


class Discriminator(nn.Module):
    """``forward(x, label_onehot=None) -> (logit [B], q [B, q_dim] or None)``."""

    def __init__(self, image_shape: tuple[int, int, int], width: int, label_dim: int = 0, q_dim: int = 0):
        super().__init__()
        c, h, _ = check_side(image_shape)
        self.side = h
        self.label = nn.Linear(label_dim, h * h, bias=False) if label_dim else None
        self.conv1 = nn.Conv2d(c + (1 if label_dim else 0), width, 4, 2, 1)
        self.conv2 = nn.Conv2d(width, 2 * width, 4, 2, 1)
        self.norm2 = nn.GroupNorm(1, 2 * width)
        self.conv3 = nn.Conv2d(2 * width, 4 * width, 4, 2, 1)
        self.norm3 = nn.GroupNorm(1, 4 * width)
        feat = 4 * width * (h // 8) ** 2
        self.head = nn.Linear(feat, 1)
        self.q = nn.Sequential(nn.Linear(feat, 128), nn.LeakyReLU(0.2), nn.Linear(128, q_dim)) if q_dim else None

    def forward(self, x: torch.Tensor, label_onehot: torch.Tensor | None = None):
        if self.label is not None:
            if label_onehot is None:
                raise ValueError("this discriminator is conditional: pass the one-hot labels")
            x = torch.cat([x, self.label(label_onehot).view(-1, 1, self.side, self.side)], 1)
        x = F.leaky_relu(self.conv1(x), 0.2)
        x = F.leaky_relu(self.norm2(self.conv2(x)), 0.2)
        x = F.leaky_relu(self.norm3(self.conv3(x)), 0.2).flatten(1)
        return self.head(x).squeeze(1), (self.q(x) if self.q is not None else None)
