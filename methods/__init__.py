"""Method registry (timm-style): ``@register`` a class, ``get(name)`` it back."""
from __future__ import annotations

from methods.base import Diagnostics, Episode, GradSync, Method, Sampler, Task, no_sync

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> type[Method]:
    """Look a method up; KeyError lists what exists."""
    if name not in _REGISTRY:
        raise KeyError(name)
    return _REGISTRY[name]


from methods import figr  # noqa: E402,F401  (registers itself)
from methods import metairnet, protonet  # noqa: E402,F401  (few-shot classifiers: FewShotClassifier)
from methods import mtgan, transfer  # noqa: E402,F401
from methods import mfh  # noqa: E402,F401  (registers itself)

__all__ = ["Diagnostics", "Episode", "GradSync", "Method", "Sampler", "Task", "available", "get", "no_sync", "register"]
