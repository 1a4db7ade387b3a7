"""Write Omniglot characters into LoFGAN's array layout (classes x images x 128 x 128 x 3, uint8), for tests of
the .npy benchmarks on real images (docs/protocol_sensitivity.md).

    python scripts/omniglot_to_npy.py OUT.npy [--classes 100] [--size 128]

The first ``--classes`` characters in the loader's class order (background alphabets first), all 20 drawings
of each, grey replicated to RGB. Read as ``--dataset flowers-npy --data-root OUT.npy``: classes [85:] are then
the unseen ones, and the first 10 drawings of each its conditioning pool.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from orchestrator.data import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    ds = load_dataset("omniglot", os.environ.get("FSIG_DATASETS"), image_size=args.size, channels=3)
    per = min(len(ds.class_indices(c)) for c in range(args.classes))
    x = np.stack([ds.images[ds.class_indices(c)[:per]].permute(0, 2, 3, 1).numpy() for c in range(args.classes)])
    np.save(args.out, x)
    print(f"{args.out}: {x.shape} {x.dtype}")


if __name__ == "__main__":
    main()
