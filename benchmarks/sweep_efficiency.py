"""Does the product's sweep (seeded TPE + ASHA) do at least as well as plain random search?

Runs the same ``sweep`` command twice in one go, with the same method, data, seed, number of
trials and per-trial budget: once as shipped (``--search tpe --scheduler asha``) and once as
the baseline (``--search random --scheduler none``, every trial trains to the end). Both land in
one MLflow experiment; the script reads the children back and prints, side by side, the best
validation metric, how many trials ASHA stopped, the meta-steps actually trained (compute),
the wall time, and the best trial's novel-class metrics.

Budgets are in meta-steps, not minutes, so the comparison does not depend on how busy the
machine is. Not a test: one seed is one sample; run several seeds before concluding much.

    python benchmarks/sweep_efficiency.py --dataset omniglot --data-root ../shared/datasets \\
        --trials 8 --steps 200 --seed 0 [--store sqlite:///bench.db]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ARMS = {"tpe+asha": ["--search", "tpe", "--scheduler", "asha"],
        "random": ["--search", "random", "--scheduler", "none"]}


def run_sweep(args: argparse.Namespace, arm: str, experiment: str) -> dict:
    cmd = [sys.executable, "-m", "orchestrator", "sweep", args.method, "--trials", str(args.trials),
           "--concurrency", str(args.concurrency), "--steps", str(args.steps), "--seed", str(args.seed),
           "--tracking-uri", args.store, "--experiment", experiment, "--json", *ARMS[arm]]
    if args.dataset:
        cmd += ["--dataset", args.dataset]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    for item in args.set:
        cmd += ["--set", item]
    print(f"[{arm}] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"[{arm}] sweep failed with exit status {proc.returncode}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**out, "wall_s": wall}


def trial_stats(store: str, summary: dict) -> dict:
    """Steps each child trained (the last step its validation metric was logged at) and the best's novel metrics."""
    from orchestrator import tracking
    from orchestrator.sweep import children

    c = tracking.client(store)
    parent = c.get_run(summary["parent_run_id"])
    kids = children(store, parent.info.run_id, parent.info.experiment_id)
    steps, stopped = [], 0
    for k in kids:
        hist = c.get_metric_history(k.info.run_id, summary["metric"])
        steps.append(max((m.step for m in hist), default=0))
        stopped += k.data.tags.get("stopped_early") == "true"
    best = c.get_run(summary["best_run_id"]).data.metrics if summary.get("best_run_id") else {}
    return {"children": len(kids), "stopped_early": stopped, "steps_trained": int(sum(steps)),
            "best_novel": {k: best.get(k) for k in ("fid_domain", "class_hit", "fid_domain_scratch",
                                                     "class_hit_scratch", "chance")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="figr")
    p.add_argument("--dataset", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--steps", type=int, default=200, help="meta-steps per trial (the same for both arms)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--store", default=f"sqlite:///{REPO / '.orchestrator' / 'sweep_efficiency.db'}")
    args = p.parse_args()
    Path(REPO / ".orchestrator").mkdir(exist_ok=True)
    experiment = f"sweep-efficiency-{time.strftime('%Y%m%d-%H%M%S')}"

    rows = {}
    for arm in ARMS:
        summary = run_sweep(args, arm, experiment)
        rows[arm] = {**summary, **trial_stats(args.store, summary)}

    metric, mode = rows["tpe+asha"]["metric"], rows["tpe+asha"]["mode"]
    better = (lambda a, b: a <= b) if mode == "min" else (lambda a, b: a >= b)
    ok = better(rows["tpe+asha"]["best_metric"], rows["random"]["best_metric"])
    print(f"\n{args.method} on {args.dataset or 'digits'}: {args.trials} trials x {args.steps} steps, seed {args.seed}"
          f" ({mode} {metric} on validation classes)")
    print(f"{'':24}{'tpe+asha':>14}{'random':>14}")
    for label, key, fmt in (("best " + metric, "best_metric", "{:.2f}"), ("trials stopped early", "stopped_early", "{}"),
                            ("meta-steps trained", "steps_trained", "{}"), ("wall time (s)", "wall_s", "{:.0f}")):
        print(f"{label:24}" + "".join(f"{fmt.format(rows[a][key]):>14}" for a in ARMS))
    for k in ("fid_domain", "class_hit", "class_hit_scratch", "chance"):
        vals = [rows[a]["best_novel"].get(k) for a in ARMS]
        print(f"{'best trial, novel ' + k:24}" + "".join(f"{v:>14.3f}" if v is not None else f"{'-':>14}" for v in vals))
    print(f"tpe+asha best {'<=' if mode == 'min' else '>='} random best: {'yes' if ok else 'NO'}")
    print(json.dumps({"experiment": experiment, "store": args.store, "at_least_as_good": ok,
                      **{arm: {k: rows[arm][k] for k in ("parent_run_id", "best_metric", "best_config", "stopped_early",
                                                         "steps_trained", "wall_s", "best_novel")} for arm in ARMS}},
                     sort_keys=True))


if __name__ == "__main__":
    main()
