"""FinetuneGAN (MetaIRNet §4.1): a pre-trained BigGAN bent towards one target image, then perturbed.

For each target image only z and the batch-norm scale/shift producers are optimised (eq. 1):
L1(G(z), I) + λp·perceptual(G(z), I) + λz·EMD(z, r ~ N(0,1)), 500 Adam steps, lr 0.01 for z and
0.0005 for the scale/shift layers, λp = λz = 0.1. Everything else of the generator stays frozen and
in eval mode (batch-norm statistics fixed), as the authors' code does. Variants are G(clamp(z + σε)).

Why only scale/shift: the paper's pilot study (Fig. 1) found z alone cannot reconstruct the image and
tuning all weights collapses; adjusting the per-channel activations is the middle ground.

Choices where paper, authors' code and pytorch-pretrained-biggan differ (all configurable):

- ``EMD``: the paper's "earth mover distance between z and r ~ N(0,1)" is implemented literally, as
  the 1-D Wasserstein-1 distance between z's coordinates and a fresh draw r of the same size (mean
  |sort(z) − sort(r)|). The authors' code uses SmallGAN's nearest-neighbour surrogate instead.
- ``truncation`` 1.0: pytorch-pretrained-biggan's batch-norm statistics are indexed by truncation, and
  only at 1.0 is "z like N(0,1)" (what the EMD pulls towards) the noise the generator expects.
- class vector: the mean of BigGAN's class embeddings, fixed (the authors start from that mean).
- ``train_noise`` 0.05: the authors add N(0, 0.05²) to z at every step (the paper does not say).
- variants: z + ``variant_sigma``·ε clamped to ±``variant_clamp`` (the authors: σ 0.2, clamp); their
  code also zeroes each coordinate of z with probability 1/2 (``variant_keep`` 0.5), off by default.

Plain PyTorch: no Ray, no MLflow; the pre-generation actors hold one of these each.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_CONFIG: dict[str, Any] = {
    "steps": 500,
    "lr_z": 0.01,
    "lr_scale_shift": 0.0005,
    "lambda_perc": 0.1,
    "lambda_z": 0.1,
    "truncation": 1.0,
    "train_noise": 0.05,
    "variant_sigma": 0.2,
    "variant_clamp": 2.0,
    "variant_keep": 1.0,
}

BIGGAN_FILES = ("config.json", "pytorch_model.bin")

# Perceptual backbone: images in [-1, 1] with 3 channels at the generator's resolution -> feature maps.
Perceptual = Callable[[torch.Tensor], Sequence[torch.Tensor]]


def load_biggan(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """A ``pytorch_pretrained_biggan.BigGAN`` from a local directory (config.json + pytorch_model.bin).

    Never downloads: a missing directory or file raises FileNotFoundError naming what is missing.
    """
    from pytorch_pretrained_biggan import BigGAN

    path = Path(path)
    missing = [f for f in BIGGAN_FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} lacks {', '.join(missing)}")
    model = BigGAN.from_pretrained(str(path))
    return model.to(device).eval()


def biggan_resolution(model: nn.Module) -> int:
    """Output side length: 4·2^(up-sampling blocks) (config.output_dim is only a label)."""
    ups = sum(1 for layer in model.config.layers if layer[0])
    return 4 * 2 ** ups


def scale_shift_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that produce batch-norm scale and shift: every ``BigGANBatchNorm``'s class-
    conditional ``scale``/``offset`` linear layers (and the final unconditional BN's weight/bias)."""
    from pytorch_pretrained_biggan.model import BigGANBatchNorm

    params: list[nn.Parameter] = []
    for module in model.modules():
        if isinstance(module, BigGANBatchNorm):
            params += list(module.parameters())
    return params


def earth_mover(z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """1-D Wasserstein-1 distance between the empirical distributions of z's and r's values.

    Mean absolute difference of the sorted values: 0 when z holds r's values in any order, and
    exactly |c| when z = r + c.
    """
    zs = torch.sort(z.reshape(-1)).values
    rs = torch.sort(r.reshape(-1).to(zs)).values
    if zs.numel() != rs.numel():
        raise ValueError(f"earth_mover needs as many reference values as z has ({zs.numel()} vs {rs.numel()})")
    return (zs - rs).abs().mean()


def to_generator_space(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """[N, C, H, W] in [-1, 1] (C = 1 or 3) -> [N, 3, R, R] as the generator draws them."""
    x = images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(-1, 1)


@dataclass
class FitResult:
    """What one target's optimisation produced: the fitted z and the final and per-step losses."""

    z: torch.Tensor  # [1, z_dim]
    loss: float
    losses: list[float]
    seconds: float


class FinetuneGAN:
    """One BigGAN generator that is re-fitted per target image (``fit``) and then sampled (``variants``).

    ``perceptual``: None (or λp = 0) skips the perceptual term; the caller decides which backbone
    (ImageNet VGG/ResNet from local weights, or one trained on the dataset's base classes).
    """

    def __init__(self, biggan: nn.Module, config: dict[str, Any] | None = None,
                 perceptual: Perceptual | None = None, device: torch.device | str = "cpu"):
        self.config = {**DEFAULT_CONFIG, **(config or {})}
        unknown = set(self.config) - set(DEFAULT_CONFIG)
        if unknown:
            raise KeyError(f"unknown FinetuneGAN config keys {sorted(unknown)}; valid: {sorted(DEFAULT_CONFIG)}")
        if not 0 < float(self.config["truncation"]) <= 1:
            raise ValueError(f"truncation must be in (0, 1], got {self.config['truncation']}")
        self.device = torch.device(device)
        self.G = biggan.to(self.device).eval()  # eval: batch-norm statistics stay the pre-trained ones
        for p in self.G.parameters():
            p.requires_grad_(False)
        self.scale_shift = scale_shift_parameters(self.G)
        for p in self.scale_shift:
            p.requires_grad_(True)
        self._initial = [p.detach().clone() for p in self.scale_shift]
        self.perceptual = perceptual
        self.resolution = biggan_resolution(self.G)
        self.z_dim = int(self.G.config.z_dim)
        n = int(self.G.config.num_classes)
        self.class_vector = torch.full((1, n), 1.0 / n, device=self.device)  # the mean class embedding
        self.z: torch.Tensor | None = None

    def reset(self) -> None:
        """Back to the pre-trained scale/shift layers (before every new target)."""
        with torch.no_grad():
            for p, p0 in zip(self.scale_shift, self._initial):
                p.copy_(p0)
        self.z = None

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return self.G(z, self.class_vector.expand(z.shape[0], -1), float(self.config["truncation"]))

    def loss_terms(self, fake: torch.Tensor, target: torch.Tensor, z: torch.Tensor,
                   r: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eq. 1's three terms (unweighted) for generated and target images in generator space."""
        terms = {"l1": F.l1_loss(fake, target), "emd": earth_mover(z, r)}
        if self.perceptual is not None and float(self.config["lambda_perc"]) > 0:
            terms["perc"] = sum(F.mse_loss(a, b) for a, b in zip(self.perceptual(fake), self.perceptual(target)))
        return terms

    def fit(self, target: torch.Tensor, seed: int, steps: int | None = None) -> FitResult:
        """Optimise z and the scale/shift layers to reconstruct ``target`` ([C, H, W] or [1, C, H, W] in [-1, 1])."""
        import time

        t0 = time.perf_counter()
        cfg = self.config
        steps = int(cfg["steps"]) if steps is None else int(steps)
        self.reset()
        if target.dim() == 3:
            target = target[None]
        target = to_generator_space(target.to(self.device), self.resolution)
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        z = torch.zeros(1, self.z_dim, device=self.device, requires_grad=True)  # the authors start at 0
        opt = torch.optim.Adam([{"params": [z], "lr": float(cfg["lr_z"])},
                                {"params": self.scale_shift, "lr": float(cfg["lr_scale_shift"])}])
        lp, lz, noise = float(cfg["lambda_perc"]), float(cfg["lambda_z"]), float(cfg["train_noise"])
        losses: list[float] = []
        for _ in range(steps):
            eps = torch.randn(z.shape, generator=gen, device=self.device) * noise
            r = torch.randn(z.shape, generator=gen, device=self.device)
            terms = self.loss_terms(self.generate(z + eps), target, z, r)
            loss = terms["l1"] + lz * terms["emd"] + (lp * terms["perc"] if "perc" in terms else 0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        with torch.no_grad():  # the final loss of the fitted z itself (no training noise)
            r = torch.randn(z.shape, generator=gen, device=self.device)
            terms = self.loss_terms(self.generate(z), target, z, r)
            final = float(terms["l1"] + lz * terms["emd"] + (lp * terms["perc"] if "perc" in terms else 0.0))
        self.z = z.detach()
        return FitResult(z=self.z.clone(), loss=final, losses=losses, seconds=time.perf_counter() - t0)

    @torch.no_grad()
    def variants(self, n: int, seed: int) -> torch.Tensor:
        """``n`` images G(clamp(z·mask + σε)) in [-1, 1], [n, 3, R, R]; variant i depends only on (seed, i)."""
        if self.z is None:
            raise RuntimeError("call fit() before variants()")
        cfg = self.config
        zs = []
        for i in range(int(n)):
            gen = torch.Generator(device=self.device).manual_seed(variant_seed(seed, i))
            keep = float(cfg["variant_keep"])
            mask = (torch.rand(self.z.shape, generator=gen, device=self.device) < keep).to(self.z) if keep < 1 else 1.0
            eps = torch.randn(self.z.shape, generator=gen, device=self.device)
            clamp = float(cfg["variant_clamp"])
            zs.append((self.z * mask + float(cfg["variant_sigma"]) * eps).clamp(-clamp, clamp))
        return self.generate(torch.cat(zs)).clamp(-1, 1)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Copies of the fitted scale/shift parameters (what a target changes besides z)."""
        return {str(i): p.detach().clone() for i, p in enumerate(self.scale_shift)}


def variant_seed(seed: int, index: int) -> int:
    """Seed of variant ``index`` of the target fitted with ``seed`` (stored beside every variant)."""
    return (int(seed) * 1_000_003 + int(index)) % (2**63 - 1)


# ------------------------------------------------------------------ perceptual backbones -------

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class _Taps(nn.Module):
    """Run ``layers`` in order and return the outputs after the indices in ``taps``."""

    def __init__(self, layers: Sequence[nn.Module], taps: Sequence[int], prepare: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.layers = nn.ModuleList(layers[: max(taps) + 1])
        self.taps = set(int(t) for t in taps)
        self.prepare = prepare
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, out = self.prepare(x), []
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i in self.taps:
                out.append(h)
        return out


def _imagenet_prepare(x: torch.Tensor) -> torch.Tensor:
    mean = x.new_tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(_IMAGENET_STD).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


def imagenet_perceptual(weights: str | Path) -> tuple[nn.Module, str]:
    """VGG-16 (the authors' choice: ReLU outputs of its first ten conv layers) or ResNet-18 (the
    outputs of its stem and four stages) from a local torchvision ImageNet state dict; returns the
    module and a description naming the file. The architecture is read from the state dict's keys."""
    import torchvision

    state = torch.load(str(weights), map_location="cpu", weights_only=True)
    if any(k.startswith("features.") for k in state):
        net = torchvision.models.vgg16()
        net.load_state_dict(state)
        return _Taps(list(net.features), [1, 3, 6, 8, 11, 13, 15, 18, 20, 22], _imagenet_prepare), f"vgg16_imagenet:{weights}"
    if "conv1.weight" in state and any(k.startswith("layer4.") for k in state):
        net = torchvision.models.resnet18()
        net.load_state_dict(state)
        stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        return _Taps([stem, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4], [0, 2, 3, 4, 5],
                     _imagenet_prepare), f"resnet18_imagenet:{weights}"
    raise ValueError(f"{weights} is neither a torchvision VGG-16 nor a ResNet-18 state dict")


def domain_perceptual(body: nn.Sequential, in_channels: int, image_size: int) -> nn.Module:
    """Perceptual features from a CNN trained on the dataset's base classes (the fallback when no
    ImageNet weights are given): its conv-block outputs, fed images converted to its own channels
    and size."""

    def prepare(x: torch.Tensor) -> torch.Tensor:
        if in_channels == 1:
            x = x.mean(1, keepdim=True)
        if x.shape[-1] != image_size:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        return x

    body = copy.deepcopy(body)
    relus = [i for i, m in enumerate(body) if isinstance(m, nn.ReLU)]
    for m in body:  # in-place ReLUs would overwrite tapped activations needed by autograd
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return _Taps(list(body), relus, prepare)


def save_tiny_biggan(path: str | Path, *, channel_width: int = 4, z_dim: int = 16, num_classes: int = 10,
                     resolution: int = 32, seed: int = 0) -> Path:
    """Write a small random BigGAN (config.json + pytorch_model.bin) that ``load_biggan`` reads: for
    tests and benchmarks, no download. Spectral-norm vectors are settled by one train-mode forward
    and the final BN's weight/bias (left uninitialised by the package) are set to 1/0."""
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    layers = {  # (up-sample?, in, out) in units of channel_width; channels halve only by exactly 2
        32: [(False, 16, 16), (True, 16, 8), (False, 8, 4), (True, 4, 2), (False, 2, 1), (True, 1, 1)],
        64: [(False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 4), (False, 4, 2), (True, 2, 2),
             (False, 2, 1), (True, 1, 1)],
    }.get(int(resolution))
    if layers is None:
        raise ValueError(f"save_tiny_biggan: resolution 32 or 64, got {resolution}")
    torch.manual_seed(seed)
    cfg = BigGANConfig(output_dim=resolution, z_dim=z_dim, class_embed_dim=z_dim, channel_width=channel_width,
                       num_classes=num_classes, layers=layers, attention_layer_position=len(layers) - 2)
    model = BigGAN(cfg)
    with torch.no_grad():
        model.generator.bn.weight.fill_(1.0)
        model.generator.bn.bias.fill_(0.0)
        model.train()
        model(torch.zeros(2, z_dim), torch.eye(num_classes)[:2], 1.0)
    return save_biggan(model.eval(), path)


def save_biggan(model: nn.Module, path: str | Path) -> Path:
    """Write a BigGAN as the local folder ``load_biggan`` (and ``--biggan``) reads: config.json +
    pytorch_model.bin. Used once, with network access, to keep the ImageNet weights:
    ``save_biggan(BigGAN.from_pretrained("biggan-deep-128"), "weights/biggan-deep-128")``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    (path / "config.json").write_text(json.dumps(model.config.__dict__, default=list, indent=1))
    return path
