"""Print a markdown table of replicate parents' `mean [low, high]` from `train --replicates N --json` outputs.

    python scripts/replicates_table.py results/mfh.out results/mfh_nodiv.out -m fid_domain class_hit memorized_share

Each file's last line is the JSON line `train --replicates N --json` printed; each column is one file. Ours: a
reader of the product's own JSON, used for the tables of docs/results.md beside `compare`'s.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def fmt(x: float | None) -> str:
    if x is None:  # the product's JSON writes a metric it could not compute as null
        return "not computed"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("-m", "--metrics", nargs="+", required=True)
    ap.add_argument("--names", nargs="*", help="column names (default: the file names)")
    args = ap.parse_args()
    rows = [json.loads(f.read_text().strip().splitlines()[-1]) for f in args.files]
    names = args.names or [f.stem for f in args.files]
    print("| metric | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for m in args.metrics:
        cells = []
        for r in rows:
            if r.get(f"{m}_mean") is None and f"{m}_mean" in r:
                cells.append("not computed")
            elif f"{m}_mean" in r:
                cells.append(f"{fmt(r[m + '_mean'])} [{fmt(r[m + '_ci_low'])}, {fmt(r[m + '_ci_high'])}]")
            else:
                cells.append(fmt(r[m]) if isinstance(r.get(m), (int, float)) else "–")
        print(f"| `{m}` | " + " | ".join(cells) + " |")
    print("| replicate parent | " + " | ".join(f"`{r['run_id'][:8]}`" for r in rows) + " |")


if __name__ == "__main__":
    main()
