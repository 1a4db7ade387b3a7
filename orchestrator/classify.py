"""Few-shot classification in the harness: episodes with generated variants, the Ray Train loop, accuracy ± CI.

Classifiers (``methods.base.FewShotClassifier``: ProtoNet, MetaIRNet) run through the same pieces
as generators: ``train`` resolves the config, checks the data, opens an MLflow run and calls
``orchestrator.train.fit`` (a ``TorchTrainer``); its worker loop hands classifier methods to
``classifier_loop`` here. Workers draw N-way K-shot Q-query episodes from the base classes
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

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator.errors import UserError


def is_classifier(method: str | type) -> bool:
    """Whether a method key (or class) is a few-shot classifier rather than a generator."""
    import methods
    from methods.base import FewShotClassifier

    cls = method
    if isinstance(method, str):
        try:
            cls = methods.get(method)
        except KeyError:
            return False
    return isinstance(cls, type) and issubclass(cls, FewShotClassifier)


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
        from orchestrator.pregenerate import read_store

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
        if hasattr(model, "fuse"):
            model.net.eval()
            with torch.no_grad():
                _, _, fused, w = model.fuse(replace(ep, generated=ep.generated[:, :1]))
            rows += [fused.cpu().clamp(-1, 1), (w.cpu() * 2 - 1).clamp(-1, 1).expand_as(fused)]
    rows.append(ep.query[:, 0])
    return torch.cat(rows), int(cfg["n_way"])


def evaluate_state(method: str, cfg: dict[str, Any], ds, split, state: dict, *, seed: int,
                   store: GeneratedStore | None = None, classes: list[int] | None = None):
    """The classification protocol on the novel classes (``test_episodes`` episodes) as an ``EvalResult``."""
    from orchestrator.evaluation import EvalResult
    from orchestrator.pipeline import log
    from orchestrator.train import build_method

    model = build_method(method, cfg, ds.image_shape, num_classes=ds.num_classes)
    model.load_state_dict(state)
    if store is None:
        store = load_store_for(cfg, ds, split, model)
    classes = list(split.novel) if classes is None else classes
    t0 = time.perf_counter()
    metrics = evaluate_episodes(model, ds, classes, cfg, store, n_episodes=int(cfg["test_episodes"]), seed=seed)
    log(f"{method}: {int(cfg['n_way'])}-way {int(cfg['shots'])}-shot accuracy {100 * metrics['accuracy']:.2f} "
        f"± {100 * metrics['accuracy_ci95']:.2f}% over {int(metrics['episodes'])} episodes of {len(classes)} novel "
        f"classes ({time.perf_counter() - t0:.1f}s)")
    grid, nrow = episode_figure(model, ds, classes, cfg, store, seed)
    return EvalResult(metrics=metrics, grid=grid, grid_nrow=nrow, feature_kind="accuracy",
                      feature_description=f"generated images: {store.source if store else 'none'}")


# --------------------------------------------------------------------- the Ray Train loop -----

def _average_buffers(buffers: list[torch.Tensor]) -> None:
    """Mean of the batch-norm running statistics over workers, so every worker holds the same model."""
    import torch.distributed as dist

    from orchestrator.distributed import world

    _, size = world()
    if size == 1 or not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= size
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


def classifier_loop(method, loop: dict[str, Any], ds, split, store: Any, device: torch.device) -> None:
    """``train_loop_per_worker`` for a ``FewShotClassifier`` (called from ``orchestrator.train``).

    ``store``: the ``GeneratedStore`` the driver passed (in ``fit``'s validation-aid slot); anything
    else (a resumed run passes the generator path's features) makes the worker load it from the config.
    """
    import ray.train
    import torch.distributed as dist

    from orchestrator import tracking
    from orchestrator.data import TaskSampler
    from orchestrator.distributed import any_true, broadcast_params, grad_sync, world
    from orchestrator.train import load_checkpoint, save_checkpoint

    cfg = loop["config"]
    rank, size = world()
    if not isinstance(store, GeneratedStore):
        store = load_store_for(cfg, ds, split, method)
    step, elapsed = 0, 0.0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            saved = load_checkpoint(Path(d), device)
        method.load_state_dict(saved["state"])
        step, elapsed = int(saved["step"]), float(saved["elapsed_s"])
        if rank == 0:
            print(f"resuming from checkpoint at step {step}", flush=True)
    broadcast_params(method.parameters() + method.buffers())
    sync = grad_sync()

    b, steps = int(cfg["tasks_per_worker"]), int(cfg["steps"])
    n_way, shots, queries, n_aug = int(cfg["n_way"]), int(cfg["shots"]), int(cfg["queries"]), int(cfg["n_aug"])
    train_store = store if method.wants_generated(training=True) else None
    budget_s = 60.0 * float(cfg["budget_minutes"])
    start = time.perf_counter() - elapsed
    sampler = TaskSampler(ds, split.base, int(cfg["seed"]))
    window: dict[str, list[float]] = {}
    window_start, window_steps = time.perf_counter(), 0
    uri, run_id = loop["tracking_uri"], loop["run_id"]

    while True:
        method.schedule(step, steps)
        episodes = [with_generated(sampler.episode(step, i, n_way, shots, queries), train_store, n_aug)
                    for i in range(rank * b, rank * b + b)]
        losses = method.meta_train_step(episodes, sync)
        _average_buffers(method.buffers())
        step += 1
        window_steps += 1
        for k, v in losses.items():
            window.setdefault(k, []).append(float(v))
        elapsed = time.perf_counter() - start
        stop = any_true((steps > 0 and step >= steps) or (budget_s > 0 and elapsed >= budget_s), device)
        if rank == 0:
            tracking.log_metrics(uri, run_id, losses, step)
        if rank == 0 and (step % int(cfg["log_every"]) == 0 or stop):
            rate = window_steps * b * size / max(time.perf_counter() - window_start, 1e-9)
            means = {k: sum(v) / len(v) for k, v in window.items()}
            tracking.log_metrics(uri, run_id, {"episodes_per_s": rate}, step)
            total = f"/{steps}" if steps else f" ({elapsed / 60:.1f}/{budget_s / 60:.1f} min)"
            print(f"step {step}{total}  {rate:.2f} episodes/s  " + " ".join(f"{k}={v:.3g}" for k, v in means.items()),
                  flush=True)
            window, window_start, window_steps = {}, time.perf_counter(), 0

        if step % int(cfg["eval_every"]) == 0 or stop:
            report: dict[str, Any] = {"step": step, **losses}
            ckpt = None
            if rank == 0:
                val = evaluate_episodes(method, ds, split.val, cfg, store, n_episodes=int(cfg["val_episodes"]),
                                        seed=int(cfg["eval_seed"]))
                val = {"val_accuracy": val["accuracy"], "val_accuracy_ci95": val["accuracy_ci95"]}
                report.update(val)
                tracking.log_metrics(uri, run_id, val, step)
                print(f"step {step}: val_accuracy={val['val_accuracy']:.4f} ± {val['val_accuracy_ci95']:.4f}", flush=True)
                tmpdir = tempfile.mkdtemp(prefix="fsig-ckpt-")
                save_checkpoint(method, step, time.perf_counter() - start, Path(tmpdir))
                ckpt = ray.train.Checkpoint.from_directory(tmpdir)
            if size > 1:
                box = [report]
                dist.broadcast_object_list(box, src=0)
                report = box[0]
            ray.train.report(report, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_{step:07d}")
        if stop:
            break


# ------------------------------------------------------------------------------ the driver -----

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


def run_train(method: str, overrides: dict[str, Any], sets: list[str], *, workers: int, cpus_per_worker: float,
              gpus_per_worker: float, uri: str, experiment: str, address: str | None,
              max_failures: int) -> dict[str, Any]:
    """``train`` for a classifier: validate, record, fit under Ray Train, evaluate the val-selected checkpoint."""
    import ray

    from orchestrator import config as config_mod
    from orchestrator import tracking
    from orchestrator.pipeline import ensure_ray, log, log_evaluation, prepare_data
    from orchestrator.train import (best_checkpoint, build_method, default_storage, fit, load_checkpoint,
                                    method_class, new_run_name)

    if workers < 1:
        raise UserError(f"--workers {workers}: need at least 1 worker")
    cls = method_class(method)
    cfg = config_mod.resolve(cls.default_config, overrides, sets, cls.harness_defaults)
    if int(cfg["steps"]) <= 0 and float(cfg["budget_minutes"]) <= 0:
        raise UserError("no budget: pass --steps N or --budget-minutes M")
    ds, split = prepare_data(cfg)
    check_episodes(cfg, ds, split)
    try:
        probe = build_method(method, cfg, ds.image_shape, num_classes=ds.num_classes)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise UserError(f"{method}: {err}") from None
    store = load_store_for(cfg, ds, split, probe)
    del probe
    log(f"{cfg['dataset']}: {ds.num_classes} classes, split base/val/novel = {len(split.base)}/{len(split.val)}/"
        f"{len(split.novel)}; generated images: {store.source + f' ({store.variants} variants each)' if store else 'none'}")
    started = ensure_ray(address)
    name, storage = new_run_name(method), default_storage()
    run_id = tracking.start_run(uri, experiment, name, cfg, {
        "method": method, "dataset": cfg["dataset"], "split_seed": str(split.seed), "seed": str(cfg["seed"]),
        "ray_run_name": name, "ray_storage_path": str(storage), "workers": str(workers), "task": "classification",
        "generated_source": store.source if store else "none", "backbone": str(cfg["backbone"])})
    tracking.log_dict(uri, run_id, split.to_dict(), "split.json")
    tracking.log_dict(uri, run_id, {"method": method, "config": cfg}, "config.json")
    log(f"MLflow run {run_id} in {uri}; Ray Train run {name} under {storage}")
    try:
        result = fit(method, cfg, ds, split, store, run_id=run_id, tracking_uri=uri, workers=workers,
                     cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker, storage_path=storage,
                     name=name, max_failures=max_failures)
        checkpoint, chosen = best_checkpoint(result, cfg["select_metric"])
        with checkpoint.as_directory() as d:
            saved = load_checkpoint(Path(d))
        step = int(saved["step"])
        select = cfg["select_metric"]
        log(f"selected the step-{step} checkpoint "
            f"({f'{select}={chosen[select]:.4g} on validation classes' if select in chosen else 'the latest'})")
        evaluation = evaluate_state(method, cfg, ds, split, saved["state"], seed=int(cfg["eval_seed"]), store=store)
        log_evaluation(uri, run_id, evaluation, step, "novel_episode.png")
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"state": saved["state"], "step": step, "elapsed_s": saved["elapsed_s"]}, Path(tmp) / "model.pt")
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
            **{k: float(v) for k, v in evaluation.metrics.items()}}
