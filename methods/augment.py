"""Seeded image augmentation: k shots -> a few hundred varied images (transfer baselines, ``_augmented`` control).

Batra, Mahajan & Vartak, "Few Shot Learning for Image Generation" (NYU), section 2, augments 4 images
of the new class to 300 "using transformations like RandomCrop, ColorJitter etc.". Each output
image here is one shot (cycled, so every shot is used equally) through:
  1. random resized crop: area 70-100 %, aspect ratio 3/4-4/3, resized back to H x W;
  2. random affine: rotation +-15 deg, translation +-10 %, scale 0.9-1.1, shear +-10 deg; the
     uncovered border takes the image's own background (median of its border pixels), so a
     white Omniglot page does not get black corners;
  3. colour jitter: brightness and contrast factors in [0.6, 1.4] (on RGB also saturation in
     [0.6, 1.4] and hue +-0.05), as torchvision's ColorJitter defines them (brightness scales,
     contrast blends with the grey mean, clamped to [0, 1] after each). On a black-on-white glyph
     a brightness factor below 1 greys the page and contrast moves the strokes.
  4. (``elastic``, off for the transfer baselines) elastic deformation as torchvision's
     ``transforms.v2.ElasticTransform`` defines it (Simard et al. 2003): uniform noise in [-1, 1] per
     pixel and axis, Gaussian-blurred with ``sigma`` pixels, times ``alpha / size``, added to the
     sampling grid, with the RNG a seeded generator instead of the global one;
  5. ``jitter_grey=False`` keeps a one-channel image's grey levels (colour jitter on RGB only), as the
     protocol's ``_augmented`` control does (orchestrator/evaluation/protocol.py).
Crop, affine and elastic displacement are composed into one sampling grid per image and applied to the whole batch by
one ``grid_sample`` (bilinear): torchvision's per-image calls took 5.6 s for 300 images on one
CPU core, which every evaluated class would pay twice (method and scratch control). Parameters
come from a ``torch.Generator``: the same seed gives the same images, the global RNG is untouched.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def elastic_displacement(n: int, height: int, width: int, gen: torch.Generator, alpha: float,
                         sigma: float) -> torch.Tensor:
    """[n, H, W, 2] grid offsets (normalised coordinates) of torchvision's ElasticTransform, seeded by ``gen``.

    Same recipe as ``torchvision.transforms.v2.ElasticTransform.make_params`` (uniform [-1, 1] noise, Gaussian
    blur with kernel ``8 sigma + 1`` made odd, times ``alpha / width`` for x and ``alpha / height`` for y), drawn
    per image from ``gen``; ``alpha`` and ``sigma`` in pixels. ``sigma`` must stay below a quarter of the image
    side (the blur's reflect padding); raises ValueError otherwise."""
    if not 0 < sigma < min(height, width) / 4:
        raise ValueError(f"elastic sigma {sigma} px: must be in (0, {min(height, width) / 4}) for a "
                         f"{height}x{width} image")
    k = int(8 * sigma + 1)
    k += 1 - k % 2
    noise = torch.rand(n, 2, height, width, generator=gen) * 2 - 1
    d = TF.gaussian_blur(noise, [k, k], [float(sigma), float(sigma)])
    d = d * torch.tensor([alpha / width, alpha / height]).view(1, 2, 1, 1)
    return d.permute(0, 2, 3, 1)


def geometric(unit: torch.Tensor, gen: torch.Generator, *, crop_scale=(0.7, 1.0), ratio=(3 / 4, 4 / 3),
              degrees: float = 15.0, translate: float = 0.1, scale=(0.9, 1.1), shear: float = 10.0,
              elastic: tuple[float, float] | None = None) -> torch.Tensor:
    """Random resized crop, random affine and (``elastic=(alpha, sigma)``, pixels) an elastic deformation,
    per image, on [N, C, H, W] in [0, 1]; border = background."""
    n = unit.shape[0]
    # crop: a box of crop_scale of the area, aspect in ratio, anywhere inside the image (normalised coords)
    area = _uniform(gen, n, *crop_scale)
    aspect = torch.exp(_uniform(gen, n, math.log(ratio[0]), math.log(ratio[1])))
    fw, fh = torch.sqrt(area * aspect).clamp(max=1.0), torch.sqrt(area / aspect).clamp(max=1.0)
    cx, cy = (1 - fw) * _uniform(gen, n, -1, 1), (1 - fh) * _uniform(gen, n, -1, 1)
    # affine (forward map p -> M p + t about the centre); sampling needs its inverse
    ang = torch.deg2rad(_uniform(gen, n, -degrees, degrees))
    sh = torch.deg2rad(_uniform(gen, n, -shear, shear))
    sc = _uniform(gen, n, *scale)
    tx, ty = _uniform(gen, n, -2 * translate, 2 * translate), _uniform(gen, n, -2 * translate, 2 * translate)
    m = torch.stack([torch.stack([torch.cos(ang), -torch.sin(ang + sh)], -1),
                     torch.stack([torch.sin(ang), torch.cos(ang + sh)], -1)], -2) * sc.view(-1, 1, 1)
    m_inv = torch.linalg.inv(m)
    crop = torch.diag_embed(torch.stack([fw, fh], -1))  # crop: output u -> input c + diag(f) u
    lin = crop @ m_inv  # output p -> crop(M^-1 (p - t))
    off = torch.stack([cx, cy], -1) - (lin @ torch.stack([tx, ty], -1).unsqueeze(-1)).squeeze(-1)
    theta = torch.cat([lin, off.unsqueeze(-1)], -1).to(unit.dtype)
    grid = F.affine_grid(theta, list(unit.shape), align_corners=False)
    if elastic is not None:
        grid = grid + elastic_displacement(n, unit.shape[2], unit.shape[3], gen, *elastic).to(grid.dtype)
    border = torch.cat([unit[:, :, 0], unit[:, :, -1], unit[:, :, :, 0], unit[:, :, :, -1]], dim=2)
    fill = border.median(dim=2).values[:, :, None, None]  # [N, C, 1, 1]
    out = F.grid_sample(unit - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    return out.clamp(0, 1)


def color_jitter(unit: torch.Tensor, gen: torch.Generator, strength: float = 0.4, hue: float = 0.05,
                 grey: bool = True) -> torch.Tensor:
    """Per-image brightness and contrast (and on RGB saturation, hue) factors in [1 - strength, 1 + strength];
    ``grey=False`` returns one-channel images unchanged (no draw from ``gen``)."""
    n = unit.shape[0]
    if unit.shape[1] == 1 and not grey:
        return unit
    f = lambda: _uniform(gen, n, 1 - strength, 1 + strength).to(unit.dtype).view(-1, 1, 1, 1)  # noqa: E731
    out = (unit * f()).clamp(0, 1)  # brightness
    grey = TF.rgb_to_grayscale(out) if out.shape[1] == 3 else out
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    out = (mean + f() * (out - mean)).clamp(0, 1)  # contrast
    if out.shape[1] == 3:
        grey = TF.rgb_to_grayscale(out)
        out = (grey + f() * (out - grey)).clamp(0, 1)  # saturation
        hues = _uniform(gen, n, -hue, hue)
        out = torch.stack([TF.adjust_hue(img, float(h)) for img, h in zip(out, hues)])
    return out


def augment(shots: torch.Tensor, n: int, seed: int, *, elastic: tuple[float, float] | None = None,
            jitter_grey: bool = True) -> torch.Tensor:
    """``n`` augmented images [n, C, H, W] in [-1, 1] from ``shots`` [k, C, H, W] in [-1, 1] (shot i % k for
    image i), seeded by ``seed`` (same seed, same images; the global RNG untouched). ``elastic``: ``(alpha,
    sigma)`` in pixels for an elastic deformation (None: none); ``jitter_grey``: colour-jitter one-channel
    images too (brightness/contrast). Raises ValueError on a shots tensor that is not [k >= 1, C, H, W]."""
    if shots.dim() != 4 or shots.shape[0] < 1:
        raise ValueError(f"augment: expected shots [k>=1, C, H, W], got {tuple(shots.shape)}")
    if int(n) < 1:
        return torch.empty(0, *shots.shape[1:], device=shots.device)
    gen = torch.Generator().manual_seed(int(seed))
    unit = ((shots.detach().float().cpu() + 1) / 2).clamp(0, 1)
    src = unit[torch.arange(int(n)) % len(unit)]
    out = color_jitter(geometric(src, gen, elastic=elastic), gen, grey=jitter_grey)
    return (out * 2 - 1).to(shots.device)
