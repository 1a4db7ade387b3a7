"""What differs between kinds of method, behind one small interface the run lifecycle drives.

A *generator* (``methods.base.Method``: FIGR, MFH, MT-GAN, transfer) meta-trains on tasks (n images
of one class), is validated by the generation protocol (FID on validation classes) and evaluated by
it on novel classes. A *few-shot classifier* (``methods.base.FewShotClassifier``: ProtoNet,
MetaIRNet) meta-trains on N-way K-shot Q-query episodes, is validated and evaluated by accuracy
over episodes, and may read generated variants of its support images from a ``pregenerate`` store.
The lifecycle (``orchestrator.lifecycle``) and the Ray Train loop (``orchestrator.loop``) call only
the ``Kind`` methods below, so neither branches on the kind (ours).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import methods
from methods.base import FewShotClassifier, Method
from orchestrator.errors import UserError
from orchestrator.evaluation import registry


# ------------------------------------------------------------------------- methods by name ----

def method_class(name: str) -> type:
    """The registered class of method ``name``; ``UserError`` naming the available ones otherwise."""
    try:
        return methods.get(name)
    except KeyError:
        raise UserError(f"unknown method {name!r}: choose one of {', '.join(methods.available())}") from None


def build_method(name: str, cfg: dict[str, Any], image_shape: tuple[int, int, int],
                 device: torch.device | str = "cpu", num_classes: int = 0, seed: int | None = None):
    """Instantiate a method from the flat run config (only its own keys reach it).

    ``seed`` (default: the run's ``seed``) seeds torch's global RNG first, so the initial weights are a
    function of the run's seeds (``torch.manual_seed``; the methods draw their init from it).
    """
    cls = method_class(name)
    torch.manual_seed(int(cfg.get("seed", 0) if seed is None else seed))
    return cls({k: cfg[k] for k in cls.default_config}, image_shape, device, num_classes)


def task_images(cfg: dict[str, Any]) -> int:
    """Images per generation task: the shots, plus ``queries`` for generators with a query set (MT-GAN)."""
    return int(cfg["shots"]) + int(cfg.get("queries", 0))


def higher_is_better(metric: str) -> bool:
    """Whether a higher value of ``metric`` (``val_`` prefixed or not) is better, from its declaration
    (``evaluation.registry``); ``UserError`` for an undeclared metric or one without a direction (a count, a
    spread), which cannot select a checkpoint."""
    direction = registry.mode(metric)
    if direction is None:
        raise UserError(f"metric {metric!r} has no better direction ({registry.spec(metric).meaning}); "
                        f"select on a metric that has one, e.g. val_fid_domain or val_class_hit")
    return direction == "max"


@dataclass
class Aids:
    """Driver-prepared inputs of one run: ``val`` travels to the workers (validation), ``final`` is used for
    the novel-class evaluation in the driver (features for generators, the generated store for classifiers)."""

    val: Any
    final: Any
    description: str = ""


class Kind:
    """The interface; ``GeneratorKind`` and ``ClassifierKind`` implement it."""

    name: str = ""
    unit: str = ""  # what one batch element is: "tasks" or "episodes"
    figure: str = ""  # file name of the novel-class figure
    val_figures: bool = False  # whether validation writes sample grids into the checkpoint

    def check(self, cfg: dict[str, Any], ds, split, method) -> None:
        """Up-front checks of the data against the config; ``UserError`` on anything a run would trip on."""
        raise NotImplementedError

    def check_new(self, cfg: dict[str, Any], split) -> None:
        """Checks only a new run's config gets (not a resumed or re-evaluated one, recorded as it was)."""

    def aids(self, cfg: dict[str, Any], ds, split, method, inception_weights: str | None = None) -> Aids:
        raise NotImplementedError

    def tags(self, cfg: dict[str, Any], aids: Aids) -> dict[str, str]:
        """Extra MLflow tags of a run of this kind."""
        return {}

    def batch(self, method, sampler, step: int, indices: range, cfg: dict[str, Any], val_aid) -> list:
        """This worker's tasks or episodes of meta-step ``step`` (indices into the step's global batch)."""
        raise NotImplementedError

    def images_per_item(self, cfg: dict[str, Any]) -> int:
        raise NotImplementedError

    def synced(self, method) -> list[torch.Tensor]:
        """Tensors every worker must start from identically (broadcast from rank 0)."""
        return list(method.parameters())

    def after_step(self, method) -> None:
        """Called on every worker after each meta-step."""

    def validate(self, method, ds, split, cfg: dict[str, Any], val_aid, step: int, out_dir: Path | None) -> dict[str, float]:
        """``val_*`` metrics on the validation classes; figures (if any) written into ``out_dir``."""
        raise NotImplementedError

    def untrained_validation(self, method_name: str, cfg: dict[str, Any], ds, split, val_aid,
                             out_dir: Path) -> dict[str, float]:
        """Validation metrics of the untrained control (computed once per run, before training); none by default."""
        return {}

    def evaluate(self, method_name: str, cfg: dict[str, Any], ds, split, state: dict, final_aid, *, seed: int,
                 n_generate: int):
        """The protocol on the novel classes, as an ``orchestrator.evaluation.EvalResult``."""
        raise NotImplementedError


class GeneratorKind(Kind):
    name, unit, figure, val_figures = "generator", "tasks", "novel_samples.png", True

    def check(self, cfg, ds, split, method) -> None:
        from orchestrator.data import check_class_sizes, min_eval_images

        check_class_sizes(ds, split.base, task_images(cfg), "meta-training tasks (shots + queries)")
        check_class_sizes(ds, split.val + split.novel, min_eval_images(int(cfg["shots"])),
                          "evaluation (the shots + at least two real images for FID)")
        lpips_for(cfg)  # a bad --lpips-weights file is refused before the run starts

    def check_new(self, cfg, split) -> None:
        check_val_generate(cfg, len(split.val))

    def aids(self, cfg, ds, split, method, inception_weights=None) -> Aids:
        val = features_for(ds, split, None, domain_only=True)
        final = features_for(ds, split, inception_weights) if inception_weights else val
        return Aids(val, final, final.kind)

    def batch(self, method, sampler, step, indices, cfg, val_aid) -> list:
        return sampler.tasks(step, indices, task_images(cfg))

    def images_per_item(self, cfg) -> int:
        return task_images(cfg)

    def validate(self, method, ds, split, cfg, val_aid, step, out_dir) -> dict[str, float]:
        from orchestrator.evaluation import evaluate_generator, save_result_images

        result = evaluate_generator(method, None, ds, split.val, val_aid, shots=int(cfg["shots"]),
                                    n_generate=int(cfg["val_generate"]), seed=int(cfg["eval_seed"]),
                                    controls=False, progress=False)
        if out_dir is not None:
            save_result_images(result, out_dir, f"val_samples_step{step:06d}.png", suffix=f"_val_step{step:06d}")
            write_val_per_class(result, step, out_dir)
        return {f"val_{k}": float(v) for k, v in result.metrics.items()}

    def untrained_validation(self, method_name, cfg, ds, split, val_aid, out_dir) -> dict[str, float]:
        """The validation protocol on the run's own initialisation (its step-0 weights, adapted the same way):
        the untrained control each evaluation step is compared with; ``val_*_scratch`` metrics."""
        model = build_method(method_name, cfg, ds.image_shape, num_classes=ds.num_classes)
        val = self.validate(model, ds, split, cfg, val_aid, 0, out_dir)
        return {f"{k}_scratch": v for k, v in val.items() if k in ("val_class_hit", "val_fid_domain")}

    def evaluate(self, method_name, cfg, ds, split, state, final_aid, *, seed, n_generate):
        from orchestrator.evaluation import evaluate_generator

        model = build_method(method_name, cfg, ds.image_shape, num_classes=ds.num_classes)
        model.load_state_dict(state)
        log(f"evaluating on {len(split.novel)} novel classes with {final_aid.kind} features (seed {seed})")
        return evaluate_generator(model, lambda: build_method(method_name, cfg, ds.image_shape, num_classes=ds.num_classes,
                                                              seed=seed),
                                  ds, split.novel, final_aid, shots=int(cfg["shots"]), n_generate=n_generate, seed=seed,
                                  controls=True, progress=True, lpips=lpips_for(cfg))


VAL_PER_CLASS = "val_per_class"  # artifact folder of the per-class validation values (one JSON per evaluation step)


def write_val_per_class(result, step: int, out_dir: Path) -> Path:
    """``val_per_class_step<step:07d>.json`` in ``out_dir``: the validation classes and each per-class metric's
    values in their order (``EvalResult.per_class``; NaN written as null), so curves can pair steps over classes."""
    import json
    import math

    path = Path(out_dir) / f"{VAL_PER_CLASS}_step{int(step):07d}.json"
    path.write_text(json.dumps({"step": int(step), "classes": [int(c) for c in result.classes], "per_class": {
        k: [v if math.isfinite(v) else None for v in map(float, vals)] for k, vals in result.per_class.items()}}))
    return path


class ClassifierKind(Kind):
    name, unit, figure, val_figures = "classifier", "episodes", "novel_episode.png", False

    def check(self, cfg, ds, split, method) -> None:
        from orchestrator.classify import check_episodes, load_store_for

        if cfg.get("lpips_weights"):
            raise UserError("--lpips-weights scores generated images, so it applies to generators, not to a few-shot "
                            "classifier; drop --lpips-weights (or --set lpips_weights)")
        check_episodes(cfg, ds, split)
        load_store_for(cfg, ds, split, method)  # every needed generated image present

    def aids(self, cfg, ds, split, method, inception_weights=None) -> Aids:
        from orchestrator.classify import load_store_for

        store = load_store_for(cfg, ds, split, method)
        return Aids(store, store, store.source if store is not None else "none")

    def batch(self, method, sampler, step, indices, cfg, val_aid) -> list:
        from orchestrator.classify import with_generated

        store = val_aid if method.wants_generated(training=True) else None
        return [with_generated(sampler.episode(step, i, int(cfg["n_way"]), int(cfg["shots"]), int(cfg["queries"])),
                               store, int(cfg["n_aug"])) for i in indices]

    def tags(self, cfg, aids) -> dict[str, str]:
        return {"task": "classification", "generated_source": aids.description, "backbone": str(cfg["backbone"])}

    def images_per_item(self, cfg) -> int:
        return int(cfg["n_way"]) * (int(cfg["shots"]) + int(cfg["queries"]))

    def synced(self, method) -> list[torch.Tensor]:
        return list(method.parameters()) + list(method.buffers())

    def after_step(self, method) -> None:
        from orchestrator.distributed import average_tensors

        average_tensors(method.buffers())

    def validate(self, method, ds, split, cfg, val_aid, step, out_dir) -> dict[str, float]:
        from orchestrator.classify import evaluate_episodes

        val = evaluate_episodes(method, ds, split.val, cfg, val_aid, n_episodes=int(cfg["val_episodes"]),
                                seed=int(cfg["eval_seed"]))
        return {"val_accuracy": val["accuracy"], "val_accuracy_ci95": val["accuracy_ci95"]}

    def evaluate(self, method_name, cfg, ds, split, state, final_aid, *, seed, n_generate):
        from orchestrator.classify import evaluate_state

        model = build_method(method_name, cfg, ds.image_shape, num_classes=ds.num_classes)
        model.load_state_dict(state)
        return evaluate_state(model, cfg, ds, split, seed=seed, store=final_aid)


def kind_of(method: str | type) -> Kind:
    """The kind of a method key or class (``UserError`` for an unknown key)."""
    cls = method_class(method) if isinstance(method, str) else method
    if issubclass(cls, FewShotClassifier):
        return ClassifierKind()
    if issubclass(cls, Method):
        return GeneratorKind()
    raise TypeError(f"{cls} is neither a methods.base.Method nor a FewShotClassifier")


def is_classifier(method: str | type) -> bool:
    """Whether a method key (or class) is a few-shot classifier; False for unknown keys."""
    try:
        return isinstance(kind_of(method), ClassifierKind)
    except UserError:
        return False


# ------------------------------------------------------------------------------- features ----

def log(msg: str) -> None:
    """Progress for people, on stderr (stdout carries results and ``--json``)."""
    import sys

    print(msg, file=sys.stderr, flush=True)


def lpips_for(cfg: dict[str, Any]):
    """The LPIPS diversity scorer of ``cfg['lpips_weights']`` (``evaluation.lpips_diversity``), or None when unset.

    Raises UserError on a file that is missing or not a torchvision AlexNet/VGG16/SqueezeNet1.1 state dict."""
    if not cfg.get("lpips_weights"):
        return None
    path = Path(cfg["lpips_weights"])
    stat = path.stat() if path.is_file() else None
    return _lpips_scorer(str(path), stat.st_mtime_ns if stat else None, stat.st_size if stat else None)


@functools.lru_cache(maxsize=2)
def _lpips_scorer(path: str, mtime_ns: int | None, size: int | None):
    """One scorer per weights file and version of it: the up-front check and the evaluation in one process
    share it instead of reading the backbone twice (a changed file is read again)."""
    from orchestrator.evaluation.lpips_diversity import LpipsDiversity

    return LpipsDiversity(path)


def check_val_generate(cfg: dict[str, Any], n_val_classes: int) -> None:
    """Refuse a ``val_generate`` too small for the checkpoint-selection metric to ever be computed.

    Validation always scores in the domain feature space (``GeneratorKind.aids``), of
    ``orchestrator.evaluation.features.DOMAIN_DIM`` dimensions, and FID needs more samples than dimensions
    (``orchestrator.evaluation.metrics.fid``). So with ``select_metric`` ``val_fid_domain`` (pooled over the
    ``n_val_classes`` validation classes) ``val_generate * n_val_classes`` must exceed that dimension, and with
    ``val_fid_domain_per_class`` ``val_generate`` itself must; other selection metrics (``last``, class_hit,
    KID ...) need no more than the 2 images already required. Raises ``UserError`` naming the smallest value
    that works; without this check every validation score is NaN and the selection (or a sweep's "best
    trial") has nothing to choose by.
    """
    from orchestrator.evaluation.features import DOMAIN_DIM

    metric, n = str(cfg["select_metric"]), int(cfg["val_generate"])
    if not metric.startswith("val_fid_domain"):
        return
    per_class = metric.endswith("_per_class")
    pooled = n if per_class else n * max(1, n_val_classes)
    if pooled > DOMAIN_DIM:
        return
    smallest = DOMAIN_DIM + 1 if per_class else DOMAIN_DIM // max(1, n_val_classes) + 1
    where = ("per validation class" if per_class else "over the validation class" if n_val_classes == 1
             else f"over the {n_val_classes} validation classes")
    raise UserError(f"--set val_generate={n}: select_metric {metric} is FID in {DOMAIN_DIM}-d domain features, which "
                    f"needs more than {DOMAIN_DIM} generated images {where} ({pooled} here): pass --set "
                    f"val_generate={smallest} or more (or --set select_metric=last)")


def features_for(ds, split, inception_weights: str | None, domain_only: bool = False):
    """Feature space of the metrics: Inception from a local weights file, else the base-class classifier."""
    from orchestrator.evaluation import get_features
    from orchestrator.settings import cache_dir

    weights = None if domain_only else (Path(inception_weights) if inception_weights else None)
    if weights is not None and not weights.is_file():
        raise UserError(f"--inception-weights {weights}: no such file; pass the path of "
                        f"pt_inception-2015-12-05-6726825d.pth or leave it out to use base-class features")
    return get_features(ds, split, cache_dir() / "features", "cpu", inception_weights=weights)
