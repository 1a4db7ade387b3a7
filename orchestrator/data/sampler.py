"""Generation tasks and N-way K-shot Q-query episodes, each a pure function of (seed, step, index).

Why no sampler state: under data-parallel training, worker r of W draws task indices
r*b .. r*b+b-1 at each step, and must get exactly the tasks a single worker drawing 0 .. W*b-1
would get, whatever order or process they run in, and after a restart. So every call builds its
own ``np.random.default_rng([seed, step, index])`` and nothing carries over between calls.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from methods.base import Episode, Task
from orchestrator.data.datasets import ClassDataset
from orchestrator.errors import UserError

_SEED_LIMIT = 2**31


# FID (and KID) estimate a covariance per class from the real images left after the shots: with
# fewer than two it is undefined, and pytorch-fid fails deep inside a Ray worker after the run exists.
MIN_REAL_FOR_METRICS = 2


def min_eval_images(shots: int) -> int:
    """Images a val/novel class needs for evaluation (ours): ``shots`` + 2 real images left for FID.

    Whether there are more samples than feature dimensions (a non-singular covariance) is the
    metric module's concern; this only guarantees FID can be computed at all.

    Raises:
        UserError: ``shots`` below 1.
    """
    shots = int(shots)
    if shots < 1:
        raise UserError(f"shots must be at least 1, got {shots}: pass a positive number of shots")
    return shots + MIN_REAL_FOR_METRICS


def check_class_sizes(ds: ClassDataset, classes: Sequence[int], need: int, what: str) -> None:
    """Fail early, naming the first class with fewer than ``need`` images (and how many more are short).

    Raises:
        UserError: one line naming the class, its image count, ``need`` and the fix.
    """
    short = [int(c) for c in classes if len(ds.class_indices(int(c))) < need]
    if short:
        c = short[0]
        have = len(ds.class_indices(c))
        more = f" (and {len(short) - 1} more class{'es' if len(short) > 2 else ''})" if len(short) > 1 else ""
        raise UserError(f"class {ds.class_names[c]!r} of {ds.name} has {have} images but {what} needs {need}{more}: "
                        f"ask for fewer shots/queries, add images to that class, or drop it from the dataset")


def _rng(seed: int, step: int, index: int) -> np.random.Generator:
    # SeedSequence wants non-negative entries; the modulus keeps any int usable and distinct
    return np.random.default_rng([int(seed) % 2**64, int(step) % 2**64, int(index) % 2**64])


class TaskSampler:
    """Draws from ``classes`` of ``ds`` (e.g. a split's base classes), deterministically."""

    def __init__(self, ds: ClassDataset, classes: Sequence[int], seed: int):
        self.ds = ds
        self.classes = [int(c) for c in classes]
        self.seed = int(seed)
        if not self.classes:
            raise UserError(f"no classes to sample from in {ds.name}: check the split (its part is empty)")
        bad = [c for c in self.classes if not 0 <= c < ds.num_classes]
        if bad:
            raise UserError(f"class indices {bad[:5]} are not in {ds.name} ({ds.num_classes} classes): "
                            f"the split was made for another dataset; delete it and draw it again")
        self._min_size = min(len(ds.class_indices(c)) for c in self.classes)

    def _need(self, n: int, what: str) -> None:
        if n < 1:
            raise UserError(f"{what} must ask for at least 1 image, got {n}: pass a positive count")
        if n > self._min_size:
            check_class_sizes(self.ds, self.classes, n, what)

    def task(self, step: int, index: int, n: int) -> Task:
        """``n`` distinct images of one class drawn by (seed, step, index)."""
        self._need(n, f"a task of {n} images")
        rng = _rng(self.seed, step, index)
        task_seed = int(rng.integers(_SEED_LIMIT))  # first draw: the same whatever n or the classes
        c = self.classes[int(rng.integers(len(self.classes)))]
        idx = rng.choice(self.ds.class_indices(c), size=n, replace=False)
        return Task(images=self.ds.get(idx), label=c, seed=task_seed)

    def tasks(self, step: int, indices: Iterable[int], n: int) -> list[Task]:
        """Tasks for several indices; a worker passes its own slice of the global indices."""
        return [self.task(step, i, n) for i in indices]

    def episode(self, step: int, index: int, n_way: int, k_shot: int, q_query: int) -> Episode:
        """``n_way`` distinct classes, each with disjoint ``k_shot`` support and ``q_query`` query images."""
        if n_way < 1 or k_shot < 1 or q_query < 0:
            raise UserError(f"episode needs n_way >= 1, k_shot >= 1, q_query >= 0 (got {n_way}, {k_shot}, {q_query}): fix the counts")
        if n_way > len(self.classes):
            raise UserError(f"{n_way}-way episodes need {n_way} classes but only {len(self.classes)} are available: "
                            f"ask for fewer ways or hold out more classes")
        self._need(k_shot + q_query, f"a {k_shot}-shot {q_query}-query episode")
        rng = _rng(self.seed, step, index)
        episode_seed = int(rng.integers(_SEED_LIMIT))
        picked = [self.classes[i] for i in rng.choice(len(self.classes), size=n_way, replace=False)]
        support, query = [], []
        for c in picked:
            idx = rng.choice(self.ds.class_indices(c), size=k_shot + q_query, replace=False)
            support.append(idx[:k_shot])
            query.append(idx[k_shot:])
        shape = self.ds.image_shape
        s = self.ds.get(np.concatenate(support)).reshape(n_way, k_shot, *shape)
        q = self.ds.get(np.concatenate(query)).reshape(n_way, q_query, *shape)
        return Episode(support=s, query=q, classes=picked, seed=episode_seed, support_ids=np.stack(support))
