"""CPU time of the protocol-sensitivity table's parts (docs/protocol_sensitivity.md, "The cost"), in one run.

MFH with its default config (random weights: the cost does not depend on them) on a LoFGAN-layout ``.npy``:
CPU-milliseconds per fake (``adapt`` of 3 shots + ``sample(1)``) with one ``adapt`` per fake and through
``adapt_many`` (``evaluation.lofgan.generate``), at 1 and 2 torch threads; per image of the domain features and of
the FID Inception architecture (randomly initialised: the same cost as the FID weights); and the CPU seconds of
three sensitivity rows for one seed (``lofgan-seeded``, ``per-class``: reusing its fakes, ``lofgan-v1``).
CPU time is ``time.process_time`` (every thread of the process), so a busy machine inflates wall time but
not this.

    python benchmarks/protocol_sensitivity_cost.py omniglot_flowers_layout.npy [--dataset flowers-npy]
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("npy")
    ap.add_argument("--dataset", default="flowers-npy")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=1)
    args = ap.parse_args()
    import numpy as np
    import torch

    from methods.mfh import MFH
    from orchestrator.data import load_dataset, make_split
    from orchestrator.evaluation import lofgan
    from orchestrator.kinds import build_method, features_for

    spec = importlib.util.spec_from_file_location("protocol_sensitivity", REPO / "scripts" / "protocol_sensitivity.py")
    ps = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = ps
    spec.loader.exec_module(ps)

    ds = load_dataset(args.dataset, args.npy, image_size=args.image_size, channels=args.channels)
    split = make_split(ds, seed=0)
    model = build_method("mfh", dict(MFH.default_config), ds.image_shape, num_classes=ds.num_classes)
    n_images = len(ds.class_indices(split.novel[0]))
    v = lofgan.parse_variant("preset=published,seed=0,fakes=64")
    sel = lofgan.select(len(split.novel), n_images, lofgan.pool_size(args.dataset, v), v, np.random.RandomState(0))
    classes = split.novel[:2]

    class OneAdaptPerFake:  # no adapt_many: lofgan.generate adapts triple by triple
        def adapt(self, shots, seed, steps=None):
            return model.adapt(shots, seed, steps)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads by default; CPU ms per fake "
          f"({len(classes)} classes x {v.fakes} fakes, {ds.image_shape}):")
    for threads in (2, 1):
        torch.set_num_threads(threads)
        for name, m in (("one adapt per fake", OneAdaptPerFake()), ("adapt_many per 16", model)):
            lofgan.generate(m, ds, classes[:1], sel, seed=0, adapt_steps=None, which={classes[0]: [0, 1]})  # warm-up
            t = time.process_time()
            n = sum(len(x) for x in lofgan.generate(m, ds, classes, sel, seed=0, adapt_steps=None).values())
            print(f"  {threads} thread(s), {name}: {(time.process_time() - t) / n * 1000:.1f}")
    torch.set_num_threads(1)
    feats = {"domain": features_for(ds, split, None, domain_only=True)}
    x = torch.rand(512, *ds.image_shape) * 2 - 1
    feats["domain"](x[:8])
    t = time.process_time()
    feats["domain"](x)
    print(f"domain features, 1 thread: {(time.process_time() - t) / len(x) * 1000:.2f} CPU ms per image")
    inception = ps.random_inception(Path(tempfile.mkdtemp(prefix="fsig-cost-")))
    x = x[:16]
    inception(x[:2])
    t = time.process_time()
    inception(x)
    print(f"FID Inception features (299 px), 1 thread: {(time.process_time() - t) / len(x) * 1000:.0f} CPU ms per image")
    rows = ["lofgan-seeded", "per-class", "lofgan-v1"]
    t = time.process_time()
    ps.run_rows(model, ds, split, args.dataset, feats, [0], rows=rows, progress=False)
    print(f"rows {', '.join(rows)} (seed 0, {len(split.novel)} classes x 128 fakes), 1 thread: "
          f"{time.process_time() - t:.1f} CPU s")


if __name__ == "__main__":
    main()
