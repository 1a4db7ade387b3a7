"""MetaIRNet (MetaIRNet paper §4.2): an image fusion network feeding ProtoNet, trained end to end.

Why fuse instead of adding generated images: the paper's pilot study (Table 1) found raw GAN
variants hurt a one-shot classifier, while blending them with the real image on a 3×3 grid helped;
MetaIRNet learns the blend per image pair. Fusion network F (eq. 3): two CNNs encode the real image
I and its generated variant I_g, their features are concatenated and one FC layer gives 9 weights,
one per cell of a 3×3 grid, upsampled to the image keeping the block structure:
I_syn = w ⊙ I + (1 − w) ⊙ I_g. As in the authors' code the weights are not squashed (no sigmoid),
so a cell may extrapolate beyond either image. The support set is augmented with the fused images
(eq. 4) and ProtoNet classifies the queries (eq. 5–6); F and C train together on eq. 7's loss.
``augment`` may add ``flip`` (the paper's "FinetuneGAN, Flip" row), applied after fusion.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from methods import register
from methods.base import Episode, GradSync, no_sync
from methods.protonet import ProtoNet, episode_labels, make_backbone

GRID = 3


class FusionNet(nn.Module):
    """Two encoders (real, generated) -> concat -> FC -> a GRID×GRID weight map per pair."""

    def __init__(self, encoder_real: nn.Module, encoder_generated: nn.Module, feature_dim: int):
        super().__init__()
        self.encoder_real, self.encoder_generated = encoder_real, encoder_generated
        self.fc = nn.Linear(2 * feature_dim, GRID * GRID)

    def grid_weights(self, real: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        """[B, 3, 3] raw weights (no squashing)."""
        h = torch.cat([self.encoder_real(real).flatten(1), self.encoder_generated(generated).flatten(1)], dim=1)
        return self.fc(h).view(-1, GRID, GRID)

    @staticmethod
    def block_map(weights: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """[B, 3, 3] -> [B, 1, H, W], each cell's weight copied over its block (nearest: blocks of ⌈H/3⌉ or ⌊H/3⌋)."""
        return F.interpolate(weights.unsqueeze(1), size=size, mode="nearest")

    def forward(self, real: torch.Tensor, generated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused images w·I + (1−w)·I_g and the block map w."""
        w = self.block_map(self.grid_weights(real, generated), tuple(real.shape[-2:]))
        return w * real + (1 - w) * generated, w


@register
class MetaIRNet(ProtoNet):
    """ProtoNet on a support set augmented with learned real/generated fusions (always, in training too)."""

    name = "metairnet"
    default_config: dict[str, Any] = {**ProtoNet.default_config, "augment": "generated", "augment_in_training": True}

    def __init__(self, config: dict[str, Any], image_shape: tuple[int, int, int], device: torch.device | str = "cpu",
                 num_classes: int = 0):
        super().__init__(config, image_shape, device, num_classes)
        self._w_means: list[float] = []
        if "generated" not in self.augment or "gaussian" in self.augment:
            raise ValueError("metairnet: augment must contain generated (fused with the real images), optionally flip")

    def build_net(self) -> nn.ModuleDict:
        cfg, c = self.config, self.image_shape[0]
        backbones = [make_backbone(cfg["backbone"], c, cfg["backbone_weights"], int(cfg["width"])) for _ in range(3)]
        return nn.ModuleDict({"backbone": backbones[0],
                              "fusion": FusionNet(backbones[1], backbones[2], backbones[1].dim)})

    def wants_generated(self, training: bool) -> bool:
        return True

    def episode_figure_rows(self, episode: Episode) -> list[torch.Tensor]:
        """The fused image and its 3x3 block weight map (w in [0, 1] shown black to white), [N, C, H, W] each."""
        self.net.eval()
        with torch.no_grad():
            _, _, fused, w = self.fuse(episode)
        fused = fused.cpu().clamp(-1, 1)
        return [fused, (w.cpu() * 2 - 1).clamp(-1, 1).expand_as(fused)]

    def fuse(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Real support images repeated per variant, the variants, their fusions and the block maps w."""
        g = self.generated_of(episode)  # [N, K, A, C, H, W]
        real = episode.support.to(self.device).unsqueeze(2).expand_as(g).reshape(-1, *g.shape[3:])
        gen = g.reshape(-1, *g.shape[3:])
        fused, w = self.net["fusion"](real, gen)
        return real, gen, fused, w

    def augmented_support(self, episode: Episode, augment: bool, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n, k = episode.support.shape[:2]
        x = episode.support.reshape(n * k, *episode.support.shape[2:]).to(self.device)
        y = episode_labels(n, k, self.device)
        _, _, fused, w = self.fuse(episode)
        self._w_means.append(float(w.detach().mean()))
        x = torch.cat([x, fused])
        y = torch.cat([y, episode_labels(n, k * (len(fused) // (n * k)), self.device)])
        if augment and "flip" in self.augment:
            x, y = torch.cat([x, torch.flip(x, dims=(-1,))]), torch.cat([y, y])
        return x, y

    def meta_train_step(self, episodes: list[Episode], sync: GradSync = no_sync) -> dict[str, float]:
        self._w_means = []
        out = super().meta_train_step(episodes, sync)
        out["fusion_w_mean"] = sum(self._w_means) / len(self._w_means)  # how much of the real image is kept
        return out
