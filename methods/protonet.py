"""ProtoNet (MetaIRNet paper eq. 5–6) with the paper's support-set augmentation baselines.

Prototypes are the mean feature of each class's (augmented) support set; a query's class
probabilities are a softmax over negative Euclidean distances to the prototypes (eq. 6 uses the
plain distance; Snell et al. and the authors' code use its square: ``distance=sq_euclidean``).

Augmentations (``augment``, comma list): ``flip`` adds horizontally flipped support images,
``gaussian`` adds support features plus N(0, σ²) noise (σ 0.01), ``generated`` adds ``n_aug``
generated variants of each support image (from ``Episode.generated``). As in the paper they
enlarge the support set at meta-test time; ``augment_in_training`` also applies them to training
episodes. Backbones: Conv4 (no pre-training, the paper's Table 3) or torchvision's ResNet-18 with
optional local ImageNet weights (Table 2).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from methods import register
from methods.base import Episode, FewShotClassifier, GradSync, no_sync

AUGMENTATIONS = ("none", "flip", "gaussian", "generated")
DISTANCES = ("euclidean", "sq_euclidean")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class Conv4(nn.Module):
    """Four 3×3 conv (64) + BN + ReLU blocks, 2×2 max-pool after the first three, global max-pool
    after the last (the authors' Conv4): a 64-d feature at any input size."""

    def __init__(self, in_channels: int, width: int = 64):
        super().__init__()
        blocks: list[nn.Module] = []
        for i in range(4):
            blocks += [nn.Conv2d(in_channels if i == 0 else width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            blocks.append(nn.MaxPool2d(2) if i < 3 else nn.AdaptiveMaxPool2d(1))
        self.layers = nn.Sequential(*blocks)
        self.dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(1)


class ResNet18(nn.Module):
    """torchvision's ResNet-18 without its classifier (512-d); grey images are repeated to RGB and,
    with ImageNet weights, normalised as ImageNet images were."""

    def __init__(self, in_channels: int, weights: str = ""):
        super().__init__()
        import torchvision

        net = torchvision.models.resnet18()
        if weights:
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        net.fc = nn.Identity()
        self.net, self.in_channels, self.normalise, self.dim = net, in_channels, bool(weights), 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.normalise:
            x = ((x + 1) / 2 - x.new_tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)) / x.new_tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        return self.net(x)


def make_backbone(name: str, in_channels: int, weights: str = "", width: int = 64) -> nn.Module:
    """``conv4`` (default, from scratch; ``width`` channels, 64 in the paper) or ``resnet18`` (ImageNet
    weights from a local file when given)."""
    if name == "conv4":
        if weights:
            raise ValueError("backbone_weights is for resnet18; conv4 trains from scratch (the paper's Table 3)")
        return Conv4(in_channels, width)
    if name == "resnet18":
        return ResNet18(in_channels, weights)
    raise ValueError(f"unknown backbone {name!r}: conv4 or resnet18")


def prototype_logits(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, n_way: int,
                     distance: str = "euclidean") -> torch.Tensor:
    """Eq. 5–6: prototypes = class means of ``support`` [S, D] (``labels`` in 0..n_way-1); returns the
    logits −d(query, prototype) [M, n_way], whose softmax is P(y = c | query)."""
    onehot = F.one_hot(labels, n_way).to(support.dtype)  # [S, N]
    prototypes = onehot.t() @ support / onehot.sum(0).unsqueeze(1)  # [N, D]
    sq = (query.unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(-1)  # [M, N]
    if distance == "sq_euclidean":
        return -sq
    if distance == "euclidean":
        return -sq.clamp_min(1e-12).sqrt()  # the clamp keeps the gradient finite at distance 0
    raise ValueError(f"unknown distance {distance!r}: one of {DISTANCES}")


def parse_augment(spec: str) -> set[str]:
    items = {a.strip() for a in str(spec).split(",") if a.strip()} - {"none"}
    bad = items - set(AUGMENTATIONS)
    if bad:
        raise ValueError(f"unknown augmentation(s) {sorted(bad)}: choose from {', '.join(AUGMENTATIONS)}")
    return items


def episode_labels(n_way: int, per_class: int, device: torch.device) -> torch.Tensor:
    """Labels of images laid out class-major ([N, k] flattened): 0,0,..,1,1,..."""
    return torch.arange(n_way, device=device).repeat_interleave(per_class)


@register
class ProtoNet(FewShotClassifier):
    """Prototypical network trained on episodes (eq. 7: cross-entropy of eq. 6 over the queries)."""

    name = "protonet"
    default_config: dict[str, Any] = {
        "shots": 1,  # K: support images per class
        "n_way": 5,
        "queries": 16,  # per class, in training and evaluation episodes
        "backbone": "conv4",
        "backbone_weights": "",  # resnet18: torchvision ImageNet state dict (local file)
        "width": 64,  # conv4's channels
        "lr": 1e-3,
        "lr_decay_halfway": True,  # ×0.1 at half the planned steps (the authors' schedule)
        "distance": "euclidean",
        "augment": "none",  # comma list of flip, gaussian, generated
        "augment_in_training": False,  # the paper augments at meta-test time only
        "gaussian_sigma": 0.01,
        "n_aug": 1,  # generated variants per support image used in an episode
        "generated": "",  # Parquet store of variants (python -m orchestrator pregenerate --out DIR)
        "val_episodes": 200,
        "test_episodes": 1000,
    }
    harness_defaults = {"eval_every": 500, "log_every": 50, "select_metric": "val_accuracy"}
    variant_keys = ("backbone", "augment")  # Table 2's rows

    def __init__(self, config: dict[str, Any], image_shape: tuple[int, int, int], device: torch.device | str = "cpu",
                 num_classes: int = 0):
        super().__init__(config, image_shape, device, num_classes)
        cfg = self.config
        self.augment = parse_augment(cfg["augment"])
        if cfg["distance"] not in DISTANCES:
            raise ValueError(f"unknown distance {cfg['distance']!r}: one of {DISTANCES}")
        self.n_way = int(cfg["n_way"])
        self.net = self.build_net().to(self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=float(cfg["lr"]))

    def build_net(self) -> nn.ModuleDict:
        cfg = self.config
        return nn.ModuleDict({"backbone": make_backbone(cfg["backbone"], self.image_shape[0], cfg["backbone_weights"],
                                                        int(cfg["width"]))})

    def wants_generated(self, training: bool) -> bool:
        """Whether episodes (training or evaluation ones) must carry generated variants."""
        return "generated" in self.augment and (not training or bool(self.config["augment_in_training"]))

    def augmented_support(self, episode: Episode, augment: bool, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Support images (eq. 4's S̃ before feature-level noise) and their labels."""
        n, k = episode.support.shape[:2]
        x = episode.support.reshape(n * k, *episode.support.shape[2:]).to(self.device)
        y = episode_labels(n, k, self.device)
        if augment and "generated" in self.augment:
            g = self.generated_of(episode)
            x, y = torch.cat([x, g.reshape(-1, *g.shape[3:])]), torch.cat([y, episode_labels(n, k * g.shape[2], self.device)])
        if augment and "flip" in self.augment:
            x, y = torch.cat([x, torch.flip(x, dims=(-1,))]), torch.cat([y, y])
        return x, y

    def generated_of(self, episode: Episode) -> torch.Tensor:
        if episode.generated is None:
            raise ValueError(f"{self.name}: this episode carries no generated images; give a store with --set generated=DIR")
        return episode.generated[:, :, : int(self.config["n_aug"])].to(self.device)

    def scores(self, episode: Episode, augment: bool) -> torch.Tensor:
        gen = torch.Generator(device=self.device).manual_seed(int(episode.seed))
        x, y = self.augmented_support(episode, augment, gen)
        q = episode.query.reshape(-1, *episode.query.shape[2:]).to(self.device)
        feats = self.net["backbone"](torch.cat([x, q]))  # one batch, as the authors' code does
        s, fq = feats[: len(x)], feats[len(x):]
        if augment and "gaussian" in self.augment:
            noise = torch.randn(s.shape, generator=gen, device=self.device) * float(self.config["gaussian_sigma"])
            s, y = torch.cat([s, s + noise]), torch.cat([y, y])
        return prototype_logits(s, y, fq, episode.support.shape[0], self.config["distance"])

    def meta_train_step(self, episodes: list[Episode], sync: GradSync = no_sync) -> dict[str, float]:
        self.net.train()
        augment = bool(self.config["augment_in_training"])
        self.opt.zero_grad(set_to_none=True)
        loss_sum, correct, total = 0.0, 0, 0
        for ep in episodes:
            logits = self.scores(ep, augment)
            target = episode_labels(ep.query.shape[0], ep.query.shape[1], self.device)
            loss = F.cross_entropy(logits, target) / len(episodes)
            loss.backward()
            loss_sum += float(loss.detach())
            correct += int((logits.argmax(1) == target).sum())
            total += len(target)
        sync(self.parameters())
        self.opt.step()
        return {"loss": loss_sum, "train_accuracy": correct / max(total, 1)}

    @torch.no_grad()
    def logits(self, episode: Episode) -> torch.Tensor:
        self.net.eval()
        return self.scores(episode, augment=True)

    def schedule(self, step: int, total: int) -> None:
        lr = float(self.config["lr"])
        if self.config["lr_decay_halfway"] and total > 0 and step >= total // 2:
            lr *= 0.1
        for group in self.opt.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy({"net": self.net.state_dict(), "opt": self.opt.state_dict()})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        if "opt" in state:
            self.opt.load_state_dict(state["opt"])

    def parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def buffers(self) -> list[torch.Tensor]:
        return [b for b in self.net.buffers() if b.is_floating_point()]
