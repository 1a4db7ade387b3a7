"""Pre-generation throughput with 1 and with 2 actors, and the ratio, in one run.

Both arms fit the same images with the same settings into fresh folders on one local Ray
(started once, with one CPU per actor). Throughput is images per second from the moment every
actor is ready (loading BigGAN and the perceptual net is reported separately as start-up), so
the ratio measures the pool, not Ray's start-up. Without ``--biggan`` a tiny random BigGAN
(32×32, channel width 4) is written to a temp folder, so it runs offline; with the ImageNet
weights and ``--gpus-per-actor 1`` it measures a GPU node.

    python benchmarks/pregenerate_throughput.py --dataset omniglot --data-root ../shared/datasets/omniglot \\
        --images 8 --steps 100 [--biggan DIR] [--gpus-per-actor 1]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="omniglot")
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "datasets" / "omniglot"))
    ap.add_argument("--biggan", help="BigGAN folder (default: a tiny random one written to a temp folder)")
    ap.add_argument("--images", type=int, default=8, help="images per arm (novel classes, first N)")
    ap.add_argument("--steps", type=int, default=100, help="Adam steps per image")
    ap.add_argument("--variants", type=int, default=10)
    ap.add_argument("--gpus-per-actor", type=float, default=0)
    ap.add_argument("--set", action="append", default=["lambda_perc=0"],
                    help="FinetuneGAN config (default lambda_perc=0: no base-class CNN to train first)")
    ap.add_argument("--store", help="MLflow URI (default: a temp SQLite file)")
    args = ap.parse_args()

    import ray

    from methods.finetunegan import save_tiny_biggan
    from orchestrator.pregenerate import pregenerate

    tmp = Path(tempfile.mkdtemp(prefix="pgbench-"))
    biggan = args.biggan or str(save_tiny_biggan(tmp / "biggan"))
    uri = args.store or f"sqlite:///{tmp / 'mlflow.db'}"
    ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    results = {}
    try:
        for actors in (1, 2):
            r = pregenerate(dataset=args.dataset, data_root=args.data_root, biggan=biggan, out=tmp / f"out{actors}",
                            actors=actors, variants=args.variants, steps=args.steps, classes="novel",
                            limit=args.images, sets=args.set, gpus_per_actor=args.gpus_per_actor, uri=uri,
                            experiment="pregenerate-benchmark", progress=False)
            results[actors] = r
            print(f"{actors} actor(s): {r['images_done']} images in {r['seconds']:.1f}s = "
                  f"{r['images_per_s']:.3f} images/s (start-up {r['startup_s']:.1f}s)", flush=True)
    finally:
        ray.shutdown()
    ratio = results[2]["images_per_s"] / results[1]["images_per_s"]
    print(f"ratio 2 actors / 1 actor: {ratio:.2f}x (cpu cores: {os.cpu_count()}, "
          f"load average now: {os.getloadavg()[0]:.1f})")
    print(json.dumps({"images_per_s_1": results[1]["images_per_s"], "images_per_s_2": results[2]["images_per_s"],
                      "ratio": ratio, "images": args.images, "steps": args.steps}))


if __name__ == "__main__":
    main()
