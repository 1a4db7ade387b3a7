"""The bodies of ``train``, ``train --resume``, ``evaluate`` and ``generate``: thin commands over the run
lifecycle (``orchestrator.lifecycle``), which validates first and records second."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


from orchestrator import lifecycle, tracking
from orchestrator.errors import UserError
from orchestrator.interrupt import on_signals
from orchestrator.kinds import build_method, log, method_class
from orchestrator.lifecycle import Scale, load_run, require_generator  # noqa: F401 (part of this module's API)
from orchestrator.settings import default_storage


def run_train(method: str | None, overrides: dict[str, Any], sets: list[str], *, scale: Scale, uri: str,
              experiment: str, address: str | None, inception_weights: str | None,
              resume: str | None) -> dict[str, Any]:
    """``train METHOD`` (or ``train --resume RUN_ID``): validate, create the run, fit, select, evaluate, record."""
    import ray

    scale.check()
    if resume:
        return _resume(resume, overrides, sets, scale=scale, uri=uri, address=address,
                       inception_weights=inception_weights)
    cfg = lifecycle.resolve_config(method, overrides, sets)
    prep = lifecycle.prepare(method, cfg, inception_weights=inception_weights)
    started = lifecycle.ensure_ray(address)
    with on_signals():  # after ray.init, which takes SIGTERM for its own abort (orchestrator.interrupt)
        try:
            return _train_new(method, prep, scale=scale, uri=uri, experiment=experiment)
        finally:
            if started:
                ray.shutdown()


def _train_new(method: str, prep, *, scale: Scale, uri: str, experiment: str) -> dict[str, Any]:
    lifecycle.check_cluster_fits(scale)
    name, storage = lifecycle.new_run_name(method), default_storage()
    run_id = lifecycle.open_run(uri, experiment, name, prep, {
        "ray_run_name": name, "ray_storage_path": str(storage), "workers": str(scale.workers),
        "cpus_per_worker": f"{scale.cpus_per_worker:g}", "gpus_per_worker": f"{scale.gpus_per_worker:g}"})
    log(f"MLflow run {run_id} in {uri}; Ray Train run {name} under {storage}")
    return lifecycle.train_and_record(prep, uri=uri, run_id=run_id, name=name, storage=storage, scale=scale)


def _resume(run_id: str, overrides: dict[str, Any], sets: list[str], *, scale: Scale, uri: str, address: str | None,
            inception_weights: str | None) -> dict[str, Any]:
    import ray

    run = tracking.get_run(uri, run_id)
    if "ray_run_name" not in run.data.tags:
        raise UserError(f"run {run_id} is not a train run (no Ray Train run name): pass the run id train printed")
    saved = tracking.load_json_artifact(uri, run_id, "config.json")
    split_dict = tracking.load_json_artifact(uri, run_id, "split.json")
    method = saved["method"]
    cfg = lifecycle.resume_config(saved["config"], overrides, sets, run_id)
    prep = lifecycle.prepare(method, cfg, split_dict, inception_weights=inception_weights)
    started = lifecycle.ensure_ray(address)
    with on_signals():  # after ray.init (orchestrator.interrupt)
        try:
            return _continue(run, method, cfg, saved, prep, scale=scale, uri=uri)
        finally:
            if started:
                ray.shutdown()


def _continue(run, method: str, cfg: dict[str, Any], saved: dict[str, Any], prep, *, scale: Scale,
              uri: str) -> dict[str, Any]:
    from orchestrator.interrupt import TAG
    from orchestrator.recorder import backfill

    run_id = run.info.run_id
    lifecycle.check_cluster_fits(scale)
    name, storage = run.data.tags["ray_run_name"], run.data.tags["ray_storage_path"]
    after = backfill(uri, run_id, storage, name)  # a checkpoint persisted but not yet recorded
    if cfg["steps"] != saved["config"]["steps"] or cfg["budget_minutes"] != saved["config"]["budget_minutes"]:
        tracking.set_tags(uri, run_id, {f"resume.after_step_{after}": f"steps={cfg['steps']} "
                                                                     f"budget_minutes={cfg['budget_minutes']}"})
        tracking.log_dict(uri, run_id, {"method": method, "config": cfg}, "config.json")
    was = run.info.status
    tracking.client(uri).update_run(run_id, status="RUNNING")
    if TAG in run.data.tags:  # interrupted before: it is being continued now
        tracking.client(uri).delete_tag(run_id, TAG)
    log(f"resuming MLflow run {run_id} (Ray Train run {name}) after step {after}")
    return lifecycle.train_and_record(prep, uri=uri, run_id=run_id, name=name, storage=storage, scale=scale,
                                      after=after, on_failure="FINISHED" if was == "FINISHED" else "FAILED")


def _prepare_moved(uri: str, run_id: str, method: str, cfg: dict[str, Any], split_dict: dict,
                   data_root: str | None, inception_weights: str | None) -> tuple[dict[str, Any], Any]:
    """``lifecycle.prepare`` for re-evaluating run ``run_id``; with ``data_root`` (``--data-root``: where the run's
    dataset moved) the config points there and the loaded data must match the digests the run recorded
    (``lifecycle.check_same_data``, a UserError before anything is recorded). Returns (config, Prepared)."""
    if data_root is not None:
        cfg = lifecycle.finish_config({**cfg, "data_root": data_root})

    def same_data(loaded: lifecycle.Prepared) -> None:
        if not lifecycle.check_same_data(uri, run_id, loaded):
            log(f"run {run_id} recorded no dataset digest: {cfg['data_root']} cannot be checked to hold its data")

    return cfg, lifecycle.prepare(method, cfg, split_dict, inception_weights=inception_weights,
                                  check_data=same_data if data_root is not None else None)


def run_evaluate(run_id: str, *, uri: str, seed: int | list[int] | None, n_generate: int | None,
                 inception_weights: str | None, data_root: str | None = None) -> dict[str, Any]:
    """Re-run the protocol on a finished train run's novel classes; recorded as a child run of it.

    ``data_root``: the folder the run's dataset moved to (``--data-root``); it must hold the same data, checked by
    the digests the run recorded (``lifecycle.check_same_data``), and the child run records the new root.

    ``seed``: one evaluation seed (default: the run's ``eval_seed``), or a list of several: then the child run
    holds each seed's metrics (``<metric>_seed<s>``) and the mean and 95% interval over seeds and classes
    (``<metric>_mean/_ci_low/_ci_high``; ``lifecycle.evaluate_seeds_and_record``).
    """
    seeds = None if seed is None else ([int(seed)] if isinstance(seed, int) else [int(s) for s in seed])
    if seeds is not None and (len(set(seeds)) != len(seeds) or min(seeds) < 0):
        raise UserError(f"--eval-seed {' '.join(map(str, seeds))}: pass distinct seeds >= 0")
    method, cfg, split_dict, state = load_run(uri, run_id)
    seeds = [int(cfg["eval_seed"])] if seeds is None else seeds
    n_generate = int(cfg["n_generate"]) if n_generate is None else n_generate
    if n_generate < 2:
        raise UserError(f"--n-generate {n_generate}: FID needs at least 2 images per class")
    cfg, prep = _prepare_moved(uri, run_id, method, cfg, split_dict, data_root, inception_weights)
    parent = tracking.get_run(uri, run_id)
    experiment = tracking.client(uri).get_experiment(parent.info.experiment_id).name
    several = len(seeds) > 1
    child = lifecycle.open_run(uri, experiment, f"evaluate-seed{'s' if several else ''}{'-'.join(map(str, seeds))}",
                               lifecycle.Prepared(method, {**cfg, "eval_seed": seeds[0], "n_generate": n_generate},
                                                  prep.ds, prep.split, prep.kind, prep.aids),
                               {"evaluates": run_id, **({"eval_seed": ",".join(map(str, seeds))} if several else {})},
                               parent_run_id=run_id)
    try:
        if several:
            metrics = lifecycle.evaluate_seeds_and_record(prep, state, uri=uri, run_id=child, seeds=seeds,
                                                          n_generate=n_generate)
        else:
            metrics = lifecycle.evaluate_and_record(prep, state, uri=uri, run_id=child, seed=seeds[0],
                                                    n_generate=n_generate)
        tracking.end_run(uri, child)
    except BaseException:
        lifecycle._end_quietly(uri, child, "FAILED")
        raise
    if several:
        return {"run_id": child, "evaluated_run_id": run_id, "eval_seeds": seeds, **metrics}
    return {"run_id": child, "evaluated_run_id": run_id, "eval_seed": seeds[0], **metrics}


def run_evaluate_lofgan(run_id: str, *, uri: str, seed: int | list[int] | None, variant: str | None,
                        inception_weights: str | None, adapt_steps: int | None = None,
                        data_root: str | None = None) -> dict[str, Any]:
    """LoFGAN's main_metric.py procedure (``evaluation.lofgan``) on a finished generator run, as a child run of it.

    ``data_root``: where the run's dataset moved (``--data-root``), checked as ``run_evaluate`` checks it.

    ``seed``: evaluation seed(s); for a seeded variant each replaces the variant's seed, for an unseeded one each
    is one more run of the script (a fresh drawn seed, recorded). ``variant``: ``evaluation.lofgan.parse_variant``'s
    text. Several seeds log ``<metric>_seed<s>`` and the mean and 95% interval over seeds and classes
    (``stats.summarize_seeds``). The comparability record is the default protocol's
    (``lifecycle.record_comparability``: data digest, split, features and their weights' digest, ...) with
    ``protocol=lofgan``, ``protocol_variant`` (``Variant.describe``), ``shots``/``n_generate`` the variant's, and,
    per drawn seed (the evaluation seed of a seeded variant; the recorded OS draw of an unseeded one), every
    class's support indices of every fake (``cmp.eval_seeds``, ``cmp.shot_indices_sha256``); every seed's own
    hash is in ``lofgan.json``.
    """
    from orchestrator.evaluation import lofgan
    from orchestrator.evaluation.stats import summarize_seeds

    v = lofgan.parse_variant(variant)
    seeds = None if seed is None else ([int(seed)] if isinstance(seed, int) else [int(s) for s in seed])
    if seeds is not None and (len(set(seeds)) != len(seeds) or min(seeds) < 0):
        raise UserError(f"--eval-seed {' '.join(map(str, seeds))}: pass distinct seeds >= 0")
    method, cfg, split_dict, state = load_run(uri, run_id)
    require_generator(method, run_id, "evaluate --protocol lofgan")
    seeds = seeds or [v.seed if v.seed is not None else int(cfg["eval_seed"])]
    cfg, prep = _prepare_moved(uri, run_id, method, cfg, split_dict, data_root, inception_weights)
    ds, split = prep.ds, prep.split
    num = lofgan.pool_size(cfg["dataset"], v)
    features = prep.aids.final
    lp = lofgan.lofgan_lpips_model(cfg.get("lpips_weights"))
    model = build_method(method, cfg, ds.image_shape, num_classes=ds.num_classes)
    model.load_state_dict(state["state"])
    parent = tracking.get_run(uri, run_id)
    experiment = tracking.client(uri).get_experiment(parent.info.experiment_id).name
    # the protocol is known before the evaluation: a child run that fails half-way still says which protocol it ran
    tags = {"evaluates": run_id, "cmp.protocol": "lofgan", "cmp.protocol_variant": v.describe()}
    child = lifecycle.open_run(uri, experiment, f"evaluate-lofgan-{v.preset}", prep, tags, parent_run_id=run_id)
    try:
        results, out = [], {}
        for s in seeds:
            r = lofgan.evaluate_lofgan(model, ds, split.novel, features, v, num=num,
                                       eval_seed=None if v.seed is None else s, adapt_steps=adapt_steps,
                                       lpips_model=lp)
            results.append(r)
            suffix = f"_seed{s}" if len(seeds) > 1 else ""
            tracking.log_metrics(uri, child, {f"{k}{suffix}": x for k, x in r.metrics.items() if x == x},
                                 int(state.get("step", 0)))
            out.update({f"{k}{suffix}": x for k, x in r.metrics.items()})
        if len(seeds) > 1:
            summary = summarize_seeds([{"metrics": r.metrics, "per_class": r.per_class} for r in results])
            tracking.log_metrics(uri, child, {k: x for k, x in summary.items() if x == x}, int(state.get("step", 0)))
            out.update(summary)
        lifecycle.log_data_input(uri, child, prep, "evaluation")  # the data's digest and root, as evaluate records
        lifecycle.record_comparability(uri, child, prep, n_generate=v.fakes,
                                       shot_indices={r.drawn_seed: r.shot_indices for r in results},
                                       protocol="lofgan", protocol_variant=v.describe(), shots=v.shots,
                                       adapt_steps=adapt_steps)
        tracking.set_tags(uri, child, {"lofgan.comparable_with_published": str(int(results[0].comparable))})
        tracking.log_dict(uri, child, {"variant": v.describe(), "pool": num, "classes": results[0].classes,
                                       "seeds": [{"eval_seed": s, "drawn_seed": r.drawn_seed,
                                                  "shot_indices_sha256": r.shot_sha256, "metrics": r.metrics,
                                                  "per_class": r.per_class, "not_computed": r.not_computed,
                                                  "notes": r.notes} for s, r in zip(seeds, results)]},
                          "lofgan.json")
        tracking.end_run(uri, child)
    except BaseException:
        lifecycle._end_quietly(uri, child, "FAILED")
        raise
    return {"run_id": child, "evaluated_run_id": run_id, "protocol": "lofgan", "variant": v.describe(),
            "drawn_seeds": [r.drawn_seed for r in results], "comparable_with_published": results[0].comparable,
            "notes": results[0].notes, **out}


def run_generate(run_id: str, images: list[str], *, uri: str, n: int, out: Path, seed: int,
                 save_images: Path | None, steps: int | None, interpolate: bool = False) -> dict[str, Any]:
    """Adapt on ``images`` and write a grid of ``n`` new images; with ``interpolate``, a one-row strip
    of ``n`` images walking between two memory slots (methods that offer ``interpolate``, e.g. MFH's Fig. 10)."""
    if n < (2 if interpolate else 1):
        raise UserError(f"--n {n}: ask for at least {'2 images (the strip ends)' if interpolate else 'one image'}")
    method, cfg, split_dict, _ = load_run(uri, run_id, checkpoint=False)
    require_generator(method, run_id, "generate")
    if interpolate and not method_class(method).supports_interpolation:
        raise UserError(f"--interpolate: method {method} has no memory slots to interpolate between; "
                        f"drop --interpolate (it works with mfh)")
    from orchestrator.evaluation import save_grid

    if out.parent and not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist; create it or pass another path")
    from orchestrator.data import dataset_background, load_images

    # One loader for datasets and user images: transparency on the run's dataset background, any Pillow mode.
    shots = load_images(images, int(cfg["image_size"]), int(cfg["channels"]),
                        background=dataset_background(cfg["dataset"]))
    from orchestrator.data.images import fit_description

    for path in images:  # never silently: one line per image that had to be resized, cropped or converted
        note = fit_description(path, int(cfg["image_size"]), int(cfg["channels"]), dataset_background(cfg["dataset"]))
        if note:
            log(note)
    import tempfile

    import torch

    from orchestrator import mlflow_model

    # The run's MLflow pyfunc model (mlflow.pyfunc.load_model; weights read with weights_only=True).
    with tempfile.TemporaryDirectory(prefix="fsig-model-") as tmp:
        generator = mlflow_model.load_generator(uri, run_id, tmp)
        if generator is not None:
            fake = torch.from_numpy(generator.predict(shots.numpy(), params={
                "n": int(n), "seed": int(seed), "adapt_steps": -1 if steps is None else int(steps),
                "interpolate": bool(interpolate)}))
    if generator is None:  # a run recorded before its checkpoint was also logged as an MLflow model
        state = load_run(uri, run_id)[3]
        model = build_method(method, cfg, tuple(shots.shape[1:]), num_classes=len(split_dict["class_names"]))
        model.load_state_dict(state["state"])
        if interpolate:
            fake = model.interpolate(shots, n, seed=seed).cpu()
        else:
            fake = model.adapt(shots, seed=seed, steps=steps).sample(n, seed=seed).cpu()
    save_grid(fake, out, nrow=n if interpolate else int(n ** 0.5 + 0.999))
    written = [str(out)]
    if save_images:
        save_images.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(fake):
            path = save_images / f"{i:04d}.png"
            save_grid(img[None], path, nrow=1)
            written.append(str(path))
    log(f"wrote {out}" + (f" and {n} images under {save_images}" if save_images else ""))
    return {"run_id": run_id, "method": method, "n": n, "out": str(out), "files": len(written),
            "interpolate": bool(interpolate)}


def _strict(value: Any) -> Any:
    """NaN and infinities as null: Python's json writes bare NaN, which jq and other strict parsers refuse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def print_json(obj: dict[str, Any]) -> None:
    sys.stdout.flush()
    print(json.dumps(_strict(obj), sort_keys=True, allow_nan=False), flush=True)
