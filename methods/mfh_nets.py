"""MFH's networks: two encoders, the addresser, the AdaIN generator and the projection discriminator.

Sizes: square images whose side is 4 * 2^k (8, 16, 32, 64, 128): the generator starts at 4x4 and
doubles L = log2(side / 4) + 1 resolutions; the encoders and the discriminator halve down to 4x4.

Generator (eq. 5): ``[f_cr, f_ci]`` concatenated -> Linear -> [ch, 4, 4], then one 3x3 convolution
per resolution (nearest 2x upsampling in between), each followed by AdaIN and a LeakyReLU, and a
last 3x3 convolution + tanh. AdaIN's scale and shift come from f_ci for the first ceil(L/2)
resolutions and from f_cr for the rest: at 128x128 that is 4, 8, 16 (CI) and 32, 64, 128 (CR),
exactly the paper's "CI below 32x32"; at 64 it is also the paper's rule (4, 8, 16 | 32, 64); at 32
it keeps the same half split (4, 8 | 16, 32) instead of leaving CR a single layer.

Discriminator: spectral-normalised convolutions (Miyato et al.) -> summed features phi(x); the
adversarial score is the projection form ``psi(phi) + <embed(y), phi>`` (cGAN with projection, the
paper's refs [19, 20]), and a spectral-normalised linear head classifies phi into the dataset's
classes ("the classifier is included in the discriminator", Alg. 1 line 5). No batch norm anywhere:
every image is processed independently of the rest of its batch, so data-parallel workers that split
a batch compute exactly what one worker computes on all of it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

SLOPE = 0.2  # LeakyReLU slope everywhere


def check_image_shape(image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Return (C, H, W) or raise a ValueError that says which sizes work."""
    if len(image_shape) != 3:
        raise ValueError(f"mfh: image_shape must be (C, H, W), got {tuple(image_shape)}")
    c, h, w = (int(v) for v in image_shape)
    if c < 1 or h != w or h < 8 or h & (h - 1):
        raise ValueError(f"mfh: needs square images whose side is a power of two >= 8 (e.g. 32, 64, 128), "
                         f"got {c}x{h}x{w}; pass --image-size 32 (or 64/128)")
    return c, h, w


def n_resolutions(side: int) -> int:
    """4, 8, ..., side: how many resolutions the generator works at."""
    return int(math.log2(side // 4)) + 1


def ci_layers(side: int) -> int:
    """How many of the generator's first resolutions AdaIN conditions on f_ci (the rest: f_cr)."""
    return math.ceil(n_resolutions(side) / 2)


def _channels(width: int, levels: int) -> list[int]:
    """Channels at 4x4 ... side (widest at 4x4, capped at 8 * width)."""
    return [min(width * 2 ** (levels - 1 - i), 8 * width) for i in range(levels)]


class Encoder(nn.Module):
    """Image -> feature vector (E_cr and E_ci share this shape, not weights): strided convs to 4x4, flatten, Linear.

    Flattening the 4x4 map (rather than pooling it) keeps where the strokes are, which a one-shot
    CR feature has to carry to the generator.
    """

    def __init__(self, image_shape: tuple[int, int, int], width: int, out_dim: int):
        super().__init__()
        c, h, _ = check_image_shape(image_shape)
        chans = list(reversed(_channels(width, n_resolutions(h))))  # side ... 4x4
        layers: list[nn.Module] = [nn.Conv2d(c, chans[0], 3, padding=1), nn.LeakyReLU(SLOPE)]
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(SLOPE)]
        self.convs = nn.Sequential(*layers)
        self.out = nn.Linear(chans[-1] * 16, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.convs(x).flatten(1))


class Addresser(nn.Module):
    """R: an MLP from the CI encoder's feature to one logit per memory slot (eq. 3)."""

    def __init__(self, in_dim: int, hidden: int, slots: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(SLOPE), nn.Linear(hidden, slots))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


class AdaIN(nn.Module):
    """Instance-normalise x, then scale by (1 + gamma(cond)) and shift by beta(cond)."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.affine = nn.Linear(cond_dim, 2 * channels)

    def style(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gamma, beta = self.affine(cond).chunk(2, dim=1)
        return gamma, beta

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.style(cond)
        return F.instance_norm(x) * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


class Generator(nn.Module):
    """G(f_cr, f_ci) -> image in [-1, 1]; see the module docstring for which feature drives which AdaIN."""

    def __init__(self, image_shape: tuple[int, int, int], width: int, cr_dim: int, ci_dim: int):
        super().__init__()
        c, h, _ = check_image_shape(image_shape)
        levels = n_resolutions(h)
        chans = _channels(width, levels)
        self.n_ci = ci_layers(h)
        self.stem = nn.Linear(cr_dim + ci_dim, chans[0] * 16)
        self.chans = chans
        # no bias: instance norm removes it (and its rounding-noise gradient, which Adam would amplify)
        self.convs = nn.ModuleList(nn.Conv2d(chans[max(i - 1, 0)], chans[i], 3, padding=1, bias=False)
                                   for i in range(levels))
        self.norms = nn.ModuleList(
            AdaIN(chans[i], ci_dim if i < self.n_ci else cr_dim) for i in range(levels))
        self.final = nn.Conv2d(chans[-1], c, 3, padding=1)

    def conditions(self, f_cr: torch.Tensor, f_ci: torch.Tensor) -> list[torch.Tensor]:
        return [f_ci if i < self.n_ci else f_cr for i in range(len(self.convs))]

    def styles(self, f_cr: torch.Tensor, f_ci: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each AdaIN layer's (gamma, beta): the statistics it imposes, low resolution first."""
        return [norm.style(cond) for norm, cond in zip(self.norms, self.conditions(f_cr, f_ci))]

    def forward(self, f_cr: torch.Tensor, f_ci: torch.Tensor) -> torch.Tensor:
        x = self.stem(torch.cat([f_cr, f_ci], dim=1)).view(f_cr.shape[0], self.chans[0], 4, 4)
        for i, (conv, norm, cond) in enumerate(zip(self.convs, self.norms, self.conditions(f_cr, f_ci))):
            if i:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = F.leaky_relu(norm(conv(x), cond), SLOPE)
        return torch.tanh(self.final(x))


class ProjectionDiscriminator(nn.Module):
    """Spectral-normalised critic: ``forward(x, y) -> (score [B], class logits [B, num_classes])``."""

    def __init__(self, image_shape: tuple[int, int, int], width: int, num_classes: int):
        super().__init__()
        c, h, _ = check_image_shape(image_shape)
        if num_classes < 1:
            raise ValueError(f"mfh: the discriminator classifies the dataset's classes, got num_classes={num_classes}")
        chans = list(reversed(_channels(width, n_resolutions(h))))
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(c, chans[0], 3, padding=1)), nn.LeakyReLU(SLOPE)]
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [spectral_norm(nn.Conv2d(cin, cout, 4, stride=2, padding=1)), nn.LeakyReLU(SLOPE)]
        self.convs = nn.Sequential(*layers)
        feat = chans[-1]
        self.psi = spectral_norm(nn.Linear(feat, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, feat))
        self.classifier = spectral_norm(nn.Linear(feat, num_classes))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        phi = self.convs(x).sum(dim=(2, 3))
        score = self.psi(phi).squeeze(1) + (self.embed(y) * phi).sum(dim=1)
        return score, self.classifier(phi)
