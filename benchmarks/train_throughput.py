"""Steady-state FIGR meta-training throughput: plain PyTorch vs Ray Train (1 and 2 workers).

Not a test: timings are noisy, so all three are measured in one run on the same config and
compared as ratios. Each worker gets one CPU and one torch thread; the plain loop gets one
thread too. Start-up (worker launch, imports, process-group set-up) is reported separately.

    python benchmarks/train_throughput.py [--warmup 5] [--measure 40] [--width 64]

Targets: 1-worker Ray Train within 5% of the plain loop; 2 workers >= 1.8x one worker.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

from orchestrator.data import TaskSampler, load_dataset, make_split  # noqa: E402
from orchestrator.train import build_method  # noqa: E402


def config(args) -> dict:
    from methods import get

    return {**get("figr").default_config, "width": args.width, "shots": 4}


def loop(cfg: dict) -> None:
    """The same pieces as the production worker loop (sampler, method, grad sync, stop flag)."""
    import ray
    import ray.train

    from orchestrator.distributed import any_true, grad_sync, world

    torch.set_num_threads(1)
    rank, size = world()
    ds = ray.get(cfg["ds"])
    method = build_method("figr", cfg["method_cfg"], ds.image_shape)
    sampler = TaskSampler(ds, cfg["classes"], 0)
    sync = grad_sync()
    first = None
    for step in range(cfg["warmup"] + cfg["measure"]):
        if step == cfg["warmup"]:
            first = time.perf_counter()
        method.meta_train_step(sampler.tasks(step, [rank], 4), sync)
        any_true(False, torch.device("cpu"))
    rate = cfg["measure"] * size / (time.perf_counter() - first)
    ray.train.report({"tasks_per_s": rate, "started": cfg["t0"]})


def plain(ds, classes, args) -> float:
    torch.set_num_threads(1)
    method = build_method("figr", config(args), ds.image_shape)
    sampler = TaskSampler(ds, classes, 0)
    for step in range(args.warmup):
        method.meta_train_step(sampler.tasks(step, [0], 4))
    t = time.perf_counter()
    for step in range(args.warmup, args.warmup + args.measure):
        method.meta_train_step(sampler.tasks(step, [0], 4))
    return args.measure / (time.perf_counter() - t)


def ray_train(ds, classes, args, workers: int) -> tuple[float, float]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t0 = time.perf_counter()
    trainer = TorchTrainer(
        loop,
        train_loop_config={"ds": ray.put(ds), "classes": classes, "method_cfg": config(args),
                           "warmup": args.warmup, "measure": args.measure, "t0": t0},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=str(Path(args.storage).resolve()), name=f"bench-{workers}w-{int(t0)}"),
    )
    result = trainer.fit()
    total = time.perf_counter() - t0
    rate = result.metrics["tasks_per_s"]
    steady = (args.warmup + args.measure) / rate * workers
    return rate, total - steady


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="omniglot")
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--measure", type=int, default=40)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--storage", default="/tmp/fsig-bench")
    args = ap.parse_args()

    import ray

    ds = load_dataset(args.dataset, args.data_root if args.dataset != "digits" else None, 32, 1)
    classes = make_split(ds, 0).base
    print(f"FIGR dcgan width {args.width}, 32x32, n=4, K=10, 1 task per worker per step, "
          f"{args.warmup} warm-up + {args.measure} measured steps", flush=True)
    p = plain(ds, classes, args)
    print(f"plain PyTorch, 1 thread:   {p:.3f} tasks/s", flush=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    r1, s1 = ray_train(ds, classes, args, 1)
    print(f"Ray Train, 1 worker:       {r1:.3f} tasks/s  (start-up + teardown {s1:.1f} s)", flush=True)
    r2, s2 = ray_train(ds, classes, args, 2)
    print(f"Ray Train, 2 workers:      {r2:.3f} tasks/s  (start-up + teardown {s2:.1f} s)", flush=True)
    ray.shutdown()
    out = {"plain": p, "ray_1": r1, "ray_2": r2, "ray1_vs_plain": r1 / p, "ray2_vs_ray1": r2 / r1,
           "startup_1_s": s1, "startup_2_s": s2}
    print(f"ratio 1-worker / plain: {r1 / p:.3f}  (target >= 0.95)")
    print(f"ratio 2 workers / 1:    {r2 / r1:.3f}  (target >= 1.8)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
