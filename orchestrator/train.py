"""Meta-training under Ray Train: the per-worker loop and the driver around ``TorchTrainer``.

Each worker draws its own tasks (task indices ``rank*b .. rank*b+b-1`` of a step, so the
union over W workers is exactly what one worker drawing W·b tasks would see), the method
averages its meta-gradients through the harness's ``sync``, and rank 0 evaluates on the
*validation* classes, logs to MLflow and reports a checkpoint through Ray Train.
"""
from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import torch

import methods
from methods.base import FewShotClassifier, Method
from orchestrator import tracking
from orchestrator.errors import UserError

CHECKPOINT_FILE = "model.pt"


def method_class(name: str) -> type[Method]:
    try:
        return methods.get(name)
    except KeyError:
        raise UserError(f"unknown method {name!r}: choose one of {', '.join(methods.available())}") from None


def build_method(name: str, cfg: dict[str, Any], image_shape: tuple[int, int, int],
                 device: torch.device | str = "cpu", num_classes: int = 0) -> Method:
    """Instantiate a method from the flat run config (only its own keys reach it)."""
    cls = method_class(name)
    return cls({k: cfg[k] for k in cls.default_config}, image_shape, device, num_classes)


def task_images(cfg: dict[str, Any]) -> int:
    """Images per meta-training task: the shots, plus ``query_shots`` for methods with a query set (MT-GAN)."""
    return int(cfg["shots"]) + int(cfg.get("query_shots", 0))


def higher_is_better(metric: str) -> bool:
    return any(k in metric for k in ("class_hit", "accuracy", "inception_score", "mode_score"))


def save_checkpoint(method: Method, step: int, elapsed_s: float, directory: Path) -> Path:
    path = Path(directory) / CHECKPOINT_FILE
    torch.save({"state": method.state_dict(), "step": step, "elapsed_s": elapsed_s}, path)
    return path


def load_checkpoint(directory: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(Path(directory) / CHECKPOINT_FILE, map_location=device, weights_only=False)


def train_loop_per_worker(loop: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (Ray's ``train_loop_per_worker``)."""
    import ray
    import ray.train
    import ray.train.torch

    from orchestrator.data import Split, TaskSampler
    from orchestrator.distributed import any_true, broadcast_params, grad_sync, world
    from orchestrator.evaluation import evaluate_generator

    cfg = loop["config"]
    torch.set_num_threads(max(1, int(loop["cpus_per_worker"])))
    device = ray.train.torch.get_device()
    rank, size = world()
    ds = ray.get(loop["dataset_ref"])
    split = Split.from_dict(loop["split"])
    val_features = ray.get(loop["val_features_ref"])
    method = build_method(loop["method"], cfg, ds.image_shape, device, ds.num_classes)
    if isinstance(method, FewShotClassifier):  # episodes and accuracy instead of tasks and FID
        from orchestrator.classify import classifier_loop

        return classifier_loop(method, loop, ds, split, val_features, device)

    step, elapsed = 0, 0.0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            saved = load_checkpoint(Path(d), device)
        method.load_state_dict(saved["state"])
        step, elapsed = int(saved["step"]), float(saved["elapsed_s"])
        if rank == 0:
            print(f"resuming from checkpoint at step {step}", flush=True)
    broadcast_params(method.parameters())
    sync = grad_sync()

    b, steps = int(cfg["tasks_per_worker"]), int(cfg["steps"])
    budget_s = 60.0 * float(cfg["budget_minutes"])
    start = time.perf_counter() - elapsed
    sampler = TaskSampler(ds, split.base, int(cfg["seed"]))
    window: dict[str, list[float]] = {}
    window_start, window_steps = time.perf_counter(), 0
    uri, run_id = loop["tracking_uri"], loop["run_id"]

    while True:
        tasks = sampler.tasks(step, range(rank * b, rank * b + b), task_images(cfg))
        losses = method.meta_train_step(tasks, sync)
        step += 1
        window_steps += 1
        for k, v in losses.items():
            window.setdefault(k, []).append(float(v))
        elapsed = time.perf_counter() - start
        stop = any_true((steps > 0 and step >= steps) or (budget_s > 0 and elapsed >= budget_s), device)

        if rank == 0:
            tracking.log_metrics(uri, run_id, losses, step)  # every step's losses
        if rank == 0 and (step % int(cfg["log_every"]) == 0 or stop):
            rate = window_steps * b * size / max(time.perf_counter() - window_start, 1e-9)
            means = {k: sum(v) / len(v) for k, v in window.items()}
            tracking.log_metrics(uri, run_id, {"tasks_per_s": rate}, step)
            total = f"/{steps}" if steps else f" ({elapsed / 60:.1f}/{budget_s / 60:.1f} min)"
            shown = " ".join(f"{k}={v:.3g}" for k, v in means.items())
            print(f"step {step}{total}  {rate:.2f} tasks/s  {shown}", flush=True)
            window, window_start, window_steps = {}, time.perf_counter(), 0

        if step % int(cfg["eval_every"]) == 0 or stop:
            report: dict[str, Any] = {"step": step, **losses}
            ckpt = None
            if rank == 0:
                result = evaluate_generator(method, None, ds, split.val, val_features, shots=int(cfg["shots"]),
                                            n_generate=int(cfg["val_generate"]), seed=int(cfg["eval_seed"]),
                                            controls=False, progress=False)
                val = {f"val_{k}": float(v) for k, v in result.metrics.items()}
                report.update(val)
                tracking.log_metrics(uri, run_id, val, step)
                with tempfile.TemporaryDirectory() as tmp:
                    from orchestrator.evaluation import save_result_images

                    for path in save_result_images(result, tmp, f"val_samples_step{step:06d}.png",
                                                   suffix=f"_val_step{step:06d}"):
                        tracking.log_file(uri, run_id, path, "samples")
                print(f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in val.items()), flush=True)
                tmpdir = tempfile.mkdtemp(prefix="fsig-ckpt-")
                save_checkpoint(method, step, time.perf_counter() - start, Path(tmpdir))
                ckpt = ray.train.Checkpoint.from_directory(tmpdir)
            if size > 1:  # every worker reports the same metrics (Ray scores checkpoints on them)
                import torch.distributed as dist

                box = [report]
                dist.broadcast_object_list(box, src=0)
                report = box[0]
            ray.train.report(report, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_{step:07d}")
        if stop:
            break


def fit(method: str, cfg: dict[str, Any], ds, split, val_features, *, run_id: str, tracking_uri: str,
        workers: int, cpus_per_worker: float, gpus_per_worker: float, storage_path: str, name: str,
        max_failures: int = 1, callbacks: list | None = None):
    """Run the data-parallel meta-training; returns Ray Train's ``Result``.

    ``callbacks`` go to Ray Train's ``RunConfig`` (a sweep passes Ray Tune's
    ``TuneReportCallback`` so the workers' reports reach the enclosing Tune trial).

    Re-running with the same ``name`` and ``storage_path`` resumes from the latest
    checkpoint (Ray Train V2 restores its checkpoint manager from storage).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    select = cfg["select_metric"]
    scoring = {} if select == "last" else {
        "checkpoint_score_attribute": select, "checkpoint_score_order": "max" if higher_is_better(select) else "min"}
    resources = {"CPU": cpus_per_worker}
    if gpus_per_worker:
        resources["GPU"] = gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg, "method": method, "split": split.to_dict(), "dataset_ref": ray.put(ds),
            "val_features_ref": ray.put(val_features), "cpus_per_worker": cpus_per_worker,
            "run_id": run_id, "tracking_uri": tracking_uri,
        },
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=name, storage_path=str(storage_path),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=3, **scoring),
            callbacks=callbacks or None,
        ),
    )
    return trainer.fit()


def best_checkpoint(result, metric: str):
    """The checkpoint chosen on validation classes (never novel ones); ``last`` (or none scored): the latest."""
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if metric in m]
    if metric == "last" or not scored:
        return result.checkpoint, dict(result.metrics or {})
    pick = max if higher_is_better(metric) else min
    return pick(scored, key=lambda cm: cm[1][metric])


def new_run_name(method: str) -> str:
    return f"{method}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def default_storage() -> str:
    """``$FSIG_STORAGE`` or ``./.orchestrator/ray_results``; URIs (``s3://...``) pass through untouched."""
    value = os.environ.get("FSIG_STORAGE", str(Path.cwd() / ".orchestrator" / "ray_results"))
    return value if "://" in value else str(Path(value).resolve())
