"""A finished generator run beside its positive control, as one picture (the README's figure).

For the first ``--classes`` novel classes of run RUN_ID, one row each: the conditioning shot(s), then ``--n``
samples of the method adapted to them exactly as the protocol adapts it, then ``--n`` images of the augmented
control (``orchestrator.evaluation.protocol.augmented_control``: the shots under seeded classic augmentation).
Shots come from the protocol's own seeded permutation (``split_shots``) for ``--eval-seed``, so a row shows the
same shots the run's ``class_hit`` was measured on.

    python scripts/controls_figure.py RUN_ID --tracking-uri sqlite:///mlflow.db --out docs/mfh_controls.png

Output: a PNG grid, rows = classes, columns = shots | method samples | augmented control. Raises UserError (exit
2, one line) for a run that is not a finished generator run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from orchestrator import lifecycle, tracking
from orchestrator.data import Split, load_dataset
from orchestrator.errors import UserError
from orchestrator.evaluation import save_grid
from orchestrator.evaluation.protocol import augmented_control, generate_class, split_shots
from orchestrator.kinds import build_method


def figure(uri: str, run_id: str, out: Path, classes: int, n: int, eval_seed: int) -> Path:
    """Write the grid described in the module docstring to ``out``; returns ``out``."""
    method, cfg, split_dict, state = lifecycle.load_run(uri, run_id)
    lifecycle.require_generator(method, run_id, "controls_figure")
    ds = load_dataset(cfg["dataset"], cfg["data_root"] or None, image_size=int(cfg["image_size"]),
                      channels=int(cfg["channels"]))
    split = Split.from_dict(split_dict)
    model = build_method(method, cfg, tuple(ds.image_shape), num_classes=len(split_dict["class_names"]))
    model.load_state_dict(state["state"])
    rows = []
    for c in list(split.novel)[:classes]:
        shot_idx, _ = split_shots(ds, c, int(cfg["shots"]), eval_seed)
        shots = ds.get(shot_idx)
        fake = generate_class(model, shots, c, eval_seed, n, None, tuple(ds.image_shape))  # as the protocol makes them
        rows.append(torch.cat([shots, fake, augmented_control(shots, n, eval_seed, c)]))
    save_grid(torch.cat(rows), out, nrow=rows[0].shape[0])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_id")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--out", type=Path, default=Path("controls.png"))
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--n", type=int, default=6, help="images per row for the method and for the control")
    ap.add_argument("--eval-seed", type=int, default=0)
    args = ap.parse_args(argv)
    uri = args.tracking_uri or tracking.default_tracking_uri()
    try:
        print(figure(uri, args.run_id, args.out, args.classes, args.n, args.eval_seed))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
