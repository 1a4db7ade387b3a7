"""Steady-state FIGR meta-training throughput: plain PyTorch vs Ray Train (1 and 2 workers).

Not a test: timings are noisy, so all three are measured in one run on the same config and
compared as ratios. Each worker gets one CPU and one torch thread; the plain loop gets one
thread too. Start-up (worker launch, imports, process-group set-up) is reported separately.

    python benchmarks/train_throughput.py [--warmup 5] [--measure 40] [--width 16]

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


def loop(cfg: dict) -> dict:
    """The same pieces as the production worker loop (sampler, method, grad sync, stop flag)."""
    import ray

    from orchestrator.distributed import any_true, grad_sync, world

    torch.set_num_threads(1)
    rank, size = world()
    ds = ray.get(cfg["ds"])
    method = build_method("figr", cfg["method_cfg"], ds.image_shape)
    sampler = TaskSampler(ds, cfg["classes"], 0)
    inner_sync = grad_sync()
    waited = [0.0]

    def sync(params):  # time spent averaging gradients (all-reduce, incl. waiting for the other worker)
        t = time.perf_counter()
        inner_sync(params)
        waited[0] += time.perf_counter() - t

    first = None
    for step in range(cfg["warmup"] + cfg["measure"]):
        if step == cfg["warmup"]:
            first, waited[0] = time.perf_counter(), 0.0
        method.meta_train_step(sampler.tasks(step, [rank], 4), sync)
        any_true(False, torch.device("cpu"))
    total = time.perf_counter() - first
    return {"tasks_per_s": cfg["measure"] * size / total, "sync_share": waited[0] / total}  # rank 0's reaches the driver


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


def _plain_worker(args, queue) -> None:
    ds = load_dataset(args.dataset, args.data_root if args.dataset != "digits" else None, 32, 1)
    queue.put(plain(ds, make_split(ds, 0).base, args))


def two_plain_processes(args) -> float:
    """The machine's ceiling for two workers: two independent plain loops at once, no communication."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_plain_worker, args=(args, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    rates = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def ray_train(ds, classes, args, workers: int) -> tuple[float, float]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t0 = time.perf_counter()
    trainer = TorchTrainer(
        loop,
        train_loop_config={"ds": ray.put(ds), "classes": classes, "method_cfg": config(args),
                           "warmup": args.warmup, "measure": args.measure},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=str(Path(args.storage).resolve()), name=f"bench-{workers}w-{int(t0)}"),
    )
    result = trainer.fit()
    total = time.perf_counter() - t0
    rate = result.return_value["tasks_per_s"]
    print(f"  (share of the measured time spent in gradient averaging on rank 0: "
          f"{100 * result.return_value['sync_share']:.1f}%)", flush=True)
    steady = (args.warmup + args.measure) / rate * workers
    return rate, total - steady


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="omniglot")
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--measure", type=int, default=40)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--storage", default="/tmp/fsig-bench")
    args = ap.parse_args()

    import ray

    ds = load_dataset(args.dataset, args.data_root if args.dataset != "digits" else None, 32, 1)
    classes = make_split(ds, 0).base
    print(f"FIGR dcgan width {args.width}, 32x32, n=4, K=10, 1 task per worker per step, "
          f"{args.warmup} warm-up + {args.measure} measured steps", flush=True)
    p = plain(ds, classes, args)
    print(f"plain PyTorch, 1 thread:   {p:.3f} tasks/s", flush=True)
    c = two_plain_processes(args)
    print(f"2 plain processes at once: {c:.3f} tasks/s  (the hardware ceiling for 2 workers: {c / p:.2f}x)", flush=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    r1, s1 = ray_train(ds, classes, args, 1)
    print(f"Ray Train, 1 worker:       {r1:.3f} tasks/s  (start-up + teardown {s1:.1f} s)", flush=True)
    r2, s2 = ray_train(ds, classes, args, 2)
    print(f"Ray Train, 2 workers:      {r2:.3f} tasks/s  (start-up + teardown {s2:.1f} s)", flush=True)
    ray.shutdown()
    out = {"plain": p, "two_plain_processes": c, "ray_1": r1, "ray_2": r2, "ray1_vs_plain": r1 / p, "ray2_vs_ray1": r2 / r1,
           "startup_1_s": s1, "startup_2_s": s2}
    print(f"ratio 1-worker / plain: {r1 / p:.3f}  (target >= 0.95)")
    print(f"ratio 2 workers / 1:    {r2 / r1:.3f}  (target >= 1.8; ceiling here {c / p:.2f})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
