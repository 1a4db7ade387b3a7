"""Learning curves and time to signal, drawn by ``compare --curves``.

What a run records for them (a generator's ``train``/``sweep`` run, ``orchestrator.loop`` and
``orchestrator.lifecycle``): at every evaluation step the MLflow metric histories ``val_class_hit``,
``val_fid_domain`` and ``train_seconds`` (training only: validation and checkpointing excluded) with the
per-class validation values as ``val_per_class/val_per_class_step<step>.json``; once per run, before
training, the untrained control on the same validation classes (the run's own initial weights, adapted to
the shots as every checkpoint is) as ``val_class_hit_scratch``/``val_fid_domain_scratch`` (step 0) and
``val_per_class/untrained.json``.

For each method (a row of ``compare``: one run, or a replicate parent's seed runs) this module draws
validation ``class_hit`` and FID against meta-steps and against training seconds, the mean over the seed
runs with a band from their lowest to their highest value, and the untrained control as a horizontal line
(the mean over seeds). Only steps every seed run evaluated are drawn.

Time to signal: the first evaluated step at which validation ``class_hit`` separates from its untrained
control, i.e. the 95% interval of the paired difference ``class_hit(step) - class_hit(untrained)`` over
validation classes (and seeds: ``stats.paired_difference_ci``, crossed design) lies above 0. Reported as the
step and its mean training seconds, or "not within N steps" when no evaluated step separates (ours).
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

CURVE_METRICS = ("val_class_hit", "val_fid_domain")
SCRATCH = "_scratch"  # suffix of the untrained control's validation metrics


def _history(client, run_id: str, metric: str) -> dict[int, float]:
    return {int(m.step): float(m.value) for m in client.get_metric_history(run_id, metric) if math.isfinite(m.value)}


def _per_class(uri: str, run_id: str, name: str, tmp: str) -> dict[str, Any] | None:
    from orchestrator import tracking
    from orchestrator.kinds import VAL_PER_CLASS

    Path(tmp).mkdir(parents=True, exist_ok=True)
    try:
        path = tracking.download(uri, run_id, f"{VAL_PER_CLASS}/{name}", tmp)
    except Exception:  # noqa: BLE001 - a run recorded before per-class validation values existed
        return None
    return json.loads(Path(path).read_text())


def method_curves(uri: str, runs: list) -> dict[str, Any]:
    """The curves of one method over its seed runs (MLflow ``Run`` objects).

    Returns ``{"steps": [int], "train_seconds": [float] (mean over runs), "<metric>": {"mean", "low", "high"}
    (lists over steps) for each of ``CURVE_METRICS`` present, "<metric>_scratch": float (mean over runs) or None,
    "n_runs": int}``; steps are those every run evaluated (empty when they share none).
    """
    from orchestrator import tracking

    c = tracking.client(uri)
    ids = [r.info.run_id for r in runs]
    secs = [_history(c, i, "train_seconds") for i in ids]
    out: dict[str, Any] = {"n_runs": len(ids)}
    hists = {m: [_history(c, i, m) for i in ids] for m in CURVE_METRICS}
    common = set(hists["val_class_hit"][0]) if ids else set()
    for h in hists["val_class_hit"][1:] + secs:
        common &= set(h)
    steps = sorted(s for s in common if s > 0)
    out["steps"] = steps
    out["train_seconds"] = [float(np.mean([s[k] for s in secs])) for k in steps]
    for m in CURVE_METRICS:
        if all(all(k in h for k in steps) for h in hists[m]):
            v = np.array([[h[k] for k in steps] for h in hists[m]], dtype=float).reshape(len(ids), len(steps))
            out[m] = {"mean": v.mean(0).tolist(), "low": v.min(0).tolist(), "high": v.max(0).tolist()}
        scratch = [r.data.metrics.get(m + SCRATCH) for r in runs]
        out[m + SCRATCH] = float(np.mean(scratch)) if scratch and all(x is not None for x in scratch) else None
    return out


def time_to_signal(uri: str, runs: list, steps: list[int], train_seconds: list[float],
                   level: float = 0.95) -> dict[str, Any]:
    """The first of ``steps`` whose validation class_hit separates above the untrained control (module docstring).

    Returns ``{"step": int | None, "train_seconds": float | None, "diff": PairedCI | None (at that step, or at the
    last step when none separates), "reason": str}``; ``reason`` says why nothing could be computed (no per-class
    values recorded) when so.
    """
    from orchestrator.evaluation.stats import paired_difference_ci

    with tempfile.TemporaryDirectory() as tmp:
        scratch = [_per_class(uri, r.info.run_id, "untrained.json", f"{tmp}/{i}u") for i, r in enumerate(runs)]
        if not steps or any(s is None for s in scratch):
            return {"step": None, "train_seconds": None, "diff": None,
                    "reason": "no per-class untrained control recorded (runs from before it was added)"}
        b = np.array([s["per_class"]["class_hit"] for s in scratch], dtype=float)
        last = None
        for k, secs in zip(steps, train_seconds):
            rows = [_per_class(uri, r.info.run_id, f"val_per_class_step{k:07d}.json", f"{tmp}/{i}s{k}")
                    for i, r in enumerate(runs)]
            if any(x is None for x in rows):
                continue
            a = np.array([x["per_class"]["class_hit"] for x in rows], dtype=float)
            if a.shape != b.shape:
                continue
            last = paired_difference_ci(np.where(np.isnan(a), np.nan, a), b, level=level)
            if last.separated and last.mean > 0:
                return {"step": k, "train_seconds": secs, "diff": last, "reason": ""}
    return {"step": None, "train_seconds": None, "diff": last,
            "reason": "" if last is not None else "no per-class validation values recorded"}


def describe_signal(label: str, sig: dict[str, Any], last_step: int | None) -> str:
    """One printed line: ``mfh: time to signal step 400 (35.2 train s), class_hit - untrained +0.21 [0.08, 0.33]``."""
    d = sig.get("diff")
    iv = f"class_hit - untrained {d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]" if d is not None else ""
    if sig["step"] is not None:
        return f"{label}: time to signal step {sig['step']} ({sig['train_seconds']:.1f} train s), {iv}"
    if d is not None:
        return f"{label}: no signal within {last_step} steps (last step: {iv}, covers 0 or below)"
    return f"{label}: time to signal n/a ({sig['reason']})"


def report(uri: str, methods: list[tuple[str, list]], out: Path | str) -> dict[str, Any]:
    """Draw every method's curves into ``out`` (PNG) and print each method's time to signal.

    ``methods``: (label, seed runs) pairs, e.g. ``compare``'s rows (a replicate parent's seed runs, or one run).
    Returns ``{"figure": str, "methods": {label: {"curves": ..., "time_to_signal": {"step", "train_seconds",
    "mean", "low", "high"}}}}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), squeeze=False)
    result: dict[str, Any] = {"methods": {}}
    print("time to signal (validation class_hit above the untrained control, paired over validation classes "
          "and seeds, 95% interval):")
    for i, (label, runs) in enumerate(methods):
        cur = method_curves(uri, runs)
        colour = f"C{i % 10}"
        for row, m in enumerate(CURVE_METRICS):
            if m not in cur or not cur["steps"]:
                continue
            for col, x in enumerate((cur["steps"], cur["train_seconds"])):
                ax = axes[row][col]
                ax.plot(x, cur[m]["mean"], color=colour, marker="o", ms=3, label=f"{label} (n={cur['n_runs']})")
                if cur["n_runs"] > 1:
                    ax.fill_between(x, cur[m]["low"], cur[m]["high"], color=colour, alpha=0.2)
                if cur.get(m + SCRATCH) is not None:
                    ax.axhline(cur[m + SCRATCH], color=colour, ls="--", lw=1)
        sig = time_to_signal(uri, runs, cur["steps"], cur["train_seconds"])
        print("  " + describe_signal(label, sig, cur["steps"][-1] if cur["steps"] else None), flush=True)
        d = sig.get("diff")
        result["methods"][label] = {"curves": cur, "time_to_signal": {
            "step": sig["step"], "train_seconds": sig["train_seconds"],
            **({"mean": d.mean, "low": d.low, "high": d.high} if d is not None else {})}}
    for row, m in enumerate(CURVE_METRICS):
        for col, xl in enumerate(("meta-steps", "training seconds (validation excluded)")):
            ax = axes[row][col]
            ax.set_xlabel(xl)
            ax.set_ylabel(m)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("validation curves: mean over seeds, band = lowest..highest seed; dashed = untrained control")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"learning curves: {out.resolve()}", flush=True)
    result["figure"] = str(out.resolve())
    return result
