"""The commands' bodies: train, evaluate, generate. Validate first, record second.

Every input is checked (method, dataset, data root, class sizes, --set keys) before a run
is created in MLflow or Ray is started, so bad input leaves the store exactly as it was.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from orchestrator import config as config_mod
from orchestrator import tracking
from orchestrator.errors import UserError
from orchestrator.train import (best_checkpoint, build_method, default_storage, fit, load_checkpoint,
                                method_class, new_run_name, task_images)


def cache_dir() -> Path:
    return Path(os.environ.get("FSIG_CACHE", Path.home() / ".cache" / "fsig"))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare_data(cfg: dict[str, Any], split_dict: dict | None = None):
    """Load the dataset and its split (the saved one when given) and check class sizes."""
    from orchestrator.data import Split, check_class_sizes, load_dataset, make_split

    ds = load_dataset(cfg["dataset"], cfg["data_root"] or None, image_size=int(cfg["image_size"]),
                      channels=int(cfg["channels"]))
    if split_dict is not None:
        split = Split.from_dict(split_dict)
    else:
        split = make_split(ds, seed=int(cfg["split_seed"]), n_val=int(cfg["n_val"]) or None,
                           n_novel=int(cfg["n_novel"]) or None)
    shots = int(cfg["shots"])
    check_class_sizes(ds, split.base, task_images(cfg), "meta-training tasks (shots + query_shots)")
    check_class_sizes(ds, split.val + split.novel, shots + 1, "evaluation (shots + at least one real image)")
    return ds, split


def features_for(ds, split, inception_weights: str | None, domain_only: bool = False):
    from orchestrator.evaluation import get_features

    weights = None if domain_only else (Path(inception_weights) if inception_weights else None)
    if weights is not None and not weights.is_file():
        raise UserError(f"--inception-weights {weights}: no such file; pass the path of "
                        f"pt_inception-2015-12-05-6726825d.pth or leave it out to use base-class features")
    return get_features(ds, split, cache_dir() / "features", "cpu", inception_weights=weights)


def evaluate_state(method: str, cfg: dict[str, Any], ds, split, state: dict, features, *, seed: int,
                   n_generate: int):
    """The protocol on novel classes: adapted, unadapted, scratch-adapted and shots controls."""
    from orchestrator.classify import evaluate_state as evaluate_classifier, is_classifier
    from orchestrator.evaluation import evaluate_generator

    if is_classifier(method):  # accuracy ± CI on novel-class episodes (sweep trials, evaluate RUN_ID)
        return evaluate_classifier(method, cfg, ds, split, state, seed=seed)

    model = build_method(method, cfg, ds.image_shape, num_classes=ds.num_classes)
    model.load_state_dict(state)
    log(f"evaluating on {len(split.novel)} novel classes with {features.kind} features (seed {seed})")
    return evaluate_generator(model, lambda: build_method(method, cfg, ds.image_shape, num_classes=ds.num_classes), ds, split.novel,
                              features, shots=int(cfg["shots"]), n_generate=n_generate, seed=seed,
                              controls=True, progress=True)


def log_evaluation(uri: str, run_id: str, result, step: int, name: str) -> None:
    from orchestrator.evaluation import save_result_images

    tracking.log_metrics(uri, run_id, result.metrics, step)
    with tempfile.TemporaryDirectory() as tmp:
        for path in save_result_images(result, tmp, name, suffix=f"_{Path(name).stem}"):
            tracking.log_file(uri, run_id, path, "samples")


def check_builds(method: str, cfg: dict[str, Any], ds) -> None:
    """Build the method once in the driver, so a value it refuses (its ValueError, e.g. ``--set
    addressing=kmean``) is a one-line user error before anything is recorded, not a worker traceback."""
    try:
        build_method(method, cfg, ds.image_shape, num_classes=ds.num_classes)
    except ValueError as err:
        raise UserError(f"{err} (fix the --set value)") from None


def ensure_ray(address: str | None) -> bool:
    """Connect to ``address`` or start a local Ray; True if we started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    try:
        # The dashboard hosts the State API Ray Train polls; without it Train logs a warning a second.
        ray.init(address=address or None, log_to_driver=True)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise UserError(f"cannot connect to Ray at {address!r} ({str(err).splitlines()[0]}): "
                        f"pass the head node's address (ray start --head prints it) or omit --address") from None
    return True


def run_train(method: str, overrides: dict[str, Any], sets: list[str], *, workers: int, cpus_per_worker: float,
              gpus_per_worker: float, uri: str, experiment: str, address: str | None,
              inception_weights: str | None, max_failures: int, resume: str | None) -> dict[str, Any]:
    if workers < 1:
        raise UserError(f"--workers {workers}: need at least 1 worker")
    if resume:
        return _resume(resume, overrides, sets, workers=workers, cpus_per_worker=cpus_per_worker,
                       gpus_per_worker=gpus_per_worker, uri=uri, address=address,
                       inception_weights=inception_weights, max_failures=max_failures)
    cls = method_class(method)
    cfg = config_mod.resolve(cls.default_config, overrides, sets, cls.harness_defaults)
    if int(cfg["steps"]) <= 0 and float(cfg["budget_minutes"]) <= 0:
        raise UserError("no budget: pass --steps N or --budget-minutes M")
    ds, split = prepare_data(cfg)
    check_builds(method, cfg, ds)
    log(f"{cfg['dataset']}: {ds.num_classes} classes, {len(ds.labels)} images {ds.image_shape}; split "
        f"base/val/novel = {len(split.base)}/{len(split.val)}/{len(split.novel)} classes (seed {split.seed})")
    val_features = features_for(ds, split, None, domain_only=True)
    features = features_for(ds, split, inception_weights) if inception_weights else val_features
    started = ensure_ray(address)
    name = new_run_name(method)
    storage = default_storage()
    run_id = tracking.start_run(uri, experiment, name, cfg, {
        "method": method, "dataset": cfg["dataset"], "split_seed": str(split.seed), "seed": str(cfg["seed"]),
        "ray_run_name": name, "ray_storage_path": str(storage), "workers": str(workers),
        "features": features.kind})
    tracking.log_dict(uri, run_id, split.to_dict(), "split.json")
    tracking.log_dict(uri, run_id, {"method": method, "config": cfg}, "config.json")
    log(f"MLflow run {run_id} in {uri}; Ray Train run {name} under {storage}")
    return _fit_and_evaluate(method, cfg, ds, split, val_features, features, run_id=run_id, uri=uri,
                             name=name, storage=storage, workers=workers, cpus_per_worker=cpus_per_worker,
                             gpus_per_worker=gpus_per_worker, max_failures=max_failures, started=started)


def _resume(run_id: str, overrides: dict[str, Any], sets: list[str], *, uri: str, address: str | None,
            inception_weights: str | None, **scale) -> dict[str, Any]:
    run = tracking.get_run(uri, run_id)
    saved = tracking.load_json_artifact(uri, run_id, "config.json")
    split_dict = tracking.load_json_artifact(uri, run_id, "split.json")
    method = saved["method"]
    # Only the budget may change on resume; everything else is the run's own config.
    budget = {k: v for k, v in overrides.items() if k in ("steps", "budget_minutes") and v is not None}
    cfg = config_mod.apply_overrides({**saved["config"], **budget}, sets)
    ds, split = prepare_data(cfg, split_dict)
    val_features = features_for(ds, split, None, domain_only=True)
    features = features_for(ds, split, inception_weights) if inception_weights else val_features
    started = ensure_ray(address)
    tracking.client(uri).update_run(run_id, status="RUNNING")
    name, storage = run.data.tags["ray_run_name"], run.data.tags["ray_storage_path"]
    log(f"resuming MLflow run {run_id} (Ray Train run {name})")
    return _fit_and_evaluate(method, cfg, ds, split, val_features, features, run_id=run_id, uri=uri,
                             name=name, storage=storage, started=started, **scale)


def _fit_and_evaluate(method, cfg, ds, split, val_features, features, *, run_id, uri, name, storage, workers,
                      cpus_per_worker, gpus_per_worker, max_failures, started) -> dict[str, Any]:
    import ray

    try:
        result = fit(method, cfg, ds, split, val_features, run_id=run_id, tracking_uri=uri, workers=workers,
                     cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker, storage_path=storage,
                     name=name, max_failures=max_failures)
        checkpoint, chosen = best_checkpoint(result, cfg["select_metric"])
        with checkpoint.as_directory() as d:
            saved = load_checkpoint(Path(d))
        select = cfg["select_metric"]
        why = f"{select}={chosen[select]:.4g} on validation classes" if select in chosen else "the latest"
        log(f"selected the step-{saved['step']} checkpoint ({why})")
        result_eval = evaluate_state(method, cfg, ds, split, saved["state"], features,
                                     seed=int(cfg["eval_seed"]), n_generate=int(cfg["n_generate"]))
        step = int(saved["step"])
        log_evaluation(uri, run_id, result_eval, step, "novel_samples.png")
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"state": saved["state"], "step": step, "elapsed_s": saved["elapsed_s"]},
                       Path(tmp) / "model.pt")
            tracking.log_file(uri, run_id, Path(tmp) / "model.pt", "checkpoint")
        tracking.set_tags(uri, run_id, {"selected_step": str(step)})
        tracking.end_run(uri, run_id, "FINISHED")
    except BaseException:
        tracking.end_run(uri, run_id, "FAILED")
        raise
    finally:
        if started:
            ray.shutdown()
    return {"run_id": run_id, "method": method, "dataset": cfg["dataset"], "selected_step": step,
            **{k: float(v) for k, v in result_eval.metrics.items()}}


def load_run(uri: str, run_id: str):
    """Config, split and selected state of a finished train run."""
    tracking.get_run(uri, run_id)
    saved = tracking.load_json_artifact(uri, run_id, "config.json")
    split_dict = tracking.load_json_artifact(uri, run_id, "split.json")
    state = load_checkpoint(tracking.download(uri, run_id, "checkpoint/model.pt").parent)
    return saved["method"], saved["config"], split_dict, state


def require_generator(method: str, run_id: str, command: str) -> None:
    """Classifier runs (protonet, metairnet) make no images: say so instead of failing inside ``adapt``."""
    from orchestrator.classify import is_classifier

    if is_classifier(method):
        raise UserError(f"run {run_id} is a {method} classifier, which generates no images: give {command} the run "
                        f"id of a generator run (figr, mfh, mtgan, transfer)")


def run_evaluate(run_id: str, *, uri: str, seed: int | None, n_generate: int | None,
                 inception_weights: str | None) -> dict[str, Any]:
    """Re-run the protocol on a train run's novel classes; recorded as a child run of it."""
    method, cfg, split_dict, state = load_run(uri, run_id)
    seed = int(cfg["eval_seed"]) if seed is None else seed
    n_generate = int(cfg["n_generate"]) if n_generate is None else n_generate
    ds, split = prepare_data(cfg, split_dict)
    features = features_for(ds, split, inception_weights)
    result = evaluate_state(method, cfg, ds, split, state["state"], features, seed=seed, n_generate=n_generate)
    parent = tracking.get_run(uri, run_id)
    child = tracking.start_run(uri, tracking.client(uri).get_experiment(parent.info.experiment_id).name,
                               f"evaluate-seed{seed}", {**cfg, "eval_seed": seed, "n_generate": n_generate},
                               {"method": method, "dataset": cfg["dataset"], "evaluates": run_id,
                                "features": features.kind}, parent_run_id=run_id)
    log_evaluation(uri, child, result, int(state["step"]), f"novel_samples_seed{seed}.png")
    tracking.end_run(uri, child)
    return {"run_id": child, "evaluated_run_id": run_id, "eval_seed": seed,
            **{k: float(v) for k, v in result.metrics.items()}}


def load_images(paths: list[str], image_size: int, channels: int) -> torch.Tensor:
    """User images → [k, C, H, W] in [-1, 1], preprocessed like the dataset (resize, grey/RGB)."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import functional as TF

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                im = TF.center_crop(TF.resize(im, image_size), image_size)
                out.append(TF.to_tensor(im) * 2 - 1)
        except FileNotFoundError:
            raise UserError(f"image {p} does not exist: pass paths of existing image files") from None
        except (UnidentifiedImageError, OSError) as err:
            raise UserError(f"image {p} cannot be read ({err.__class__.__name__}): pass a PNG or JPEG file") from None
    return torch.stack(out)


def run_generate(run_id: str, images: list[str], *, uri: str, n: int, out: Path, seed: int,
                 save_images: Path | None, steps: int | None, interpolate: bool = False) -> dict[str, Any]:
    """Adapt on ``images`` and write a grid of ``n`` new images; with ``interpolate``, a one-row strip
    of ``n`` images walking between two memory slots (methods that offer ``interpolate``, e.g. MFH's Fig. 10)."""
    if n < (2 if interpolate else 1):
        raise UserError(f"--n {n}: ask for at least {'2 images (the strip ends)' if interpolate else 'one image'}")
    method, cfg, split_dict, state = load_run(uri, run_id)
    require_generator(method, run_id, "generate")
    if interpolate and not callable(getattr(method_class(method), "interpolate", None)):
        raise UserError(f"--interpolate: method {method} has no memory slots to interpolate between; "
                        f"drop --interpolate (it works with mfh)")
    from orchestrator.evaluation import save_grid

    shots = load_images(images, int(cfg["image_size"]), int(cfg["channels"]))
    model = build_method(method, cfg, tuple(shots.shape[1:]), num_classes=len(split_dict["class_names"]))
    model.load_state_dict(state["state"])
    if interpolate:
        fake = model.interpolate(shots, n, seed=seed).cpu()
    else:
        fake = model.adapt(shots, seed=seed, steps=steps).sample(n, seed=seed).cpu()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_grid(fake, out, nrow=n if interpolate else int(n ** 0.5 + 0.999))
    written = [str(out)]
    if save_images:
        save_images.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(fake):
            path = save_images / f"{i:04d}.png"
            save_grid(img[None], path, nrow=1)
            written.append(str(path))
    log(f"wrote {out}" + (f" and {n} images under {save_images}" if save_images else ""))
    return {"run_id": run_id, "method": method, "n": n, "out": str(out), "files": len(written),
            "interpolate": bool(interpolate)}


def _strict(value: Any) -> Any:
    """NaN and infinities as null: Python's json writes bare NaN, which jq and other strict parsers refuse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def print_json(obj: dict[str, Any]) -> None:
    sys.stdout.flush()
    print(json.dumps(_strict(obj), sort_keys=True, allow_nan=False), flush=True)
