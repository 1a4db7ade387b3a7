"""``python -m orchestrator pregenerate``: FinetuneGAN variants of support images by a pool of Ray actors.

Variants come from a local BigGAN fitted per image (``--biggan PATH``, MetaIRNet §4.1) or from any
trained generator run adapted on the single image through the method interface (``--from-run
RUN_ID``: ``Method.adapt`` on that one shot, then ``sample``); both write the same store, which
the classifiers read (``train metairnet --set generated=DIR``).

Why a pool of actors: fitting BigGAN to one image takes ~20 s on a GPU (500 Adam steps), and the
images are independent, so N actors, each holding one generator (one GPU each with
``--gpus-per-actor``), give N× the throughput; the driver only hands out images and writes results.

Store: a Parquet dataset in ``--out`` (pyarrow), one shard file per source image
(``part-<image id>.parquet``: one row per variant with the source image id, class, variant index,
seed, final loss and PNG bytes). Only the driver writes, each shard to a hidden temp file renamed
into place, so a shard is either complete or absent: a restart after a crash, SIGTERM or Ctrl-C
lists the shards, skips those images, and can never write a row twice. ``_manifest.json`` holds
the settings; a restart with different settings into the same folder is refused.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.data import registry as datasets
from orchestrator.errors import UserError
from orchestrator.interrupt import TAG, as_interrupted, on_signals

CLASS_PARTS = ("base", "val", "novel")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help=datasets.help_text())
    p.add_argument("--data-root", help="local folder holding the dataset's files")
    p.add_argument("--image-size", type=int, help="load images at this size (default: the generator's resolution)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="1 = grayscale, 3 = RGB (default 1; with --from-run the run's)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the base/val/novel class split")
    p.add_argument("--classes", default="all", help="which split parts: all (default) or e.g. novel, base,val")
    p.add_argument("--per-class", type=int, default=0, help="only the first N images of each class (0 = all)")
    p.add_argument("--limit", type=int, default=0, help="only the first N images overall (0 = all)")
    p.add_argument("--biggan", help="local BigGAN folder (config.json + pytorch_model.bin): FinetuneGAN variants")
    p.add_argument("--from-run", metavar="RUN_ID",
                   help="instead of BigGAN: a trained generator run (FIGR, MFH, ...) adapted on each image "
                        "(Method.adapt on that one shot, then sample)")
    p.add_argument("--perceptual-weights",
                   help="torchvision ImageNet VGG-16 or ResNet-18 state dict for the perceptual loss "
                        "(default: a CNN trained on the dataset's base classes)")
    p.add_argument("--actors", type=int, default=1, help="generator actors (each holds one BigGAN)")
    p.add_argument("--cpus-per-actor", type=float, default=1)
    p.add_argument("--gpus-per-actor", type=float, default=0, help="> 0: each actor's generator runs on a GPU")
    p.add_argument("--variants", type=int, default=10, help="variants per source image (the paper: 10)")
    p.add_argument("--steps", type=int, help="Adam steps per image (default 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of every image's fit and variants")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="FinetuneGAN config (lr_z, lr_scale_shift, lambda_perc, lambda_z, truncation, ...)")
    p.add_argument("--out", required=True, type=Path, help="output folder of the Parquet dataset")
    p.add_argument("--experiment", default=None, help="MLflow experiment name")
    p.add_argument("--address", help="existing Ray cluster (default: start a local one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# The store's format lives in orchestrator.store (a lower layer the classifiers read too).
from orchestrator.store import (MANIFEST, SCHEMA, decode_png, done_ids, encode_png, read_manifest,  # noqa: E402,F401
                                read_store, shard_path, write_shard)


# ----------------------------------------------------------------------------- the actors -----

def image_seed(seed: int, image_id: int) -> int:
    return int(np.random.default_rng([int(seed) % 2**63, int(image_id)]).integers(2**31))


class FinetuneWorker:
    """What each actor holds: one BigGAN (FinetuneGAN) and its perceptual backbone."""

    def __init__(self, biggan: str, config: dict[str, Any], perceptual: dict[str, Any], threads: int, gpu: bool):
        import torch

        from methods.finetunegan import FinetuneGAN, domain_perceptual, imagenet_perceptual, load_biggan

        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
        net, self.perceptual_kind = None, perceptual["kind"]
        if perceptual["kind"] == "imagenet":
            net, self.perceptual_kind = imagenet_perceptual(perceptual["weights"])
        elif perceptual["kind"] == "domain":
            body = torch.nn.Sequential(*perceptual["layers"])
            body.load_state_dict(perceptual["state_dict"])
            net = domain_perceptual(body, perceptual["in_channels"], perceptual["image_size"])
        if net is not None:
            net = net.to(self.device)
        self.gan = FinetuneGAN(load_biggan(biggan), config, perceptual=net, device=self.device)

    def ready(self) -> dict[str, Any]:
        """Warm up (one step on a blank image: lazy allocations, kernels) and say what was loaded."""
        import torch

        self.gan.fit(torch.zeros(3, self.gan.resolution, self.gan.resolution), seed=0, steps=1)
        return {"device": str(self.device), "perceptual": self.perceptual_kind, "pid": os.getpid(),
                "resolution": self.gan.resolution}

    def process(self, item: dict[str, Any], variants: int) -> dict[str, Any]:
        import torch

        image = torch.tensor(item["image"], dtype=torch.float32).div(127.5).sub(1.0)  # a copy: Ray arrays are read-only
        fit = self.gan.fit(image, seed=item["seed"])
        images = self.gan.variants(variants, seed=item["seed"]).cpu()
        rows = [{"image_id": item["image_id"], "label": item["label"], "class_name": item["class_name"],
                 "variant": i, "seed": item["seed"], "loss": fit.loss, "png": encode_png(img)}
                for i, img in enumerate(images)]
        return {"image_id": item["image_id"], "rows": rows, "loss": fit.loss, "seconds": fit.seconds}


class RunWorker:
    """What each actor holds when variants come from a trained generator run: the method, adapted per image."""

    def __init__(self, method: str, cfg: dict[str, Any], state: dict[str, Any], image_shape: tuple, num_classes: int,
                 threads: int, gpu: bool):
        import torch

        from orchestrator.kinds import build_method

        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
        self.model = build_method(method, cfg, tuple(image_shape), self.device, num_classes)
        self.model.load_state_dict(state)
        self.method = method

    def ready(self) -> dict[str, Any]:
        return {"device": str(self.device), "perceptual": "n/a", "pid": os.getpid()}

    def process(self, item: dict[str, Any], variants: int) -> dict[str, Any]:
        import torch

        t0 = time.perf_counter()
        shot = torch.tensor(item["image"], dtype=torch.float32).div(127.5).sub(1.0)[None].to(self.device)
        images = self.model.adapt(shot, seed=item["seed"]).sample(variants, seed=item["seed"]).detach().cpu()
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        rows = [{"image_id": item["image_id"], "label": item["label"], "class_name": item["class_name"],
                 "variant": i, "seed": item["seed"], "loss": float("nan"), "png": encode_png(img)}
                for i, img in enumerate(images)]
        return {"image_id": item["image_id"], "rows": rows, "loss": float("nan"), "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------ the driver -----

def biggan_resolution_of(path: Path) -> int:
    """The generator's output size from its config.json (4·2^up-sampling blocks), or a UserError."""
    path = Path(path)
    missing = [f for f in ("config.json", "pytorch_model.bin") if not (path / f).is_file()]
    if missing:
        raise UserError(f"--biggan {path}: no {' or '.join(missing)} there; pass a folder holding a "
                        f"pytorch-pretrained-biggan config.json and pytorch_model.bin (the ImageNet weights "
                        f"are fetched once with network access, see docs/methods.md, section 'BigGAN weights')")
    try:
        layers = json.loads((path / "config.json").read_text())["layers"]
        return 4 * 2 ** sum(1 for layer in layers if layer[0])
    except (json.JSONDecodeError, KeyError, TypeError, IndexError):
        raise UserError(f"--biggan {path}: config.json is not a BigGAN config; re-save it with "
                        f"pytorch-pretrained-biggan") from None


def _parts(spec: str) -> list[str]:
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if parts == ["all"]:
        return list(CLASS_PARTS)
    bad = [p for p in parts if p not in CLASS_PARTS]
    if bad or not parts:
        raise UserError(f"--classes {spec}: expected all or a comma list of {', '.join(CLASS_PARTS)}")
    return parts


def select_images(ds, split, parts: list[str], per_class: int, limit: int) -> list[int]:
    """Dataset indices of the chosen classes' images, in order (first ``per_class`` of each class)."""
    ids: list[int] = []
    for c in sorted(c for part in parts for c in getattr(split, part)):
        idx = [int(i) for i in ds.class_indices(c)]
        ids += idx[:per_class] if per_class > 0 else idx
    ids.sort()
    return ids[:limit] if limit > 0 else ids


def perceptual_spec(ds, split, cfg: dict[str, Any], weights: str | None) -> dict[str, Any]:
    """Which perceptual backbone the actors build: ImageNet weights when given, else base-class CNN."""
    if float(cfg["lambda_perc"]) <= 0:
        return {"kind": "none", "description": "none (lambda_perc = 0)"}
    if weights:
        if not Path(weights).is_file():
            raise UserError(f"--perceptual-weights {weights}: no such file; pass a torchvision vgg16 or resnet18 "
                            f"ImageNet state dict, or leave it out to use a CNN trained on the base classes")
        return {"kind": "imagenet", "weights": str(Path(weights).resolve()),
                "description": f"ImageNet backbone from {weights}"}
    from orchestrator.evaluation import domain_features
    from orchestrator.settings import cache_dir

    feats = domain_features(ds, split, cache_dir() / "features", "cpu")
    body = feats.net.net.body
    return {"kind": "domain", "layers": list(body), "state_dict": body.state_dict(),
            "in_channels": ds.image_shape[0], "image_size": ds.image_shape[1],
            "description": f"domain:{ds.name} base-class CNN (fallback; no ImageNet weights given), "
                           f"held-out base accuracy {feats.base_accuracy:.3f}"}


def pregenerate(*, dataset: str | None, data_root: str | None, biggan: str | None, out: Path, actors: int = 1,
                variants: int = 10, steps: int | None = None, image_size: int | None = None, channels: int | None = None,
                split_seed: int = 0, classes: str = "all", per_class: int = 0, limit: int = 0, seed: int = 0,
                sets: list[str] | None = None, perceptual_weights: str | None = None, cpus_per_actor: float = 1,
                gpus_per_actor: float = 0, uri: str | None = None, experiment: str | None = None,
                address: str | None = None, progress: bool = True, from_run: str | None = None) -> dict[str, Any]:
    """Fit FinetuneGAN (or adapt a trained generator run) to every chosen image with a pool of actors;
    returns counts and throughput."""
    from methods.finetunegan import DEFAULT_CONFIG
    from orchestrator import config as config_mod
    from orchestrator import tracking
    from orchestrator.data import load_dataset, make_split

    if actors < 1:
        raise UserError(f"--actors {actors}: need at least 1 actor")
    if variants < 1:
        raise UserError(f"--variants {variants}: ask for at least 1 variant per image")
    if bool(biggan) == bool(from_run):
        raise UserError("pass exactly one source of variants: --biggan PATH (FinetuneGAN) or --from-run RUN_ID")
    uri = uri or tracking.default_tracking_uri()
    parts = _parts(classes)
    if from_run:
        from orchestrator.lifecycle import load_run, require_generator

        # state: the selected checkpoint, {"state": the method's state dict, "step": ...}
        run_method, cfg, run_split, state = load_run(uri, from_run)  # a UserError names a bad id
        require_generator(run_method, from_run, "pregenerate --from-run")
        if sets or steps is not None:
            raise UserError("--set and --steps configure FinetuneGAN; with --from-run the run's own config is used")
        for flag, given, own in (("--image-size", image_size, cfg["image_size"]), ("--channels", channels, cfg["channels"])):
            if given is not None and int(given) != int(own):
                raise UserError(f"{flag} {given}: run {from_run} makes {own}; drop {flag} (--from-run uses the run's)")
        dataset, data_root = dataset or cfg["dataset"], data_root or cfg["data_root"]
        image_size, channels, resolution = int(cfg["image_size"]), int(cfg["channels"]), int(cfg["image_size"])
        if dataset == cfg["dataset"] and str(data_root) == str(cfg["data_root"]):
            from orchestrator import lifecycle

            # The same pre-start validation as train: the data, the split, class sizes, the method built.
            lifecycle.prepare(run_method, cfg, run_split, quiet=True)
        source = f"run:{from_run}"
    else:
        resolution = biggan_resolution_of(Path(biggan))
        cfg = config_mod.apply_overrides(dict(DEFAULT_CONFIG), list(sets or []))
        if steps is not None:
            if steps < 1:
                raise UserError(f"--steps {steps}: need at least 1 optimisation step")
            cfg["steps"] = int(steps)
        image_size = int(image_size or resolution)
        channels = 1 if channels is None else int(channels)
        source = f"biggan:{Path(biggan).resolve()}"
    ds = load_dataset(dataset or datasets.DEFAULT, data_root or None, image_size=image_size, channels=channels)
    split = make_split(ds, seed=split_seed)
    if from_run and sorted(run_split["novel"]) != sorted(split.novel):
        _log(f"warning: run {from_run} held out other novel classes than split seed {split_seed} does: its generator "
             f"has seen some of the classes it now makes variants of")
    ids = select_images(ds, split, parts, per_class, limit)
    if not ids:
        raise UserError(f"no images in the chosen classes ({classes}) of {ds.name}: choose other --classes")

    out = Path(out)
    settings = {"dataset": ds.name, "data_root": str(data_root or ""), "image_size": image_size,
                "channels": channels, "split_seed": split_seed, "source": source,
                "perceptual_weights": str(perceptual_weights or ""), "variants": variants, "seed": seed,
                "finetunegan": {} if from_run else cfg, "resolution": resolution}
    previous = read_manifest(out)
    if previous is not None and previous != settings:
        diff = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
        raise UserError(f"{out} was written with other settings ({', '.join(diff)} differ): use the same "
                        f"command to continue it, or another --out")
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob(".part-*.tmp*"), *out.glob(f".{MANIFEST}.tmp*")]:  # a killed run's temp files: never
        stale.unlink(missing_ok=True)                                            # renamed, so never counted
    # Atomically (temp file + rename), like the shards: a run killed mid-write must not leave half a manifest,
    # which the restart would fail to read.
    manifest_tmp = out / f".{MANIFEST}.tmp{os.getpid()}"
    manifest_tmp.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
    os.replace(manifest_tmp, out / MANIFEST)

    done = done_ids(out) & set(ids)
    todo = [i for i in ids if i not in done]
    if from_run or not todo:
        spec = {"kind": "n/a", "description": "n/a"}
    else:
        spec = perceptual_spec(ds, split, cfg, perceptual_weights)
    if from_run:
        worker = (RunWorker, (run_method, cfg, state["state"], ds.image_shape, len(run_split["class_names"])))
    else:
        worker = (FinetuneWorker, (str(Path(biggan).resolve()), cfg,
                                   {k: v for k, v in spec.items() if k != "description"}))
    name = f"pregenerate-{ds.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    params = {**{k: v for k, v in settings.items() if k != "finetunegan"}, **({} if from_run else cfg), "actors": actors,
              "gpus_per_actor": gpus_per_actor, "cpus_per_actor": cpus_per_actor, "classes": ",".join(parts),
              "per_class": per_class, "limit": limit, "out": str(out.resolve())}
    _close_killed_runs(uri, experiment or tracking.DEFAULT_EXPERIMENT, out)
    run_id = tracking.start_run(uri, experiment or tracking.DEFAULT_EXPERIMENT, name, params, {
        "method": run_method if from_run else "finetunegan", "role": "pregenerate", "dataset": ds.name,
        "source": source, "perceptual": spec["description"],
        "perceptual_kind": spec["kind"], "out": str(out.resolve())})
    tracking.log_dict(uri, run_id, split.to_dict(), "split.json")
    _log(f"{len(ids)} images of {ds.name} ({','.join(parts)} classes): {len(done)} already in {out}, "
         f"{len(todo)} to do with {actors} actor(s); perceptual loss: {spec['description']}; MLflow run {run_id}")

    stats: dict[str, Any] = {"images_total": len(ids), "images_skipped": len(done), "images_done": 0,
                             "rows_written": 0, "startup_s": 0.0, "seconds": 0.0, "images_per_s": 0.0}
    losses: list[float] = []
    status = "FAILED"
    started = False
    try:
        with on_signals():  # SIGTERM (a scheduler's stop) and Ctrl-C take one clean path (orchestrator.interrupt)
            if todo:
                from orchestrator.lifecycle import ensure_ray

                started = ensure_ray(address)
                with on_signals():  # again after ray.init, which takes SIGTERM for its own C++ abort
                    _run_pool(ds, todo, seed, variants, out, worker=worker, actors=actors, cpus=cpus_per_actor,
                              gpus=gpus_per_actor, stats=stats, losses=losses, progress=progress)
        status = "FINISHED"
    except KeyboardInterrupt as err:
        from orchestrator.lifecycle import command_line

        status = "KILLED"
        stopped = as_interrupted(err)
        raise stopped.with_message(
            f"interrupted by {stopped.signal_name}: run {run_id} is KILLED ({TAG}=true); "
            f"{stats['images_skipped'] + stats['images_done']} of {len(ids)} images are complete in {out}; "
            f"run the same command again to continue: {command_line()}") from None
    finally:
        stats["mean_final_loss"] = float(np.mean(losses)) if losses else float("nan")
        tracking.log_metrics(uri, run_id, {k: v for k, v in stats.items() if np.isfinite(v)})
        if losses:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric("final_loss", float(v), now, i) for i, v in enumerate(losses)]
            for i in range(0, len(batch), 1000):
                tracking.client(uri).log_batch(run_id, metrics=batch[i:i + 1000])
        try:
            _log_grid(uri, run_id, ds, out, ids)
        except Exception as err:  # the grid is a courtesy; never hide the real outcome
            _log(f"could not log the sample grid: {err}")
        tracking.end_run(uri, run_id, status)
        if status == "KILLED":
            tracking.set_tags(uri, run_id, {TAG: "true"})
        if started:
            import ray

            ray.shutdown()
    complete = len(done_ids(out) & set(ids))
    _log(f"done: {stats['images_done']} images fitted in {stats['seconds']:.1f}s "
         f"({stats['images_per_s']:.3f} images/s), {complete}/{len(ids)} complete in {out}")
    return {"run_id": run_id, "out": str(out), "images_complete": complete, **stats}


def _close_killed_runs(uri: str, experiment: str, out: Path) -> None:
    """Mark KILLED the runs of earlier ``pregenerate`` commands into ``out`` that are still RUNNING: a process
    killed outright (SIGKILL, a lost machine) could not close its own run, and this command continues its work."""
    from orchestrator import tracking

    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return
    where = str(Path(out).resolve()).replace("'", "\\'")
    for run in c.search_runs([exp.experiment_id], f"tags.role = 'pregenerate' and tags.out = '{where}' and "
                                                  f"attributes.status = 'RUNNING'"):
        tracking.end_run(uri, run.info.run_id, "KILLED")
        _log(f"run {run.info.run_id} of an earlier pregenerate into {out} was left RUNNING (killed): marked KILLED")


def _run_pool(ds, todo: list[int], seed: int, variants: int, out: Path, *, worker: tuple[type, tuple],
              actors: int, cpus: float, gpus: float, stats: dict, losses: list[float], progress: bool) -> None:
    import ray
    from ray.util import ActorPool

    cls, args = worker
    Actor = ray.remote(cls).options(num_cpus=cpus, num_gpus=gpus, max_restarts=1, max_task_retries=1)
    t0 = time.perf_counter()
    pool_actors = [Actor.remote(*args, max(1, int(cpus)), gpus > 0) for _ in range(actors)]
    info = ray.get([a.ready.remote() for a in pool_actors])
    stats["startup_s"] = time.perf_counter() - t0
    _log(f"{actors} actor(s) ready in {stats['startup_s']:.1f}s on {', '.join(sorted({i['device'] for i in info}))}")

    def item(i: int) -> dict[str, Any]:
        c = int(ds.labels[i])
        return {"image_id": i, "label": c, "class_name": ds.class_names[c], "seed": image_seed(seed, i),
                "image": ds.images[i].numpy()}

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=stats["images_total"], initial=stats["images_skipped"], unit="img", desc="pregenerate",
                   file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
    start = time.perf_counter()
    pool = ActorPool(pool_actors)
    try:
        for res in pool.map_unordered(lambda a, i: a.process.remote(item(i), variants), todo):
            if write_shard(out, res["image_id"], res["rows"]):
                stats["rows_written"] += len(res["rows"])
            stats["images_done"] += 1
            losses.append(float(res["loss"]))
            stats["seconds"] = time.perf_counter() - start
            stats["images_per_s"] = stats["images_done"] / max(stats["seconds"], 1e-9)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{res['loss']:.3f}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
        for a in pool_actors:
            ray.kill(a)


def _log_grid(uri: str, run_id: str, ds, out: Path, ids: list[int], n_images: int = 8) -> None:
    """Originals beside their variants (one row per source image) as an MLflow artifact."""
    import pyarrow.parquet as pq
    import torch
    import torch.nn.functional as F

    from orchestrator import tracking
    from orchestrator.evaluation import save_grid

    chosen = sorted(done_ids(out) & set(ids))[:n_images]
    if not chosen:
        return
    rows, ncol = [], 0
    for i in chosen:
        table = pq.read_table(shard_path(out, i)).sort_by("variant")
        imgs = [decode_png(b) for b in table.column("png").to_pylist()]
        size = imgs[0].shape[-1]
        orig = ds.get(i).expand(-1, 3, -1, -1) if ds.image_shape[0] == 1 else ds.get(i)
        orig = F.interpolate(orig, size=(size, size), mode="bilinear", align_corners=False)[0]
        rows.append([orig, *imgs])
        ncol = max(ncol, len(rows[-1]))
    blank = torch.ones_like(rows[0][0])
    flat = [img for row in rows for img in row + [blank] * (ncol - len(row))]
    with tempfile.TemporaryDirectory() as tmp:
        path = save_grid(torch.stack(flat), Path(tmp) / "originals_and_variants.png", nrow=ncol)
        tracking.log_file(uri, run_id, path, "samples")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: argparse.Namespace, uri: str) -> dict[str, Any]:
    """The CLI's entry point."""
    return pregenerate(dataset=args.dataset, data_root=args.data_root, biggan=args.biggan, from_run=args.from_run,
                       out=args.out,
                       actors=args.actors, variants=args.variants, steps=args.steps, image_size=args.image_size,
                       channels=args.channels, split_seed=args.split_seed, classes=args.classes,
                       per_class=args.per_class, limit=args.limit, seed=args.seed, sets=args.set,
                       perceptual_weights=args.perceptual_weights, cpus_per_actor=args.cpus_per_actor,
                       gpus_per_actor=args.gpus_per_actor, uri=uri, experiment=args.experiment,
                       address=args.address, progress=not args.no_progress)
