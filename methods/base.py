"""The whole contract between the harness and a method; every method is plain PyTorch.

The harness calls only what this file declares (every hook with its default here) and never
reads a method's other attributes. A method never learns how many workers it runs on: the
harness hands it a ``sync`` callable that averages gradients across workers in place (identity
on one process), and the method calls it on whatever it is about to step with an optimizer.

Config keys use one name per concept across methods: ``shots`` (support images per class),
``queries`` (query images per class), ``n_way``, ``inner_lr`` / ``inner_steps`` (inner loop),
``meta_lr`` (the outer loop's learning rate), ``adapt_steps`` (test-time adaptation).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Protocol

import torch

GradSync = Callable[[Iterable[torch.nn.Parameter]], None]


def no_sync(params: Iterable[torch.nn.Parameter]) -> None:
    """Single-process default: gradients are already the global ones."""


@dataclass
class Task:
    """n images of one class (generation tasks); ``seed`` drives every random draw inside the step."""

    images: torch.Tensor  # [n, C, H, W], float in [-1, 1]
    label: int
    seed: int


@dataclass
class Episode:
    """An N-way K-shot Q-query classification task."""

    support: torch.Tensor  # [N, K, C, H, W]
    query: torch.Tensor  # [N, Q, C, H, W]
    classes: list[int]
    seed: int
    support_ids: Any = None  # [N, K] dataset indices of the support images (to look their variants up)
    generated: torch.Tensor | None = None  # [N, K, n_aug, C, H, W]: generated variants of each support image


@dataclass
class Diagnostics:
    """Method-specific measurements the harness logs beside the protocol's metrics.

    ``figures``: name -> (images in [-1, 1] as [N, C, H, W], images per row); logged as PNGs.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    figures: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict)


class Sampler(Protocol):
    """What an adapted model offers: fresh images of the class it was adapted to."""

    def sample(self, n: int, seed: int) -> torch.Tensor: ...


class Method(abc.ABC):
    """Build from a config, meta-train on tasks, adapt on an unseen class's shots, generate.

    ``default_config`` is the full set of keys a user may override with ``--set``;
    every method's config has ``shots`` (images given for adaptation at evaluation).
    """

    name: ClassVar[str]
    default_config: ClassVar[dict[str, Any]]
    # Harness keys this method wants a different default for (e.g. ``tasks_per_worker``: classes
    # per meta-step); still overridable with ``--set``.
    harness_defaults: ClassVar[dict[str, Any]] = {}
    # Config keys that make a different model rather than a different hyperparameter (an architecture,
    # an ablation switch): ``compare`` ranks each combination of their values as its own row.
    variant_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: dict[str, Any], image_shape: tuple[int, int, int], device: torch.device | str = "cpu",
                 num_classes: int = 0):
        # num_classes: how many classes the dataset has (Task.label indexes them); methods with a
        # class-conditional part (a discriminator that classifies base classes) size it with this.
        self.config = {**self.default_config, **config}
        self.image_shape = tuple(image_shape)
        self.device = torch.device(device)
        self.num_classes = int(num_classes)

    @abc.abstractmethod
    def meta_train_step(self, tasks: list[Task], sync: GradSync = no_sync) -> dict[str, float]:
        """One meta-update from this worker's tasks; returns scalar losses for logging."""

    def schedule(self, step: int, total: int) -> None:
        """Called before each meta-step with the planned total (0 = a time budget): e.g. a learning-rate decay."""

    @abc.abstractmethod
    def adapt(self, shots: torch.Tensor, seed: int, steps: int | None = None) -> Sampler:
        """Few-shot adaptation on [k, C, H, W] shots without touching the meta-parameters."""

    def adapt_many(self, shots: list[torch.Tensor], seeds: list[int], steps: int | None = None) -> list[Sampler]:
        """Adapt on several classes at once: ``shots[i]`` [k_i, C, H, W] with ``seeds[i]``; one sampler per class.

        Default: ``adapt`` one class after another. A method with a batched adaptation (``task_batch``) may
        override it; it must return what the default returns, within float tolerance."""
        return [self.adapt(s, seed, steps) for s, seed in zip(shots, seeds)]

    # True when the method offers ``interpolate`` (``generate --interpolate``).
    supports_interpolation: ClassVar[bool] = False

    def interpolate(self, shots: torch.Tensor, n: int, seed: int) -> torch.Tensor:
        """Optional: ``n`` images [n, C, H, W] in [-1, 1] walking between two memory slots for the class of
        ``shots`` [k, C, H, W] (MFH's Fig. 10). Methods that offer it set ``supports_interpolation``."""
        raise NotImplementedError(f"{self.name} has no memory slots to interpolate between")

    def diagnostics(self, shots: dict[int, torch.Tensor], seed: int) -> Diagnostics:
        """Optional: measurements on evaluation classes given their shots ([k, C, H, W] per class).

        Called by the protocol after generation (validation classes during training, novel
        classes at the end) with the same seeded shots; e.g. MFH reports memory usage here.
        """
        return Diagnostics()

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def parameters(self) -> list[torch.nn.Parameter]:
        """Every meta-parameter (used to check workers stay in sync)."""


class FewShotClassifier(abc.ABC):
    """An episodic few-shot classifier (ProtoNet, MetaIRNet): the classification counterpart of ``Method``.

    Same construction and config conventions as ``Method`` (``default_config`` holds every ``--set``
    key, including ``shots``); the harness meta-trains it on episodes and scores it on queries.
    """

    name: ClassVar[str]
    default_config: ClassVar[dict[str, Any]]
    harness_defaults: ClassVar[dict[str, Any]] = {}
    # Config keys that make a different model rather than a different hyperparameter (an architecture,
    # an ablation switch): ``compare`` ranks each combination of their values as its own row.
    variant_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: dict[str, Any], image_shape: tuple[int, int, int], device: torch.device | str = "cpu",
                 num_classes: int = 0):
        self.config = {**self.default_config, **config}
        self.image_shape = tuple(image_shape)
        self.device = torch.device(device)
        self.num_classes = int(num_classes)

    @abc.abstractmethod
    def meta_train_step(self, episodes: list[Episode], sync: GradSync = no_sync) -> dict[str, float]:
        """One update from this worker's episodes (loss averaged over them); returns scalars for logging."""

    @abc.abstractmethod
    def logits(self, episode: Episode) -> torch.Tensor:
        """Scores [N*Q, N] of the episode's queries (row n*Q+q = query q of class n) from its support set."""

    def schedule(self, step: int, total: int) -> None:
        """Called before each step with the planned total (0 = a time budget): e.g. a learning-rate decay."""

    def wants_generated(self, training: bool) -> bool:
        """Whether episodes (``training`` ones, or evaluation ones) must carry generated variants of the support
        images (``Episode.generated``); the harness then requires a store that covers them. Default: never."""
        return False

    def episode_figure_rows(self, episode: Episode) -> list[torch.Tensor]:
        """Optional extra rows [N, C, H, W] in [-1, 1] for the evaluation figure of a 1-shot episode that carries
        one generated variant per support image (MetaIRNet: the fused image and its weight map). Default: none."""
        return []

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def parameters(self) -> list[torch.nn.Parameter]:
        """Every trained parameter (gradients are averaged over workers through ``sync``)."""

    def buffers(self) -> list[torch.Tensor]:
        """Running statistics (batch norm) the harness averages across workers after each step."""
        return []
