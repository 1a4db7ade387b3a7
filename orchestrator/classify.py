"""Few-shot classification in the harness: episodes with generated variants, the Ray Train loop, accuracy ± CI.

Classifiers (``methods.base.FewShotClassifier``: ProtoNet, MetaIRNet) run through the same run
lifecycle and Ray Train loop as generators (``orchestrator.lifecycle``, ``orchestrator.loop``);
``orchestrator.kinds.ClassifierKind`` calls the pieces here. Workers draw N-way K-shot Q-query episodes from the base classes
(worker r takes episode indices r·b..r·b+b−1 of a step, so W workers see what one worker with W·b
episodes sees), gradients are averaged by the harness's ``sync`` and batch-norm statistics after
each step; rank 0 scores ``val_episodes`` episodes of the validation classes, and the checkpoint
with the best ``val_accuracy`` is evaluated on ``test_episodes`` episodes of the novel classes:
``accuracy`` (mean over episodes) and ``accuracy_ci95`` = 1.96·std/√episodes (population std).

Generated images come from a Parquet store (``--set generated=DIR``) written by ``pregenerate``,
either by FinetuneGAN's BigGAN actors or from a trained generator run (FIGR, MFH, ...) through the
method interface (``pregenerate --from-run RUN_ID``). Each support image gets ``n_aug`` of its
stored variants, picked by the episode's seed (the paper: one of 10 at random per episode).
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator.errors import UserError


def mean_ci95(accuracies: list[float] | np.ndarray) -> tuple[float, float]:
    """Mean and the 95% interval half-width 1.96·std/√n over episodes (population std, ddof 0)."""
    a = np.asarray(accuracies, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no episodes to average")
    return float(a.mean()), float(1.96 * a.std() / np.sqrt(a.size))


# ---------------------------------------------------------------------- generated variants ----

class GeneratedStore:
    """Variants of dataset images, decoded once to the classifier's image shape (uint8, compact)."""

    def __init__(self, ids: np.ndarray, images: torch.Tensor, source: str):
        self.row = {int(i): r for r, i in enumerate(ids)}
        self.images = images  # uint8 [n, V, C, H, W]
        self.source = source

    @property
    def variants(self) -> int:
        return int(self.images.shape[1])

    def missing(self, ids: list[int] | np.ndarray) -> list[int]:
        return [int(i) for i in ids if int(i) not in self.row]

    def draw(self, support_ids: np.ndarray, n_aug: int, seed: int) -> torch.Tensor:
        """[N, K, n_aug, C, H, W] in [-1, 1]: distinct variants of each support image chosen by ``seed``."""
        if n_aug > self.variants:
            raise UserError(f"n_aug {n_aug} but the store holds {self.variants} variants per image: lower n_aug")
        rng = np.random.default_rng([int(seed) % 2**63, 0xA06])
        ids = np.asarray(support_ids)
        out = torch.empty(*ids.shape, n_aug, *self.images.shape[2:], dtype=torch.uint8)
        for pos in np.ndindex(*ids.shape):
            picks = rng.choice(self.variants, size=n_aug, replace=False)
            out[pos] = self.images[self.row[int(ids[pos])], torch.as_tensor(picks)]
        return out.float().div_(127.5).sub_(1.0)

    @classmethod
    def load(cls, path: str | Path, image_shape: tuple[int, int, int], wanted: set[int] | None = None) -> "GeneratedStore":
        """Read a ``pregenerate`` store; every image keeps the variant count common to all (the minimum).

        Decoding and resizing go through PIL per image (grey: PIL's "L"; bilinear with antialiasing):
        tens of thousands of tiny torch ops were ~40× slower on a busy machine.
        """
        from orchestrator.store import read_store

        table = read_store(Path(path), columns=["image_id", "variant", "png"])
        ids = table.column("image_id").to_numpy()
        var = table.column("variant").to_numpy()
        pngs = table.column("png")
        by_image: dict[int, list[tuple[int, int]]] = {}
        for r, (i, v) in enumerate(zip(ids.tolist(), var.tolist())):
            if wanted is None or i in wanted:
                by_image.setdefault(i, []).append((v, r))
        if not by_image:
            raise UserError(f"{path} holds no variants of the images this run needs: pregenerate them first")
        n_var = min(len(v) for v in by_image.values())
        c, h, w = image_shape
        keys = sorted(by_image)
        images = np.empty((len(keys), n_var, h, w, c), dtype=np.uint8)
        for k, i in enumerate(keys):
            for j, (_, r) in enumerate(sorted(by_image[i])[:n_var]):
                images[k, j] = _decode_to(pngs[r].as_py(), c, h, w)
        return cls(np.asarray(keys), torch.from_numpy(images).permute(0, 1, 4, 2, 3).contiguous(), str(path))


def _decode_to(data: bytes, channels: int, h: int, w: int) -> np.ndarray:
    """PNG bytes -> uint8 [h, w, channels]."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        if im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[..., None] if channels == 1 else arr


def needed_images(ds, split, method) -> list[int]:
    """Dataset indices whose variants episodes may ask for (base classes only if training uses them)."""
    parts = [split.val, split.novel] + ([split.base] if method.wants_generated(training=True) else [])
    return sorted(int(i) for part in parts for c in part for i in ds.class_indices(int(c)))


def load_store_for(cfg: dict[str, Any], ds, split, method) -> GeneratedStore | None:
    """The store a classifier run needs (None if it uses no generated images), every needed image present."""
    if not method.wants_generated(training=False):
        return None
    if not cfg.get("generated"):
        raise UserError(f"{method.name} with generated images needs a store: pass --set generated=DIR, a folder written "
                        f"by python -m orchestrator pregenerate (--biggan PATH or --from-run RUN_ID)")
    need = needed_images(ds, split, method)
    store = GeneratedStore.load(cfg["generated"], ds.image_shape, set(need))
    missing = store.missing(need)
    if missing:
        raise UserError(f"{len(missing)} of the {len(need)} images this run may draw as support have no variants in "
                        f"{cfg['generated']} (e.g. dataset index {missing[0]}): pregenerate with --classes "
                        f"{'all' if method.wants_generated(training=True) else 'val,novel'} and the same dataset, "
                        f"image size and split seed")
    return store


def with_generated(episode, store: GeneratedStore | None, n_aug: int):
    """The episode carrying its support images' variants (unchanged without a store)."""
    if store is None:
        return episode
    return replace(episode, generated=store.draw(episode.support_ids, n_aug, episode.seed))


# ------------------------------------------------------------------------------ evaluation ----

def evaluate_episodes(model, ds, classes: list[int], cfg: dict[str, Any], store: GeneratedStore | None, *,
                      n_episodes: int, seed: int) -> dict[str, float]:
    """Mean accuracy ± 95% interval over ``n_episodes`` seeded N-way K-shot Q-query episodes of ``classes``."""
    from orchestrator.data import TaskSampler

    sampler = TaskSampler(ds, classes, seed)
    n_way, shots, queries = int(cfg["n_way"]), int(cfg["shots"]), int(cfg["queries"])
    use = store if model.wants_generated(training=False) else None
    accs = []
    for i in range(int(n_episodes)):
        ep = with_generated(sampler.episode(0, i, n_way, shots, queries), use, int(cfg["n_aug"]))
        pred = model.logits(ep).argmax(1).cpu()
        target = torch.arange(n_way).repeat_interleave(queries)
        accs.append(float((pred == target).float().mean()))
    mean, ci = mean_ci95(accs)
    return {"accuracy": mean, "accuracy_ci95": ci, "episodes": float(len(accs))}


def episode_figure(model, ds, classes: list[int], cfg: dict[str, Any], store: GeneratedStore | None,
                   seed: int) -> tuple[torch.Tensor, int]:
    """One evaluation episode as a grid, a column per class: support, and with generated images their
    variant, (MetaIRNet) the fused image and its 3×3 weight map (w in [0, 1] shown black to white)."""
    from orchestrator.data import TaskSampler

    ep = TaskSampler(ds, classes, seed).episode(0, 0, int(cfg["n_way"]), 1, 1)
    ep = with_generated(ep, store if model.wants_generated(training=False) else None, 1)
    rows = [ep.support[:, 0]]
    if ep.generated is not None:
        rows.append(ep.generated[:, 0, 0])
        rows += list(model.episode_figure_rows(replace(ep, generated=ep.generated[:, :1])))
    rows.append(ep.query[:, 0])
    return torch.cat(rows), int(cfg["n_way"])


def evaluate_state(model, cfg: dict[str, Any], ds, split, *, seed: int, store: GeneratedStore | None = None,
                   classes: list[int] | None = None):
    """The classification protocol on the novel classes (``test_episodes`` episodes) as an ``EvalResult``.

    ``model``: a ``FewShotClassifier`` holding the selected weights; accuracy in [0, 1] with its 95% half-width.
    """
    import sys

    from orchestrator.evaluation import EvalResult

    if store is None:
        store = load_store_for(cfg, ds, split, model)
    classes = list(split.novel) if classes is None else classes
    t0 = time.perf_counter()
    metrics = evaluate_episodes(model, ds, classes, cfg, store, n_episodes=int(cfg["test_episodes"]), seed=seed)
    print(f"{model.name}: {int(cfg['n_way'])}-way {int(cfg['shots'])}-shot accuracy {100 * metrics['accuracy']:.2f} "
          f"± {100 * metrics['accuracy_ci95']:.2f}% over {int(metrics['episodes'])} episodes of {len(classes)} novel "
          f"classes ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
    grid, nrow = episode_figure(model, ds, classes, cfg, store, seed)
    return EvalResult(metrics=metrics, grid=grid, grid_nrow=nrow, feature_kind="accuracy",
                      feature_description=f"generated images: {store.source if store else 'none'}")


# ------------------------------------------------------------------------------ up-front checks ----

def check_episodes(cfg: dict[str, Any], ds, split) -> None:
    """Every part has enough classes for N-way and every class enough images for K shots + Q queries."""
    from orchestrator.data import check_class_sizes

    n_way, need = int(cfg["n_way"]), int(cfg["shots"]) + int(cfg["queries"])
    for part in ("base", "val", "novel"):
        classes = getattr(split, part)
        if len(classes) < n_way:
            raise UserError(f"{n_way}-way episodes need {n_way} {part} classes but the split of {ds.name} has "
                            f"{len(classes)}: pass --set n_way=N with fewer ways, or --set n_val/n_novel for more classes")
        check_class_sizes(ds, classes, need, f"{cfg['shots']}-shot {cfg['queries']}-query episodes")
