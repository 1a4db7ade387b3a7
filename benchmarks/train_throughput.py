"""Meta-training throughput in one run on one config: task batching, and Ray Train scaling against the ceiling.

Not a test: timings are noisy, so every configuration is measured in this one process (or its children) on
the same config, ``--repeats`` times (default 3), and the median is reported; the ratios are what to read.

Sections (``--sections``, default both):

``batched``  FIGR meta-training tasks/s on one device, sequential (``task_batch=1``) vs batched
             (``task_batch=T``) for each T of ``--ts`` (default 1,4,8,16,32); a meta-step of T tasks per
             measurement, one sequential and one batched step back to back per repeat (interleaved, so a
             change in the machine's load hits both alike). ``--batched-methods figr,mtgan`` adds MT-GAN
             (a "task" there is one N-way task: ``n_way`` harness tasks).
``scaling``  FIGR with 1 task per worker per step: the plain PyTorch loop (1 thread); N independent plain
             processes at once (no communication: the machine's ceiling for N workers); Ray Train with 1 and
             with N workers (``--workers``, default 2), 1 CPU and 1 torch thread each. Each run warms up, then
             times ``--repeats`` windows of ``--measure`` steps. On rank 0 it splits the measured time into the
             gradient all-reduce (``grad_sync``, incl. waiting for the other workers), the per-step control
             all-reduce (``distributed.any_flags``: diverged? budget reached?) and recording (the per-step record
             the production loop keeps, and ``ray.train.report`` every ``--report-every`` steps; 0 = never inside
             the window, as the production loop, which reports only with a checkpoint every ``eval_every``).

    python benchmarks/train_throughput.py --json                      # full: omniglot, width 16, 40-step windows
    python benchmarks/train_throughput.py --quick --json              # a few minutes: digits, width 8, 8-step windows
    python benchmarks/train_throughput.py --device cuda --sections batched --ts 1,8,16,32 --json

With ``--json`` the last stdout line is one JSON object holding at least ``batched_speedup_t8`` (batched over
sequential FIGR tasks/s at T = 8; null when 8 is not in ``--ts``) and ``scaling_efficiency`` (Ray Train with N
workers over N independent processes, tasks/s; null when the scaling section did not run, with the reason).
Targets on the 2-core CPU (issue 14): batched_speedup_t8 >= 1.2, scaling_efficiency >= 0.95.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def say(msg: str) -> None:
    """Progress to stderr (stdout ends with the JSON line)."""
    print(msg, file=sys.stderr, flush=True)


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages (os.getloadavg), to state the conditions of a measurement."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------------
# Task batching: sequential vs batched inner loops on one device. Independent of Ray.
# ---------------------------------------------------------------------------------------------------
def _tasks(count: int, shots: int, image_shape: tuple[int, int, int], seed: int, classes: int = 20) -> list:
    """``count`` tasks of ``shots`` random images in [-1, 1] (throughput does not depend on the pixels)."""
    from methods.base import Task

    g = torch.Generator().manual_seed(seed)
    return [Task(torch.rand(shots, *image_shape, generator=g) * 2 - 1, label=i % classes, seed=seed + i)
            for i in range(count)]


def batched_section(device: str | torch.device = "cpu", ts: tuple[int, ...] = (1, 4, 8, 16, 32), repeats: int = 3,
                    width: int = 16, threads: int | None = 1, inner_steps: int = 10, method: str = "figr",
                    profile: bool = False) -> dict:
    """Meta-training tasks/s, sequential (``task_batch=1``) vs batched (``task_batch=T``), at each T.

    ``method="figr"``: FIGR's defaults (dcgan, ``width``, z_dim 100, n=4 shots, K=``inner_steps``, SGD inner
    steps); a task is one FIGR task. ``method="mtgan"``: MT-GAN's phase 2 (``pretrain_steps=0``, 5-way, 4 shots
    + 4 queries, K=``inner_steps``); a task is one N-way task (5 harness tasks). 32x32 single-channel random
    images. For each T: a warm-up step of each path, then ``repeats`` rounds that time one sequential and one
    batched meta-step of T tasks back to back; medians. T=1 is the sequential loop itself (``task_batch=1``
    means sequential), so its speedup is 1 by definition. ``threads``: torch threads on the CPU (None: torch's
    default). Besides wall-clock tasks/s it records process CPU-seconds per task, which a shared machine
    disturbs less. Returns a JSON-ready dict, with ``batched_speedup_t8`` when 8 is in ``ts``. ``profile``: after
    the timed rounds of each T > 1, one more meta-step of each path under ``torch.profiler`` (CPU activity),
    reported as self CPU seconds and calls per operator group (``op_groups``), so the speedup comes with its
    own breakdown of where the paths differ.
    """
    from methods.figr import FIGR
    from methods.mtgan import MTGAN

    device = torch.device(device)
    if device.type == "cpu" and threads is not None:
        torch.set_num_threads(int(threads))

    def timed(m, tasks) -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        w, c = time.perf_counter(), time.process_time()
        m.meta_train_step(tasks)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - w, time.process_time() - c

    shape = (1, 32, 32)
    if method == "figr":
        base = {"width": int(width), "inner_steps": int(inner_steps), "shots": 4}
        build = lambda T: FIGR({**base, "task_batch": int(T)}, shape, device)  # noqa: E731
        per_task, shots = 1, 4
    elif method == "mtgan":
        base = {"width": int(width), "inner_steps": int(inner_steps), "shots": 4, "queries": 4, "n_way": 5,
                "pretrain_steps": 0}
        build = lambda T: MTGAN({**base, "task_batch": int(T)}, shape, device, 20)  # noqa: E731
        per_task, shots = 5, 8
    else:
        raise ValueError(f"batched_section: method must be figr or mtgan, got {method!r}")
    rows: dict[str, dict] = {}
    for T in ts:
        tasks = _tasks(int(T) * per_task, shots, shape, seed=1000 * int(T))
        seq = build(1)
        bat = build(T) if T > 1 else None
        timed(seq, tasks)
        if bat is not None:
            timed(bat, tasks)
        s_runs, b_runs = [], []
        for _ in range(int(repeats)):
            s_runs.append(timed(seq, tasks))
            if bat is not None:
                b_runs.append(timed(bat, tasks))
        s_wall, s_cpu = statistics.median(r[0] for r in s_runs), statistics.median(r[1] for r in s_runs)
        b_wall, b_cpu = ((statistics.median(r[0] for r in b_runs), statistics.median(r[1] for r in b_runs))
                         if b_runs else (s_wall, s_cpu))
        rows[str(T)] = {
            "sequential_tasks_per_s": T / s_wall, "batched_tasks_per_s": T / b_wall, "speedup": s_wall / b_wall,
            "sequential_cpu_s_per_task": s_cpu / T, "batched_cpu_s_per_task": b_cpu / T, "cpu_speedup": s_cpu / b_cpu,
        }
        if profile and bat is not None:
            rows[str(T)]["op_groups"] = {"sequential": op_groups(seq, tasks), "batched": op_groups(bat, tasks)}
            say("    self CPU s by operator group (sequential -> batched): " + ", ".join(
                f"{g} {rows[str(T)]['op_groups']['sequential'].get(g, {}).get('cpu_s', 0):.2f} -> "
                f"{rows[str(T)]['op_groups']['batched'].get(g, {}).get('cpu_s', 0):.2f}" for g in OP_GROUPS))
        say(f"  {method} T={T:>2}: sequential {T / s_wall:.3f} tasks/s, batched {T / b_wall:.3f} tasks/s, "
            f"x{s_wall / b_wall:.2f} (CPU time x{s_cpu / b_cpu:.2f})")
    out = {
        "method": method, "device": str(device), "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "config": {"method": method, "arch": "dcgan", **base, "image_shape": list(shape), "inner_optimizer": "sgd"},
        "repeats": int(repeats), "by_t": rows,
    }
    if "8" in rows:
        out["batched_speedup_t8"] = rows["8"]["speedup"]
        out["batched_cpu_speedup_t8"] = rows["8"]["cpu_speedup"]
    return out


OP_GROUPS = ("convolution", "matmul", "elementwise", "norm", "copy/reshape", "other")


def _op_group(name: str) -> str:
    if "conv" in name:
        return "convolution"
    if any(k in name for k in ("mm", "matmul", "linear")):
        return "matmul"
    if "norm" in name:
        return "norm"
    if any(k in name for k in ("copy", "cat", "stack", "clone", "contiguous", "view", "permute", "transpose",
                               "unfold", "select", "slice", "expand", "index", "reshape")):
        return "copy/reshape"
    return "elementwise" if name.startswith("aten::") else "other"


def op_groups(method, tasks) -> dict:
    """One ``meta_train_step(tasks)`` under ``torch.profiler`` (CPU): {group: {cpu_s, calls}} of self CPU time
    per operator group (``OP_GROUPS``; torch.profiler's own key averages, grouped by operator name)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        method.meta_train_step(tasks)
    groups: dict[str, dict] = {}
    for e in prof.key_averages():
        g = groups.setdefault(_op_group(e.key), {"cpu_s": 0.0, "calls": 0})
        g["cpu_s"] += e.self_cpu_time_total / 1e6
        g["calls"] += int(e.count)
    return groups


# ---------------------------------------------------------------------------------------------------
# Scaling: plain loop, N independent processes, Ray Train with 1 and N workers.
# ---------------------------------------------------------------------------------------------------
def method_config(args) -> dict:
    from methods import get

    return {**get("figr").default_config, "width": args.width, "shots": 4, "inner_steps": args.inner_steps}


def _load(args):
    from orchestrator.data import load_dataset, make_split

    ds = load_dataset(args.dataset, args.data_root if args.dataset != "digits" else None, 32, 1)
    return ds, make_split(ds, 0).base


def plain_windows(ds, classes, cfg: dict, device: str, warmup: int, measure: int, repeats: int, index: int = 0) -> list[float]:
    """The plain PyTorch loop (no Ray, no process group), 1 thread: tasks/s of each of ``repeats`` windows."""
    from orchestrator.data import TaskSampler
    from orchestrator.kinds import build_method

    torch.set_num_threads(1)
    dev = torch.device(device)
    method = build_method("figr", cfg, ds.image_shape, dev)
    sampler = TaskSampler(ds, classes, index)
    step, rates = 0, []
    for _ in range(warmup):
        method.meta_train_step(sampler.tasks(step, [0], 4))
        step += 1
    for _ in range(repeats):
        _sync_device(dev)
        t = time.perf_counter()
        for _ in range(measure):
            method.meta_train_step(sampler.tasks(step, [0], 4))
            step += 1
        _sync_device(dev)
        rates.append(measure / (time.perf_counter() - t))
    return rates


def _sync_device(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _plain_process(args_dict: dict, index: int, queue) -> None:
    args = argparse.Namespace(**args_dict)
    ds, classes = _load(args)
    device = f"cuda:{index}" if args.device == "cuda" else "cpu"
    queue.put((index, plain_windows(ds, classes, method_config(args), device, args.warmup, args.measure,
                                    args.repeats, index)))


def independent_processes(args, n: int) -> list[float]:
    """The machine's ceiling for n workers: n plain loops at once in n processes, no communication.

    Returns, per window, the sum of the n processes' tasks/s (window i of each process overlaps in time)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_plain_process, args=(vars(args), i, queue)) for i in range(n)]
    for p in procs:
        p.start()
    results = dict(queue.get() for _ in procs)
    for p in procs:
        p.join()
    return [sum(results[i][w] for i in range(n)) for w in range(args.repeats)]


def ray_worker_loop(cfg: dict) -> dict:
    """A Ray Train worker: the production loop's per-step structure (orchestrator/loop.py) on FIGR, timed.

    Per step: draw this worker's tasks, ``meta_train_step`` with the harness's ``grad_sync`` (timed: the
    gradient all-reduce), ``any_flags`` (timed: the loop's one control all-reduce per step), then the record
    the loop keeps and, every ``report_every`` steps, ``ray.train.report`` (timed: recording).
    """
    import ray
    import ray.train
    import ray.train.torch

    from orchestrator.data import TaskSampler
    from orchestrator.distributed import any_flags, broadcast_params, grad_sync, world
    from orchestrator.kinds import build_method

    torch.set_num_threads(1)
    rank, size = world()
    device = ray.train.torch.get_device()
    ds = ray.get(cfg["ds"])
    method = build_method("figr", cfg["method_cfg"], ds.image_shape, device)
    broadcast_params(method.parameters())
    sampler = TaskSampler(ds, cfg["classes"], 0)
    inner_sync = grad_sync()
    spent = {"allreduce": 0.0, "flags": 0.0, "recording": 0.0}

    def sync(params):
        t = time.perf_counter()
        inner_sync(params)
        spent["allreduce"] += time.perf_counter() - t

    step, records, windows, total = 0, [], [], 0.0
    every = int(cfg["report_every"])
    # Where the machine's CPU went during the measured windows: this worker's own process CPU time, and the
    # whole machine's busy time (psutil, all processes), so that what Ray's own processes, the driver and
    # anything else took from the cores is measured rather than guessed.
    own_cpu, machine_busy = 0.0, 0.0
    for w in range(-1, cfg["repeats"]):  # window -1: the warm-up, not counted
        n = cfg["warmup"] if w < 0 else cfg["measure"]
        _sync_device(device)
        c0, m0 = time.process_time(), _machine_busy_s()
        t = time.perf_counter()
        for _ in range(n):
            losses = {k: float(v) for k, v in method.meta_train_step(sampler.tasks(step, [rank], 4), sync).items()}
            step += 1
            tf = time.perf_counter()
            diverged, stop = any_flags([not all(math.isfinite(v) for v in losses.values()), False], device)
            tr = time.perf_counter()
            spent["flags"] += tr - tf
            records.append({"step": step, "metrics": losses})
            if every and step % every == 0:
                ray.train.report({"step": step, **losses})
                records = []
            spent["recording"] += time.perf_counter() - tr
        _sync_device(device)
        elapsed = time.perf_counter() - t
        if w < 0:
            spent = {k: 0.0 for k in spent}
            continue
        own_cpu += time.process_time() - c0
        machine_busy += _machine_busy_s() - m0
        windows.append(n * size / elapsed)
        total += elapsed
    workers_cpu = own_cpu
    if size > 1:  # every worker's CPU seconds, summed (one tiny all-reduce after the measured windows)
        import torch.distributed as dist

        buf = torch.tensor([own_cpu], dtype=torch.float64)
        dist.all_reduce(buf)
        workers_cpu = float(buf.item())
    ray.train.report({"step": step, "done": 1})
    cores = os.cpu_count() or 1
    return {"windows": windows, **{f"{k}_share": v / total for k, v in spent.items()},
            # shares of the machine's CPU capacity (wall time x cores) over the measured windows
            "rank0_cpu_of_its_core": own_cpu / total, "workers_cpu_share": workers_cpu / (total * cores),
            "other_cpu_share": max(0.0, machine_busy - workers_cpu) / (total * cores),
            "idle_cpu_share": max(0.0, 1.0 - machine_busy / (total * cores))}


def _machine_busy_s() -> float:
    """CPU-seconds the whole machine has been busy since boot (all cores, all processes; psutil)."""
    import psutil  # a Ray dependency

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0)


def ray_train(ds, classes, args, workers: int) -> dict:
    """One TorchTrainer run of ``ray_worker_loop`` with ``workers`` workers; rank 0's windows and shares."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t0 = time.perf_counter()
    use_gpu = args.device == "cuda"
    trainer = TorchTrainer(
        ray_worker_loop,
        train_loop_config={"ds": ray.put(ds), "classes": classes, "method_cfg": method_config(args),
                           "warmup": args.warmup, "measure": args.measure, "repeats": args.repeats,
                           "report_every": args.report_every},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})}),
        run_config=RunConfig(storage_path=str(Path(args.storage).resolve()), name=f"bench-{workers}w-{int(t0)}"),
    )
    result = trainer.fit()
    out = dict(result.return_value)
    steady = sum(args.measure * workers / r for r in out["windows"])
    out["startup_teardown_s"] = time.perf_counter() - t0 - steady
    return out


def scaling_section(args) -> dict:
    """Plain loop, N independent processes, Ray Train 1 and N workers: medians of ``repeats`` windows each."""
    n = int(args.workers)
    out: dict = {"workers": n, "device": args.device, "report_every": args.report_every,
                 "config": {"method": "figr", "arch": "dcgan", "width": args.width, "shots": 4, "inner_steps": args.inner_steps,
                            "tasks_per_worker": 1, "dataset": args.dataset, "warmup": args.warmup,
                            "measure": args.measure, "repeats": args.repeats}}
    if args.device == "cuda" and torch.cuda.device_count() < n:
        out["skipped"] = (f"{n} workers on cuda need {n} GPUs; {torch.cuda.device_count()} visible: the N-worker "
                          "and N-process runs were not made")
        say(f"scaling: {out['skipped']}")
        n_runs = False
    else:
        n_runs = True
    ds, classes = _load(args)
    med = statistics.median
    say(f"scaling: FIGR dcgan width {args.width}, 32x32, n=4, K={args.inner_steps}, 1 task per worker per step, "
        f"{args.warmup} warm-up + {args.repeats} x {args.measure} measured steps, device {args.device}")
    plain = plain_windows(ds, classes, method_config(args), "cuda:0" if args.device == "cuda" else "cpu",
                          args.warmup, args.measure, args.repeats)
    out["plain"] = {"windows": plain, "tasks_per_s": med(plain)}
    say(f"  plain PyTorch, 1 thread:       {med(plain):.3f} tasks/s  {[round(r, 3) for r in plain]}")
    if n_runs:
        ind = independent_processes(args, n)
        out["independent"] = {"windows": ind, "tasks_per_s": med(ind), "vs_plain": med(ind) / med(plain)}
        say(f"  {n} independent processes:     {med(ind):.3f} tasks/s  (ceiling {med(ind) / med(plain):.2f}x plain)")
    import ray

    from orchestrator.lifecycle import ensure_ray

    # The production start of a local Ray: its workers at nice 0 like the plain processes (Ray's default of 15
    # starves them on a busy machine), the dashboard Ray Train polls, a retry of Ray's 30 s start-up deadline.
    try:
        ensure_ray(None)
        for w in ([1, n] if n_runs and n > 1 else [1]):
            r = ray_train(ds, classes, args, w)
            r["tasks_per_s"] = med(r["windows"])
            out[f"ray_{w}"] = r
            say(f"  Ray Train, {w} worker(s):       {r['tasks_per_s']:.3f} tasks/s  "
                f"(all-reduce {100 * r['allreduce_share']:.1f}%, control all-reduce {100 * r['flags_share']:.2f}%, "
                f"recording {100 * r['recording_share']:.2f}% of rank 0's time; start-up + teardown "
                f"{r['startup_teardown_s']:.1f} s)")
            say(f"    CPU over its windows: rank 0 used {100 * r['rank0_cpu_of_its_core']:.0f}% of a core; of the "
                f"machine's {os.cpu_count()} cores, the workers took {100 * r['workers_cpu_share']:.0f}%, other "
                f"processes (Ray's own, the driver, anything else) {100 * r['other_cpu_share']:.0f}%, idle "
                f"{100 * r['idle_cpu_share']:.0f}%")
    finally:
        ray.shutdown()
    out["ray1_vs_plain"] = out["ray_1"]["tasks_per_s"] / out["plain"]["tasks_per_s"]
    if n_runs and n > 1:
        rn = out[f"ray_{n}"]
        out["rayN_vs_ray1"] = rn["tasks_per_s"] / out["ray_1"]["tasks_per_s"]
        out["scaling_efficiency"] = rn["tasks_per_s"] / out["independent"]["tasks_per_s"]
        # the same ratio per window (window i of each run), to show its spread
        out["scaling_efficiency_windows"] = [a / b for a, b in zip(rn["windows"], out["independent"]["windows"])]
        out["allreduce_share"] = rn["allreduce_share"]
        out["flags_share"] = rn["flags_share"]
        out["recording_share"] = rn["recording_share"]
        out["other_cpu_share"] = rn["other_cpu_share"]
        out["rank0_cpu_of_its_core"] = rn["rank0_cpu_of_its_core"]
        say(f"  ratio Ray 1 worker / plain:    {out['ray1_vs_plain']:.3f}")
        say(f"  ratio Ray {n} / Ray 1:           {out['rayN_vs_ray1']:.3f}")
        say(f"  scaling efficiency (Ray {n} / {n} independent): {out['scaling_efficiency']:.3f}  (target >= 0.95)")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sections", default="batched,scaling", help="comma-separated: batched, scaling")
    ap.add_argument("--batched-only", action="store_true", help="same as --sections batched")
    ap.add_argument("--quick", action="store_true",
                    help="a few minutes: digits, width 8, K=10, T in 1,8, 2 warm-up + 3 x 8 measured steps")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    ap.add_argument("--ts", default=None, help="task batch sizes T, comma-separated (default 1,4,8,16,32)")
    ap.add_argument("--batched-methods", default="figr", help="comma-separated: figr, mtgan")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true",
                    help="batched section: also profile one meta-step of each path per T (operator groups' CPU s)")
    ap.add_argument("--inner-steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU in the batched section (0: default)")
    ap.add_argument("--dataset", default=None, help="scaling section's dataset (default omniglot; --quick: digits)")
    ap.add_argument("--data-root", default=os.environ.get("FSIG_DATASETS", str(ROOT.parent / "shared" / "datasets")))
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--measure", type=int, default=None, help="steps per measured window")
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2, help="N: Ray Train workers and independent processes")
    ap.add_argument("--report-every", type=int, default=0,
                    help="ray.train.report every k steps in the Ray Train runs (0: never inside the window)")
    ap.add_argument("--storage", default="/tmp/fsig-bench")
    args = ap.parse_args(argv)
    quick = args.quick
    args.dataset = args.dataset or ("digits" if quick else "omniglot")
    args.warmup = args.warmup if args.warmup is not None else (2 if quick else 5)
    args.measure = args.measure if args.measure is not None else (8 if quick else 40)
    args.width = args.width if args.width is not None else (8 if quick else 16)
    ts = tuple(int(t) for t in (args.ts or ("1,8" if quick else "1,4,8,16,32")).split(",") if t)
    sections = {"batched"} if args.batched_only else {s.strip() for s in args.sections.split(",") if s.strip()}
    if not sections <= {"batched", "scaling"} or args.repeats < 1 or args.workers < 1 or any(t < 1 for t in ts):
        ap.error("--sections takes batched and/or scaling; --repeats, --workers and every T must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible to torch here; use --device cpu")

    out: dict = {"command": "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
                 "load_average_start": load_average(), "torch": torch.__version__, "device": args.device,
                 "cpus": os.cpu_count(), "batched_speedup_t8": None, "scaling_efficiency": None}
    if args.device == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
    if "batched" in sections:
        for m in [s.strip() for s in args.batched_methods.split(",") if s.strip()]:
            say(f"batched: {m}, device {args.device}, T in {ts}, median of {args.repeats}")
            res = batched_section(args.device, ts, args.repeats, width=args.width, threads=args.threads or None,
                                  inner_steps=args.inner_steps, method=m, profile=args.profile)
            out[f"batched_{m}"] = res
            if m == "figr":
                out["batched_speedup_t8"] = res.get("batched_speedup_t8")
                out["batched_cpu_speedup_t8"] = res.get("batched_cpu_speedup_t8")
            elif "batched_speedup_t8" in res:
                out[f"{m}_batched_speedup_t8"] = res["batched_speedup_t8"]
    if "scaling" in sections:
        sc = scaling_section(args)
        out["scaling"] = sc
        for k in ("scaling_efficiency", "allreduce_share", "flags_share", "recording_share", "other_cpu_share",
                  "rank0_cpu_of_its_core", "ray1_vs_plain", "rayN_vs_ray1"):
            if k in sc:
                out[k] = sc[k]
        if "skipped" in sc:
            out["scaling_skipped"] = sc["skipped"]
    out["load_average_end"] = load_average()
    if args.json:
        print(json.dumps(out))
    else:
        print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
