"""How far the choice of evaluation protocol moves FID and LPIPS/diversity for one finished generator run.

    python scripts/protocol_sensitivity.py RUN_ID --tracking-uri URI [--seeds 0 1 2] [--k-shots 5]
        [--more-fakes 512] [--fakes 128] [--inception-weights FILE | --random-inception] [--rows a,b,...]
        [--threads 1] [--partial RESULTS.jsonl] [--markdown OUT.md]

Every row evaluates the run's checkpoint on its novel classes under one protocol, once per evaluation seed,
and prints the mean with a 95% t-interval over the seeds, and the mean paired difference (same seed) from the
baseline row ``lofgan-seeded`` (LoFGAN's published procedure, ``preset=published``, with its seed fixed to the
evaluation seed) with its 95% t-interval. Rows (each changes one thing from the baseline):

- ``lofgan-published``: the seed commented out, as LoFGAN's HEAD (a fresh draw per evaluation);
- ``lofgan-v1``: LoFGAN 51620ad / WaveGAN (no permutation, every real once);
- ``shots-k``: ``--k-shots`` support images per fake instead of 3; ``fakes-more``: ``--more-fakes`` per class;
- ``per-class``: mean of per-class FIDs instead of the pooled FID;
- ``inception``: Inception features instead of the run's domain features (with ``--random-inception`` a
  randomly initialised FID Inception, labelled RANDOM-INIT: it shows the size of the feature-space effect,
  never a comparable FID); ``inception-antialias``: the same with antialiased resizing to 299;
- ``ours``: this product's default protocol (``evaluate_generator``: seeded shots per class, reals = the class's
  other images, FID on base-standardised features: a different unit, shown for reference, no difference).

Cost: seed by seed, the rows that differ from the baseline only in scoring (``per-class``, ``inception``,
``inception-antialias``) take the baseline's fakes instead of generating them again, ``fakes-more`` takes those
whose draws coincide with the baseline's (the first class's first 128: main_metric.py draws class after class),
and each distinct real image goes through a feature network once (``evaluation.lofgan.Reuse``); the numbers
equal separate evaluations within float tolerance (``tests/test_lofgan_protocol.py``).

LPIPS only with the run's ``lpips_weights`` (a VGG16 file, as LoFGAN); otherwise the column is the mean pairwise
feature distance (``lofgan_diversity_<kind>``), named as such. Nothing is written to MLflow.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROWS = ("lofgan-seeded", "lofgan-published", "lofgan-v1", "shots-k", "fakes-more", "per-class", "inception",
        "inception-antialias", "ours")


@dataclass
class Row:
    name: str
    what: str
    fid: list[float]
    div: list[float]
    div_name: str
    seconds: float
    kind: str = "domain"


def t_interval(x: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval of ``x`` (NaNs dropped); the interval is NaN with fewer than 2 values."""
    from scipy import stats

    v = np.asarray([a for a in x if a == a], dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if len(v) < 2:
        return m, math.nan, math.nan
    h = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - h, m + h


def run_rows(model: Any, ds: Any, split: Any, dataset: str, features: dict[str, Any], seeds: list[int], *,
             rows: list[str], k_shots: int = 5, more_fakes: int = 512, fakes: int = 128,
             lpips_model: Callable | None = None, ours: Callable[[int], tuple[float, float, str]] | None = None,
             progress: bool = True, done: dict[tuple[str, int], dict[str, Any]] | None = None,
             on_result: Callable[[dict[str, Any]], None] | None = None) -> list[Row]:
    """Evaluate each row of ``rows`` under every seed of ``seeds``; ``features``: kind -> ``Features``
    (``domain`` required; ``inception`` for the Inception rows). ``ours(seed)`` -> (fid, diversity, names).
    ``fakes``: fakes per class of every row but ``fakes-more`` (LoFGAN's 128; fewer only to try the command).
    A row's ``seconds`` are its own: a row that reuses the baseline's fakes spends them on scoring only.
    ``done``: (row, seed) -> a result ``on_result`` was given before (``{"row", "seed", "fid", "div", "div_name",
    "seconds"}``), taken as it is instead of evaluated again; ``on_result`` gets each new one."""
    from orchestrator.evaluation import lofgan

    n = f"fakes={fakes}"
    specs = {
        "lofgan-seeded": (f"preset=published,seed={{s}},{n}", "domain", "LoFGAN HEAD procedure, seed fixed (baseline)"),
        "lofgan-published": (f"preset=published,{n}", "domain", "LoFGAN HEAD as published: unseeded"),
        "lofgan-v1": (f"preset=seeded,seed={{s}},{n}", "domain", "LoFGAN 51620ad / WaveGAN: no permutation, all reals once"),
        "shots-k": (f"preset=published,seed={{s}},shots={k_shots},{n}", "domain", f"{k_shots} shots per fake, not 3"),
        "fakes-more": (f"preset=published,seed={{s}},fakes={more_fakes}", "domain",
                       f"{more_fakes} fakes per class, not {fakes}"),
        "per-class": (f"preset=published,seed={{s}},fid=per-class,{n}", "domain", "mean of per-class FIDs, not pooled"),
        "inception": (f"preset=published,seed={{s}},{n}", "inception", "Inception features, not domain"),
        "inception-antialias": (f"preset=published,seed={{s}},resize=antialias,{n}", "inception",
                                "Inception, antialiased bicubic resize to 299"),
    }
    table: dict[str, Row] = {}
    for name in rows:  # the rows that apply, in the order asked
        if name == "ours":
            if ours is not None:
                table[name] = Row(name, "this product's default protocol (base-standardised features: other units)",
                                  [], [], "", 0.0, "ours")
            continue
        text, kind, what = specs[name]
        if kind in features:
            if kind == "inception" and getattr(features[kind], "random_init", False):
                what += " (RANDOM-INIT Inception: not the FID network)"
            table[name] = Row(name, what, [], [], "", 0.0, kind)
    # Seed by seed, every row: rows that share the baseline's selection (per-class, inception, inception-antialias;
    # fakes-more for the fakes whose draws coincide) take its fakes from ``reuse`` instead of generating them again,
    # and every row takes a real image's features from it (the same dataset images recur across rows and seeds).
    reuse = lofgan.Reuse()
    for s in seeds:
        reuse.fakes.clear()  # fakes are keyed by the seed: none of this seed's recur under the next
        reuse.lpips.clear()
        for name, row in table.items():
            t0 = time.perf_counter()
            if (name, s) in (done or {}):
                got = done[(name, s)]
                row.fid.append(float(got["fid"]))
                row.div.append(float(got["div"]))
                row.div_name, row.seconds = got["div_name"], row.seconds + float(got["seconds"])
                continue
            if name == "ours":
                f, d, row.div_name = ours(s)
            else:
                feats = features[row.kind]
                v = lofgan.parse_variant(specs[name][0].format(s=s))
                r = lofgan.evaluate_lofgan(model, ds, split.novel, feats, v, num=lofgan.pool_size(dataset, v),
                                           lpips_model=lpips_model, progress=False, reuse=reuse)
                row.div_name = "lofgan_lpips" if lpips_model is not None else f"lofgan_diversity_{feats.kind}"
                f, d = r.metrics[f"lofgan_fid_{feats.kind}"], r.metrics[row.div_name]
            row.fid.append(f)
            row.div.append(d)
            row.seconds += time.perf_counter() - t0
            if on_result is not None:
                on_result({"row": name, "seed": s, "fid": f, "div": d, "div_name": row.div_name,
                           "seconds": time.perf_counter() - t0})
            if progress:
                print(f"[sensitivity] seed {s} {name}: FID {f:.4g} {row.div_name} {d:.4g} "
                      f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    return list(table.values())


def _fmt(m: float, lo: float, hi: float) -> str:
    if m != m:
        return "not computed"
    return f"{m:.4g}" if lo != lo else f"{m:.4g} [{lo:.4g}, {hi:.4g}]"


BASELINES = {"domain": "lofgan-seeded", "inception": "inception"}  # per feature kind: FIDs of two kinds differ in units


def markdown(rows: list[Row]) -> str:
    """The table: per row, FID and diversity means with 95% intervals over seeds, and the paired difference
    (same seed) from the baseline row of its feature kind (``BASELINES``) with its interval; none for ``ours``,
    whose units differ."""
    lines = ["| row | what changes | FID | Δ FID vs its baseline (paired by seed) | diversity (column name) | Δ diversity | own seconds |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        dfid = dd = "—"
        base = next((b for b in rows if b.name == BASELINES.get(r.kind)), None)
        comparable = base is not None and r is not base and len(r.fid) == len(base.fid)
        if comparable:
            if r.div_name == base.div_name:
                dd = _fmt(*t_interval([a - b for a, b in zip(r.div, base.div)]))
            dfid = _fmt(*t_interval([a - b for a, b in zip(r.fid, base.fid)]))
        lines.append(f"| {r.name} | {r.what} | {_fmt(*t_interval(r.fid))} | {dfid} | "
                     f"{_fmt(*t_interval(r.div))} ({r.div_name}) | {dd} | {r.seconds:.0f} |")
    return "\n".join(lines)


def random_inception(folder: Path, seed: int = 0) -> Any:
    """A RANDOMLY INITIALISED FID Inception (``features.fid_inception_architecture``, torch seed ``seed``) as
    ``Features`` of kind ``inception`` with ``random_init = True`` and a description saying so."""
    from orchestrator.evaluation.features import FID_WEIGHTS_FILENAME, fid_inception_architecture, inception_features

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FID_WEIGHTS_FILENAME
    torch.save(fid_inception_architecture().state_dict(), path)
    f = inception_features(path)
    f.random_init = True
    f.description = f"RANDOM-INIT FID Inception architecture (torch seed {seed}), NOT the FID weights"
    return f


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_id")
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--k-shots", type=int, default=5)
    ap.add_argument("--more-fakes", type=int, default=512)
    ap.add_argument("--fakes", type=int, default=128,
                    help="fakes per class of every other row (LoFGAN's 128; fewer only to try the command)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: the generator is called on one image at a time, too little work "
                         "to share; on a busy machine idle threads waiting on each other burn the CPU instead)")
    ap.add_argument("--inception-weights")
    ap.add_argument("--random-inception", action="store_true")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--partial", type=Path,
                    help="JSON lines of finished (row, seed) results: appended as they finish, and those already in "
                         "it are not evaluated again (resume an interrupted table with the same arguments)")
    args = ap.parse_args(argv)
    from orchestrator import lifecycle
    from orchestrator.errors import UserError
    from orchestrator.evaluation import evaluate_generator, lofgan
    from orchestrator.evaluation.features import inception_features
    from orchestrator.kinds import build_method, features_for, lpips_for

    if args.threads < 1 or args.fakes < 2 or args.more_fakes < 2:
        raise SystemExit("--threads must be >= 1, --fakes and --more-fakes >= 2")
    torch.set_num_threads(args.threads)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        raise SystemExit(f"--rows {','.join(bad)}: unknown; choose from {','.join(ROWS)}")
    try:
        method, cfg, split_dict, state = lifecycle.load_run(args.tracking_uri, args.run_id)
        prep = lifecycle.prepare(method, cfg, split_dict)
        ds, split = prep.ds, prep.split
        model = build_method(method, cfg, ds.image_shape, num_classes=ds.num_classes)
        model.load_state_dict(state["state"])
        feats = {"domain": features_for(ds, split, None, domain_only=True)}
        if args.inception_weights:
            feats["inception"] = inception_features(args.inception_weights)
        elif args.random_inception:
            feats["inception"] = random_inception(Path(tempfile.mkdtemp(prefix="fsig-random-inception-")))
        lp = lofgan.lofgan_lpips_model(cfg.get("lpips_weights"))
        ours_lpips = lpips_for(cfg)

        def ours(seed: int) -> tuple[float, float, str]:
            r = evaluate_generator(model, None, ds, split.novel, feats["domain"], shots=int(cfg["shots"]),
                                   n_generate=args.fakes, seed=seed, controls=False, progress=False, lpips=ours_lpips)
            name = "lpips_diversity" if ours_lpips is not None else "(none without controls)"
            return r.metrics["fid_domain"], r.metrics.get("lpips_diversity", math.nan), name

        # a result is taken from --partial only when it was measured with these settings
        settings = {"run_id": args.run_id, "fakes": args.fakes, "more_fakes": args.more_fakes, "k_shots": args.k_shots,
                    "inception_weights": args.inception_weights, "random_inception": args.random_inception}
        done: dict[tuple[str, int], dict[str, Any]] = {}
        if args.partial is not None and args.partial.is_file():
            for line in args.partial.read_text().splitlines():
                r = json.loads(line) if line.strip() else {}
                if r.get("settings") == settings:
                    done[(r["row"], int(r["seed"]))] = r
            print(f"[sensitivity] {len(done)} (row, seed) results taken from {args.partial}", file=sys.stderr)

        def keep(result: dict[str, Any]) -> None:
            if args.partial is not None:
                with args.partial.open("a") as fh:
                    fh.write(json.dumps({**result, "settings": settings}) + "\n")

        t0 = time.perf_counter()
        table = run_rows(model, ds, split, cfg["dataset"], feats, args.seeds, rows=rows, k_shots=args.k_shots,
                         more_fakes=args.more_fakes, fakes=args.fakes, lpips_model=lp, ours=ours, done=done,
                         on_result=keep)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = markdown(table)
    head = (f"run {args.run_id} ({method}, {cfg['dataset']}, {len(split.novel)} novel classes, "
            f"{cfg['image_size']} px), seeds {args.seeds}, {time.perf_counter() - t0:.0f} s on {os.cpu_count()} CPUs "
            f"({torch.get_num_threads()} torch threads)")
    print(head)
    print(text)
    if args.markdown:
        args.markdown.write_text(head + "\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
