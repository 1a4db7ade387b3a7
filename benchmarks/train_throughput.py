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
from orchestrator.kinds import build_method  # noqa: E402


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


# ---------------------------------------------------------------------------------------------------
# Task batching (issue 14, item 4): sequential vs batched inner loops on one device. Independent of Ray.
# ---------------------------------------------------------------------------------------------------
def _figr_tasks(count: int, shots: int, image_shape: tuple[int, int, int], seed: int) -> list:
    """``count`` tasks of ``shots`` random images in [-1, 1] (throughput does not depend on the pixels)."""
    from methods.base import Task

    g = torch.Generator().manual_seed(seed)
    return [Task(torch.rand(shots, *image_shape, generator=g) * 2 - 1, label=i, seed=seed + i) for i in range(count)]


def batched_section(device: str | torch.device = "cpu", ts: tuple[int, ...] = (1, 4, 8, 16, 32), repeats: int = 3,
                    width: int = 16, threads: int | None = 1, inner_steps: int = 10) -> dict:
    """FIGR meta-training tasks/s, sequential (``task_batch=1``) vs batched (``task_batch=T``), at each T.

    Config: FIGR's defaults (dcgan, ``width``, z_dim 100, n=4 shots, K=``inner_steps``, SGD inner steps)
    on 32x32 single-channel random images. For each T, one meta-step of T tasks per measurement: a
    warm-up step of each path, then ``repeats`` rounds that time one sequential and one batched step
    back to back (interleaved, so a change in the machine's load hits both alike); the median round
    is reported. T=1 is the sequential loop itself (the batched path at T=1 is not a configuration:
    ``task_batch=1`` means sequential), so its speedup is 1 by definition.

    ``threads``: torch threads on the CPU (1, as the rest of this benchmark gives each worker; None
    leaves torch's default). Besides wall-clock tasks/s it records process CPU-seconds per task,
    which a shared machine disturbs less. Returns a JSON-ready dict including ``batched_speedup_t8``.
    """
    import statistics

    from methods.figr import FIGR

    device = torch.device(device)
    if device.type == "cpu" and threads is not None:
        torch.set_num_threads(int(threads))

    def timed(method, tasks) -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        w, c = time.perf_counter(), time.process_time()
        method.meta_train_step(tasks)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - w, time.process_time() - c

    shape = (1, 32, 32)
    base = {"width": int(width), "inner_steps": int(inner_steps), "shots": 4}
    rows: dict[str, dict] = {}
    for T in ts:
        tasks = _figr_tasks(int(T), 4, shape, seed=1000 * int(T))
        seq = FIGR({**base, "task_batch": 1}, shape, device)
        bat = FIGR({**base, "task_batch": int(T)}, shape, device) if T > 1 else None
        timed(seq, tasks)
        if bat is not None:
            timed(bat, tasks)
        s_runs, b_runs = [], []
        for _ in range(int(repeats)):
            s_runs.append(timed(seq, tasks))
            if bat is not None:
                b_runs.append(timed(bat, tasks))
        s_wall, s_cpu = statistics.median(r[0] for r in s_runs), statistics.median(r[1] for r in s_runs)
        b_wall, b_cpu = (statistics.median(r[0] for r in b_runs), statistics.median(r[1] for r in b_runs)) if b_runs else (s_wall, s_cpu)
        rows[str(T)] = {
            "sequential_tasks_per_s": T / s_wall, "batched_tasks_per_s": T / b_wall, "speedup": s_wall / b_wall,
            "sequential_cpu_s_per_task": s_cpu / T, "batched_cpu_s_per_task": b_cpu / T, "cpu_speedup": s_cpu / b_cpu,
        }
        print(f"  T={T:>2}: sequential {T / s_wall:.3f} tasks/s, batched {T / b_wall:.3f} tasks/s, "
              f"x{s_wall / b_wall:.2f} (CPU time x{s_cpu / b_cpu:.2f})", file=sys.stderr, flush=True)
    out = {
        "section": "batched", "device": str(device), "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "config": {"method": "figr", "arch": "dcgan", **base, "image_shape": list(shape), "inner_optimizer": "sgd"},
        "repeats": int(repeats), "by_t": rows,
    }
    if "8" in rows:
        out["batched_speedup_t8"] = rows["8"]["speedup"]
        out["batched_cpu_speedup_t8"] = rows["8"]["cpu_speedup"]
    return out


def batched_main(argv: list[str]) -> None:
    """``--batched-only``: run just ``batched_section`` and print its result as one JSON line."""
    ap = argparse.ArgumentParser(description="FIGR task batching: sequential vs batched tasks/s")
    ap.add_argument("--batched-only", action="store_true", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--ts", default="1,4,8,16,32", help="task batch sizes T, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--inner-steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (0: torch's default)")
    args = ap.parse_args(argv)
    ts = tuple(int(t) for t in args.ts.split(",") if t)
    out = batched_section(args.device, ts, args.repeats, width=args.width, threads=args.threads or None,
                          inner_steps=args.inner_steps)
    print(json.dumps(out))


if __name__ == "__main__":
    if "--batched-only" in sys.argv[1:]:
        batched_main(sys.argv[1:])
    else:
        main()
