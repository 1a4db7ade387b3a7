"""LPIPS diversity (Zhang et al. 2018) from a local backbone weights file.

LPIPS itself comes from the authors' maintained package (``lpips`` on PyPI): its network code and its
linear calibration layers (``lpips/weights/v0.1/{alex,vgg,squeeze}.pth``, shipped inside the wheel).
What the package would download at run time, the torchvision ImageNet backbone, is read from the file
the user passes with ``--lpips-weights`` (for example torchvision's ``alexnet-owt-7be5be79.pth``), with
``torch.load(weights_only=True)``; nothing is downloaded. The backbone (alex, vgg16, squeeze1.1) is
recognised from the file's tensor names and shapes.

The figure, ``lpips_diversity``: per class, the mean LPIPS distance over ``pairs`` seeded random pairs
of distinct images of one set (generated images, the repeated shots, or the class's reals), then the
mean over classes. Higher = more perceptually varied; repeated shots score low, because a pair of
copies of one shot is at distance 0. Units: LPIPS distance (≥ 0, about 0-1 for natural images).
The pairing and averaging are ours; the distance is the package's ``LPIPS.forward``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from orchestrator.errors import UserError

# torchvision ``features.<i>`` index -> the backbone, by the first convolution's kernel and the module layout.
_NETS = ("alex", "vgg", "squeeze")


def _which_net(state: dict[str, torch.Tensor]) -> str:
    first = state.get("features.0.weight")
    if first is None or first.ndim != 4:
        raise ValueError("no 'features.0.weight' convolution: not a torchvision AlexNet/VGG16/SqueezeNet1.1 state dict")
    if first.shape[-1] == 11:
        return "alex"
    if any(k.startswith("features.3.squeeze") for k in state):
        return "squeeze"
    return "vgg"


class LpipsDiversity:
    """Mean pairwise LPIPS distance within a set of images.

    Args:
      weights: torchvision ImageNet state dict of AlexNet, VGG16 or SqueezeNet 1.1 (a ``.pth`` file).
      pairs: random pairs of distinct images scored per set (all pairs when fewer exist).
    Raises:
      UserError: the file is missing, not a weights-only state dict, or not one of the three backbones.
    """

    def __init__(self, weights: Path | str, pairs: int = 100):
        import lpips

        path = Path(weights).expanduser()
        fix = ("pass torchvision's ImageNet weights file of alexnet, vgg16 or squeezenet1_1 "
               "(e.g. alexnet-owt-7be5be79.pth)")
        if not path.is_file():
            raise UserError(f"--lpips-weights {path}: no such file; {fix}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError("not a state dict")
            self.net_name = _which_net(state)
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
            raise UserError(f"--lpips-weights {path}: cannot be read as a weights-only state dict "
                            f"({type(err).__name__}: {str(err).splitlines()[0][:120]}); {fix}") from None
        with warnings.catch_warnings():  # the package passes torchvision's deprecated `pretrained=` argument
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(pretrained=True, net=self.net_name, pnet_rand=True, verbose=False)
        # The package keeps torchvision's module indices inside its slices: net.slice<k>.<i>.* = features.<i>.*
        mapped: dict[str, torch.Tensor] = {}
        for name in model.net.state_dict():
            _, rest = name.split(".", 1)
            key = f"features.{rest}"
            if key not in state:
                raise UserError(f"--lpips-weights {path}: {self.net_name} backbone tensor {key} missing; {fix}")
            mapped[name] = state[key]
        try:
            model.net.load_state_dict(mapped, strict=True)
        except RuntimeError as err:
            raise UserError(f"--lpips-weights {path}: shapes do not match {self.net_name} "
                            f"({str(err).splitlines()[-1].strip()[:120]}); {fix}") from None
        self.model = model.eval()
        self.pairs = int(pairs)
        self.path = str(path.resolve())

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, seed: int) -> float:
        """Mean LPIPS distance over seeded random pairs of distinct images of ``images``.

        Args:
          images: [N, C, H, W] float in [-1, 1] (the datasets' range), C = 1 (repeated to RGB) or 3; N ≥ 2.
          seed: seeds the choice of pairs.
        Returns: a float ≥ 0 (LPIPS units), or NaN when N < 2 or an image is not finite.
        """
        n = len(images)
        if n < 2 or not torch.isfinite(images).all():
            return float("nan")
        x = images.float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        rng = np.random.default_rng(seed)
        all_pairs = n * (n - 1) // 2
        if all_pairs <= self.pairs:
            i, j = np.triu_indices(n, k=1)
        else:
            i = rng.integers(0, n, size=self.pairs)
            j = (i + rng.integers(1, n, size=self.pairs)) % n  # never i == j
        d = self.model(x[torch.as_tensor(i)], x[torch.as_tensor(j)])
        return float(d.flatten().mean())
