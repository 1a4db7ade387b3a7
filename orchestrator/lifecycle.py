"""One run lifecycle for every method: validate → create the MLflow run → fit under Ray Train →
choose the checkpoint on validation classes → evaluate on novel classes → record → end the run.

``train``, ``train --resume``, ``evaluate`` and every sweep trial go through these functions; what
differs between generators and classifiers sits in ``orchestrator.kinds``. Layers (no import circle):
commands (``cli``, ``pipeline``, ``sweep``, ``compare``, ``pregenerate``) → this module →
``loop`` / ``recorder`` / ``kinds`` → ``classify`` / ``evaluation`` / ``tracking`` / ``data`` /
``checkpoints`` / ``config``.

Every input is checked (``prepare``) before a run is created in MLflow or Ray is started, so bad
input leaves the store exactly as it was.
"""
from __future__ import annotations

import math
import shlex
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from orchestrator import config as config_mod
from orchestrator import tracking
from orchestrator.checkpoints import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from orchestrator.errors import UserError
from orchestrator.kinds import Aids, Kind, build_method, higher_is_better, is_classifier, kind_of, log, method_class

BUDGET_KEYS = ("steps", "budget_minutes")

# A run's artifacts, named once here where they are logged; readers (evaluate, generate, the sweep) take the names
# from these.
CONFIG_ARTIFACT = "config.json"  # {"method", "config"}: the resolved config
SPLIT_ARTIFACT = "split.json"  # the base / val / novel split (data.Split.to_dict)
CHECKPOINT_ARTIFACT = f"checkpoint/{CHECKPOINT_FILE}"  # the selected checkpoint (log_model)


def per_class_artifact(figure: str) -> str:
    """``per_class_<figure stem>.json``: an evaluation's per-class values beside its figure ``figure``
    (``novel_samples.png`` -> ``per_class_novel_samples.json``), written by :func:`record_evaluation`."""
    return f"per_class_{Path(figure).stem}.json"


def samples_artifact(figure: str) -> str:
    """Where :func:`record_evaluation` logs an evaluation's figure: ``samples/<figure>``."""
    from orchestrator.settings import SAMPLES_DIR

    return f"{SAMPLES_DIR}/{figure}"


@dataclass
class Prepared:
    """Everything a run needs, validated: the resolved config, data, split, kind and the driver's aids."""

    method: str
    cfg: dict[str, Any]
    ds: Any
    split: Any
    kind: Kind
    aids: Aids


@dataclass
class Scale:
    """How the fit is spread: Ray Train workers and each one's resources."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 1

    def check(self, flag: str = "--workers") -> None:
        if self.workers < 1:
            raise UserError(f"{flag} {self.workers}: need at least 1 worker")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise UserError("--cpus-per-worker must be > 0 and --gpus-per-worker >= 0")
        if self.max_failures < 0:
            raise UserError(f"--max-failures {self.max_failures}: pass 0 or more")


def resolve_config(method: str, overrides: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Harness defaults < method defaults < CLI flags < ``--set``; a budget is required; data roots made absolute."""
    cls = method_class(method)
    cfg = config_mod.resolve(cls.default_config, overrides, sets, cls.harness_defaults)
    return finish_config(cfg)


def finish_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Checks every resolved config gets (budget, cadences) and the data root as an absolute path."""
    if int(cfg["steps"]) <= 0 and float(cfg["budget_minutes"]) <= 0:
        raise UserError("no budget: pass --steps N or --budget-minutes M")
    for key in ("eval_every", "log_every", "tasks_per_worker"):
        if int(cfg[key]) < 1:
            raise UserError(f"--set {key}={cfg[key]}: must be at least 1")
    for key in ("data_root", "lpips_weights"):
        if cfg.get(key):
            cfg = {**cfg, key: str(Path(str(cfg[key])).expanduser().resolve())}
    return cfg


def prepare(method: str, cfg: dict[str, Any], split_dict: dict | None = None,
            inception_weights: str | None = None, quiet: bool = False,
            check_data: Callable[[Prepared], None] | None = None) -> Prepared:
    """The one pre-start validation every command calls: dataset and data root, split, class sizes, the
    method built with the resolved config (a value it refuses is a ``UserError``), the kind's own checks
    (episodes, generated-image store coverage), and the features / store the run will use.

    ``check_data`` (e.g. ``check_same_data``) sees the loaded data and split (kind and aids None) before any of
    the rest, so refused data costs no feature-network training."""
    from orchestrator.data import Split, load_dataset, make_split

    if cfg["select_metric"] != "last":
        higher_is_better(cfg["select_metric"])  # UserError now for a metric that cannot select, not after training
    ds = load_dataset(cfg["dataset"], cfg["data_root"] or None, image_size=int(cfg["image_size"]),
                      channels=int(cfg["channels"]))
    if split_dict is not None:
        split = Split.from_dict(split_dict)
    else:
        split = make_split(ds, seed=int(cfg["split_seed"]), n_val=int(cfg["n_val"]) or None,
                           n_novel=int(cfg["n_novel"]) or None)
    if check_data is not None:
        check_data(Prepared(method, cfg, ds, split, None, None))
    try:
        probe = build_method(method, cfg, ds.image_shape, num_classes=ds.num_classes)
    except (ValueError, FileNotFoundError) as err:
        msg = str(err) if str(err).startswith(f"{method}:") else f"{method}: {err}"
        raise UserError(f"{msg} (fix --image-size/--channels or the --set value)") from None
    kind = kind_of(method)
    kind.check(cfg, ds, split, probe)
    if split_dict is None:  # a new run (resume and evaluate pass the recorded split: their config is what it was)
        kind.check_new(cfg, split)
    aids = kind.aids(cfg, ds, split, probe, inception_weights)
    if not quiet:
        log(f"{cfg['dataset']}: {ds.num_classes} classes, {len(ds.labels)} images {ds.image_shape}; split "
            f"base/val/novel = {len(split.base)}/{len(split.val)}/{len(split.novel)} classes (seed {split.seed})")
    return Prepared(method, cfg, ds, split, kind, aids)


def ensure_ray(address: str | None) -> bool:
    """Connect to ``address`` (or ``$RAY_ADDRESS``, or a ``ray start`` cluster of this machine), or start a local Ray.

    True if this call started Ray (the caller shuts it down). Two commands at once on one machine each start
    their own local Ray, kept apart: each names its own dashboard (``RAY_API_SERVER_ADDRESS``) to its processes.
    """
    import os

    import ray

    if ray.is_initialized():
        return False
    if not address and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
    # Ray starts its worker processes at nice 15 by default: on a machine whose cores are busy with anything
    # at nice 0 (another job, stress-ng), Ray Train's controller and workers then get a few percent of a core and
    # a 2-step run took 30 minutes here. Training is the work, so a local Ray started here runs them at nice 0
    # (measured: os.nice(0) in a Ray task is 15 by default, 0 with this; set RAY_worker_niceness to override).
    os.environ.setdefault("RAY_worker_niceness", "0")
    local = not address and not os.environ.get("RAY_API_SERVER_ADDRESS") and _starts_local_ray()

    def start() -> None:
        kwargs: dict[str, Any] = {}
        if local:
            # Ray Train's placement-group cleaner (a Ray actor) asks the State API without an address, so Ray finds
            # "the" local Ray by scanning the machine's processes and fails with "Found multiple active Ray
            # instances" in every run once two commands (each with its own local Ray) run at once. Pin this Ray's
            # dashboard port and name it in the environment its processes inherit: they then ask their own Ray.
            kwargs["dashboard_port"] = _free_port()
            os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{kwargs['dashboard_port']}"
        # The dashboard hosts the State API Ray Train polls; without it Train logs a warning a second.
        ray.init(address=address or None, log_to_driver=True, **kwargs)

    try:
        init_ray_retrying(start, retry=local)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise UserError(f"cannot connect to Ray at {address!r} ({str(err).splitlines()[0]}): "
                        f"pass the head node's address (ray start --head prints it) or omit --address") from None
    return True


def init_ray_retrying(start: Callable[[], None], retry: bool = True, attempts: int = 3) -> None:
    """Call ``start`` (a ``ray.init``), and when Ray misses its start-up deadline, kill what the failed start left
    (the new child processes, by pid) and call it again, up to ``attempts`` times (``retry=False``: once).

    Ray gives a new local node a fixed 30 s for its raylet to register with the GCS; on a machine whose cores are
    busy (a load many times the core count) that is missed now and then ("timed out during startup").
    Every other error propagates at once. Used by ``ensure_ray`` and the tests' session Ray (ours).
    """
    import psutil  # a Ray dependency
    import ray

    for attempt in range(1, attempts + 1):
        before = {c.pid for c in psutil.Process().children(recursive=True)}
        try:
            start()
            return
        except (ConnectionError, ValueError, RuntimeError):
            raise
        except Exception as err:  # noqa: BLE001 - only Ray's start-up timeout is retried
            if not retry or attempt == attempts or "timed out during startup" not in str(err):
                raise
            log(f"local Ray did not start in time (attempt {attempt} of {attempts}, busy machine?): starting it again")
            ray.shutdown()
            for child in psutil.Process().children(recursive=True):  # the failed start's GCS, raylet, dashboard
                if child.pid not in before:
                    try:
                        child.kill()
                    except psutil.Error:
                        pass


def _starts_local_ray() -> bool:
    """Whether ``ray.init()`` without an address would start a new local Ray (no ``ray start`` cluster to join)."""
    try:  # Ray's own resolution of "no address" (a private helper; if it moves, assume a new local Ray)
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(None) is None
    except Exception:  # noqa: BLE001
        return True


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_cluster_fits(scale: Scale) -> None:
    """Refuse a fit the cluster can never schedule (it would wait forever)."""
    import ray

    res = ray.cluster_resources()
    need_cpu = scale.workers * scale.cpus_per_worker
    if need_cpu > res.get("CPU", 0) + 1e-9:
        raise UserError(f"--workers {scale.workers} x --cpus-per-worker {scale.cpus_per_worker:g} needs {need_cpu:g} CPUs "
                        f"but the Ray cluster has {res.get('CPU', 0):g}: lower --workers or --cpus-per-worker")
    if scale.gpus_per_worker and scale.workers * scale.gpus_per_worker > res.get("GPU", 0) + 1e-9:
        raise UserError(f"--gpus-per-worker {scale.gpus_per_worker:g} x {scale.workers} workers needs GPUs the Ray "
                        f"cluster does not have ({res.get('GPU', 0):g}): drop --gpus-per-worker or add GPU nodes")


def new_run_name(method: str) -> str:
    return f"{method}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def command_line() -> str:
    return "python -m orchestrator " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def open_run(uri: str, experiment: str, name: str, prep: Prepared, tags: dict[str, str],
             parent_run_id: str | None = None) -> str:
    """Create the MLflow run: the resolved config as params, the split and config as artifacts, and the tags
    every run carries (method, dataset, seeds, kind, features, versions, commit, command line)."""
    cfg, split = prep.cfg, prep.split
    run_id = tracking.start_run(uri, experiment, name, cfg, {
        "method": prep.method, "dataset": cfg["dataset"], "split_seed": str(split.seed), "seed": str(cfg["seed"]),
        "eval_seed": str(cfg["eval_seed"]), "kind": prep.kind.name, "features": prep.aids.description,
        "command": command_line(), **prep.kind.tags(cfg, prep.aids), **tags}, parent_run_id=parent_run_id)
    tracking.log_dict(uri, run_id, split.to_dict(), SPLIT_ARTIFACT)
    tracking.log_dict(uri, run_id, {"method": prep.method, "config": cfg}, CONFIG_ARTIFACT)
    tracking.describe_run(uri, run_id, lines=("not evaluated yet: this description is rewritten with the novel-class "
                                              "evaluation when the run has one",))
    return run_id


def log_data_input(uri: str, run_id: str, prep: Prepared, context: str) -> None:
    """The classes a run trains on (``context="training"``: base) or is scored on (``"evaluation"``: novel) as an
    MLflow dataset input: name ``<dataset>/<base|novel>``, the data root as source, split seed, image size and a
    digest (``data_digest``: sha256 of the part's uint8 images, labels and class names, already in memory)."""
    cfg, split = prep.cfg, prep.split
    part = "base" if context == "training" else "novel"
    classes = [int(c) for c in getattr(split, part)]
    digest, idx = data_digest(prep, part)
    from orchestrator.data import registry

    loader = registry.spec(cfg["dataset"]).recorded()
    tracking.log_dataset(uri, run_id, name=f"{cfg['dataset']}/{part}", root=cfg.get("data_root") or None,
                         digest=digest, context=context, profile={
                             "dataset": cfg["dataset"], "part": part, "classes": len(classes), "images": int(len(idx)),
                             "split_seed": int(split.seed), "image_size": int(cfg["image_size"]),
                             "channels": int(cfg["channels"]), "data_root": cfg.get("data_root") or "", "loader": loader})


def data_digest(prep: Prepared, part: str) -> tuple[str, Any]:
    """The content digest of one split part (``"base"``, ``"val"`` or ``"novel"``) of the loaded data, as
    ``log_data_input`` records it: the first 16 hex digits of ``comparability.data_digest`` over the part's classes
    (the dataset name, their class names, labels and uint8 images as loaded at the run's image size and channels);
    and the part's image indices (int64 numpy array). The images are already in memory: nothing is read again."""
    import numpy as np

    from orchestrator.evaluation.comparability import data_digest as content_digest

    ds, split = prep.ds, prep.split
    classes = [int(c) for c in getattr(split, part)]
    idx = np.concatenate([ds.class_indices(c) for c in classes]) if classes else np.zeros(0, dtype=np.int64)
    return content_digest(ds, classes)[:16], idx


def check_same_data(uri: str, run_id: str, prep: Prepared, flag: str = "--data-root") -> int:
    """Refuse data that is not what run ``run_id`` recorded: each dataset input the run logged (``log_data_input``:
    ``<dataset>/base`` for training, ``<dataset>/novel`` for evaluation) is recomputed on ``prep``'s data with
    ``data_digest`` and compared. Raises ``UserError`` naming the part, the recorded and the found digest. Returns
    how many parts were compared (0: the run recorded no digest, e.g. recorded before datasets were logged)."""
    run = tracking.get_run(uri, run_id)
    inputs = run.inputs.dataset_inputs if run.inputs else []
    compared = 0
    for name, recorded in sorted({i.dataset.name: i.dataset.digest for i in inputs}.items()):
        dataset, _, part = name.rpartition("/")
        if dataset != prep.cfg["dataset"] or part not in ("base", "val", "novel"):
            continue
        found, _ = data_digest(prep, part)
        if found != recorded:
            raise UserError(f"{flag} {prep.cfg['data_root']}: its {part} classes are not the data run {run_id} "
                            f"recorded (digest {found}, recorded {recorded}): pass the folder that holds the run's "
                            f"{prep.cfg['dataset']} data, unchanged")
        compared += 1
    return compared


def train_and_record(prep: Prepared, *, uri: str, run_id: str, name: str, storage: str, scale: Scale,
                     callbacks: list | None = None, after: int = 0, on_failure: str = "FAILED",
                     resume_hint: str | None = None) -> dict[str, Any]:
    """Fit under Ray Train with the ``Recorder``, select on validation, evaluate on novel classes, record, end.

    The run ends FINISHED, or ``on_failure`` when anything raises (the error propagates; a resumed FINISHED
    run keeps FINISHED and its earlier record). A deterministic failure a worker reported (divergence, bad
    data found late) is a ``UserError`` naming it, raised without any retry. When the tracking store fails, the
    ``UserError`` names the store and the command that finishes the run once it is back: ``resume_hint`` (a sweep
    trial passes its ``sweep METHOD --resume NAME``), else ``train --resume RUN_ID``. Returns the JSON line's dict.
    """
    from orchestrator.loop import best_checkpoint, fit
    from orchestrator.settings import FATAL
    from orchestrator.recorder import Recorder

    cfg = prep.cfg
    try:
        log_data_input(uri, run_id, prep, "training")
        if after == 0:
            record_untrained_validation(prep, uri, run_id)
        result = fit(prep.method, cfg, prep.ds, prep.split, prep.aids.val, workers=scale.workers,
                     cpus_per_worker=scale.cpus_per_worker, gpus_per_worker=scale.gpus_per_worker,
                     storage_path=storage, name=name, max_failures=scale.max_failures,
                     callbacks=[Recorder(uri, run_id, after), *(callbacks or [])])
        if result.error is not None:
            raise result.error
        fatal = tracking.get_run(uri, run_id).data.tags.get(FATAL)  # set by the Recorder from the workers' report
        if fatal:
            raise UserError(f"run {run_id}: {fatal}")
        checkpoint, chosen = best_checkpoint(result, cfg["select_metric"])
        if checkpoint is None:
            raise UserError(f"run {run_id} produced no checkpoint: the budget ended before the first step")
        with checkpoint.as_directory() as d:
            saved = load_checkpoint(Path(d))
        select = cfg["select_metric"]
        value = chosen.get(select)  # a number, or NaN (null once Ray Train restored its list from JSON)
        if isinstance(value, (int, float)) and math.isfinite(value) and len(prep.split.val) < 2 \
                and "class_hit" in select:
            # one validation class: its centroid is the only one, so class_hit is 1 at every step (ties -> latest)
            why = (f"the latest: {select} cannot rank checkpoints with one validation class; pass --set n_val=2 "
                   f"or more to select on it")
        elif isinstance(value, (int, float)) and math.isfinite(value):
            why = f"{select}={value:.4g} on validation classes"
        else:  # best_checkpoint's fallback
            why = f"the latest: {select} is NaN on every checkpoint" if select in chosen else "the latest"
        log(f"selected the step-{saved['step']} checkpoint ({why})")
        out = evaluate_and_record(prep, saved, uri=uri, run_id=run_id, seed=int(cfg["eval_seed"]),
                                  n_generate=int(cfg["n_generate"]))
        log_model(uri, run_id, saved, prep)
        tracking.set_tags(uri, run_id, {"selected_step": str(int(saved["step"]))})
        tracking.end_run(uri, run_id, "FINISHED")
    except BaseException as err:
        from orchestrator.interrupt import as_interrupted

        if isinstance(err, KeyboardInterrupt):  # preempted or Ctrl-C: a normal end, continued by the resume
            stopped = as_interrupted(err)
            _stop_driver_ray()
            raise stopped.with_message(interrupted_line(uri, run_id, stopped, resume_hint)) from None
        closed = _end_quietly(uri, run_id, on_failure)
        from orchestrator.recorder import store_failure

        why = store_failure(err, uri, run_id) if isinstance(err, Exception) else None
        if why:  # the store, not the run, failed: one line, and the resume that finishes the run once it is back
            raise UserError(f"{why}; run {run_id} is {on_failure if closed else 'left RUNNING'}: once that is fixed, "
                            f"finish it with "
                            f"{resume_command(uri, run_id, resume_hint)}"
                            ) from None
        raise
    budget = {k: float(v) for k, v in (result.metrics or {}).items()
              if k in ("meta_steps", "tasks_seen", "images_seen", "train_seconds", "eval_seconds")}
    return {"run_id": run_id, "method": prep.method, "dataset": cfg["dataset"], "selected_step": int(saved["step"]),
            **budget, **out}


def _stop_driver_ray() -> None:
    """In the command's own process (main thread): disconnect from Ray now, which ends the Ray Train controller and
    workers this driver owns (and a local Ray it started), so no checkpoint is trained or recorded after the run is
    marked interrupted. A remote cluster (``--address``) itself keeps running."""
    import threading

    import ray

    if threading.current_thread() is threading.main_thread() and ray.is_initialized():
        ray.shutdown()


def resume_command(uri: str, run_id: str, resume_hint: str | None = None) -> str:
    """The command that finishes run ``run_id`` (``resume_hint`` when the caller has its own, e.g. a sweep's)."""
    return resume_hint or f"python -m orchestrator train --resume {run_id} --tracking-uri {uri}"


def interrupted_line(uri: str, run_id: str, err, resume_hint: str | None = None) -> str:
    """Mark ``run_id`` interrupted (status KILLED, tag ``fsig.interrupted=true``) and return the one line saying so
    and how to continue. ``err``: the ``interrupt.Interrupted`` that stopped it. Store errors are reported in the line,
    not raised (the store may be what is failing)."""
    from orchestrator.interrupt import TAG
    from orchestrator.recorder import recorded_through

    closed = _end_quietly(uri, run_id, "KILLED")
    try:
        tracking.set_tags(uri, run_id, {TAG: "true"})
        through = f", recorded through step {recorded_through(uri, run_id)}"
    except Exception as store_err:  # noqa: BLE001 - the line must still come out
        through = f" (the store took no tag: {store_err.__class__.__name__})"
    state = "KILLED" if closed else "left RUNNING"
    return (f"interrupted by {err.signal_name}: run {run_id} is {state} ({TAG}=true){through}; "
            f"continue it with {resume_command(uri, run_id, resume_hint)}")


def record_untrained_validation(prep: Prepared, uri: str, run_id: str) -> dict[str, float]:
    """The untrained control on the validation classes, once per run (it does not depend on the training step):
    the run's own initial weights put through the validation protocol (adapted to the shots as every checkpoint
    is), logged at step 0 as ``val_class_hit_scratch`` / ``val_fid_domain_scratch`` with its per-class values as
    ``val_per_class/untrained.json``, so each evaluation step's curve can be compared with it
    (``orchestrator.curves``). Classifiers: nothing. Returns the logged metrics."""
    import shutil
    import tempfile

    from orchestrator.kinds import VAL_PER_CLASS

    with tempfile.TemporaryDirectory() as d:
        metrics = prep.kind.untrained_validation(prep.method, prep.cfg, prep.ds, prep.split, prep.aids.val, Path(d))
        if not metrics:
            return {}
        written = sorted(Path(d).glob(f"{VAL_PER_CLASS}_step*.json"))
        if written:
            untrained = Path(d) / "untrained.json"
            shutil.copyfile(written[0], untrained)
            tracking.log_file(uri, run_id, untrained, VAL_PER_CLASS)
    finite = {k: v for k, v in metrics.items() if math.isfinite(v)}
    log_metrics_once(uri, run_id, finite, 0)  # a resume before the first checkpoint validates it again
    log("untrained control on validation classes: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return finite


def _end_quietly(uri: str, run_id: str, status: str) -> bool:
    """Mark the run ``status``; False (and a log line) if the store would not take it."""
    try:
        tracking.end_run(uri, run_id, status)
    except Exception as err:  # noqa: BLE001 - the original error matters more; the store may be the problem
        log(f"could not mark run {run_id} {status} in {uri} ({err.__class__.__name__})")
        return False
    return True


def record_comparability(uri: str, run_id: str, prep: Prepared, *, n_generate: int,
                         shot_indices: dict[int, dict[int, list[int]]], protocol: str = "fsig",
                         protocol_variant: str = "default", shots: int | None = None,
                         adapt_steps: int | None = None) -> dict[str, str]:
    """Log the comparability record (``evaluation.comparability``) of the evaluation(s) held by ``run_id``: tags
    ``cmp.<key>`` and ``comparability.json``. ``shot_indices``: per evaluation seed, each class's shot indices.
    ``protocol``/``protocol_variant``: another protocol's name and settings (``evaluate --protocol lofgan``), whose
    ``shots`` (support images per generated image) and ``adapt_steps`` replace the run config's when given.
    Returns the record."""
    from orchestrator.evaluation.comparability import ARTIFACT, as_tags, comparability_record

    cfg, final = prep.cfg, prep.aids.final
    generator = prep.kind.name == "generator"
    steps = adapt_steps if adapt_steps is not None else cfg.get("adapt_steps")
    record = comparability_record(
        dataset=cfg["dataset"], ds=prep.ds, split=prep.split, features=final if hasattr(final, "net") else None,
        shots=int(cfg.get("shots", 0)) if shots is None else int(shots),
        n_generate=int(n_generate) if generator else None,
        adapt_steps=int(steps) if generator and steps is not None else None,
        eval_seeds=sorted(shot_indices), shot_indices=shot_indices, protocol=protocol,
        protocol_variant=protocol_variant)
    tracking.set_tags(uri, run_id, as_tags(record))
    tracking.log_dict(uri, run_id, record, ARTIFACT)
    return record


def evaluate_and_record(prep: Prepared, saved: dict[str, Any], *, uri: str, run_id: str, seed: int,
                        n_generate: int, metric_suffix: str = "",
                        shot_indices: dict[int, dict[int, list[int]]] | None = None) -> dict[str, float]:
    """The novel-class protocol on ``saved["state"]``, logged at the checkpoint's step into ``run_id``.

    ``metric_suffix`` (e.g. ``_seed1``): appended to every metric name logged, and the figure and
    ``per_class_<figure>.json`` are named after the seed (``evaluate_seeds_and_record``: one run, several seeds).
    The run gets this evaluation's comparability record (:func:`record_comparability`), unless ``shot_indices``
    is given: then this seed's shot indices are added to it and the caller records the run's seeds together.
    """
    t0 = time.perf_counter()
    result = prep.kind.evaluate(prep.method, prep.cfg, prep.ds, prep.split, saved["state"], prep.aids.final,
                                seed=seed, n_generate=n_generate)
    seconds = time.perf_counter() - t0
    own = seed == int(prep.cfg["eval_seed"]) and not metric_suffix
    record_evaluation(uri, run_id, result, int(saved["step"]), prep.kind.figure if own
                      else f"{Path(prep.kind.figure).stem}_seed{seed}.png", metric_suffix=metric_suffix)
    log_metrics_once(uri, run_id, {f"test_eval_seconds{metric_suffix}": seconds}, int(saved["step"]))
    tracking.set_tags(uri, run_id, {"threads_eval": str(torch.get_num_threads())})
    shots = {int(c): [int(i) for i in v] for c, v in (getattr(result, "shot_indices", None) or {}).items()}
    if shot_indices is None:
        record_comparability(uri, run_id, prep, n_generate=n_generate, shot_indices={int(seed): shots})
    else:
        shot_indices[int(seed)] = shots
    log_data_input(uri, run_id, prep, "evaluation")
    tracking.describe_run(uri, run_id)
    return {k: float(v) for k, v in result.metrics.items()}


def evaluate_seeds_and_record(prep: Prepared, saved: dict[str, Any], *, uri: str, run_id: str, seeds: list[int],
                              n_generate: int) -> dict[str, Any]:
    """The novel-class protocol under each evaluation seed of ``seeds``, into one run ``run_id``.

    Each seed's metrics are logged as ``<metric>_seed<s>`` with ``per_class_<figure>_seed<s>.json``; then, for
    every protocol metric, the mean and 95% interval over the seeds (outer level) and novel classes (inner) as
    ``<metric>_mean``, ``<metric>_ci_low``, ``<metric>_ci_high`` (``stats.summarize_seeds``, the computation of
    ``train --replicates``), read back from the recorded per-class files. Returns all of these in one dict.
    """
    from orchestrator.evaluation.stats import summarize_seeds

    out: dict[str, Any] = {}
    evaluations = []
    shot_indices: dict[int, dict[int, list[int]]] = {}
    for seed in seeds:
        metrics = evaluate_and_record(prep, saved, uri=uri, run_id=run_id, seed=seed, n_generate=n_generate,
                                      metric_suffix=f"_seed{seed}", shot_indices=shot_indices)
        out.update({f"{k}_seed{seed}": v for k, v in metrics.items()})
        evaluations.append(tracking.load_json_artifact(
            uri, run_id, per_class_artifact(f"{Path(prep.kind.figure).stem}_seed{seed}.png")))
    summary = summarize_seeds(evaluations)
    record_comparability(uri, run_id, prep, n_generate=n_generate, shot_indices=shot_indices)
    log_metrics_once(uri, run_id, {k: v for k, v in summary.items() if v == v}, int(saved["step"]))  # v == v: not NaN
    tracking.log_dict(uri, run_id, {"eval_seeds": list(seeds), "summary": summary}, "eval_seeds.json")
    return {**out, **summary}


def log_metrics_once(uri: str, run_id: str, metrics: dict[str, float], step: int) -> dict[str, float]:
    """Log ``metrics`` at ``step`` except those the run already holds at that step; returns what was logged.

    What makes an evaluation's record idempotent: a resume that evaluates again (the first try was stopped by a
    signal or a full disk after some of its records were written) adds only what is missing, so no metric has two
    values at one step. The values kept are the first ones (the same checkpoint and evaluation seed give the same)."""
    c = tracking.client(uri)
    present = set(c.get_run(run_id).data.metrics)
    new = {k: v for k, v in metrics.items()
           if k not in present or all(int(m.step) != int(step) for m in c.get_metric_history(run_id, k))}
    tracking.log_metrics(uri, run_id, new, step)
    return new


def record_evaluation(uri: str, run_id: str, result, step: int, name: str, metric_suffix: str = "") -> None:
    """An ``EvalResult``'s metrics (names + ``metric_suffix``) at ``step`` and its figures under ``samples/``."""
    from orchestrator.evaluation import save_result_images

    log_metrics_once(uri, run_id, {f"{k}{metric_suffix}": v for k, v in result.metrics.items() if v is not None},
                     step)
    # One value per evaluated class (where the metric has them): what replicates bootstrap over.
    tracking.log_dict(uri, run_id, {"step": step, "classes": [int(c) for c in getattr(result, "classes", [])],
                                    "per_class": getattr(result, "per_class", {}),
                                    "metrics": {k: float(v) for k, v in result.metrics.items() if v is not None}},
                      per_class_artifact(name))
    with tempfile.TemporaryDirectory() as tmp:
        for path in save_result_images(result, tmp, name, suffix=f"_{Path(name).stem}"):
            tracking.log_file(uri, run_id, path, str(Path(samples_artifact(name)).parent))


def log_model(uri: str, run_id: str, saved: dict[str, Any], prep: Prepared | None = None) -> None:
    """The selected checkpoint as ``checkpoint/model.pt`` (what ``evaluate`` loads) and, for generators, as the
    run's MLflow pyfunc LoggedModel (``orchestrator.mlflow_model``; what ``generate`` loads). Without ``prep``
    the method, config and classes are read from the run's ``config.json`` and ``split.json``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(saved["state"], int(saved["step"]), float(saved.get("elapsed_s", 0.0)), tmp)
        tracking.log_file(uri, run_id, path, str(Path(CHECKPOINT_ARTIFACT).parent))
    if prep is not None:
        method, cfg, num_classes = prep.method, prep.cfg, prep.ds.num_classes
    else:
        recorded = tracking.load_json_artifact(uri, run_id, CONFIG_ARTIFACT)
        method, cfg = recorded["method"], recorded["config"]
        num_classes = len(tracking.load_json_artifact(uri, run_id, SPLIT_ARTIFACT)["class_names"])
    if not is_classifier(method):
        from orchestrator import mlflow_model

        shape = (int(cfg["channels"]), int(cfg["image_size"]), int(cfg["image_size"]))
        mlflow_model.log_generator(uri, run_id, saved, method=method, cfg=cfg, image_shape=shape,
                                   num_classes=num_classes)


# ------------------------------------------------------------------------- reading runs back ----

def load_run(uri: str, run_id: str, *, finished: bool = True, checkpoint: bool = True):
    """Method, config, split and selected checkpoint of a train run (``UserError`` unless it is FINISHED);
    with ``checkpoint=False`` the checkpoint is not read and None is returned in its place."""
    run = tracking.get_run(uri, run_id)
    if finished and run.info.status != "FINISHED":
        raise UserError(f"run {run_id} is {run.info.status}, not FINISHED: evaluate or generate from a finished run "
                        f"(a killed or failed train continues with python -m orchestrator train --resume {run_id})")
    saved = tracking.load_json_artifact(uri, run_id, CONFIG_ARTIFACT)
    split_dict = tracking.load_json_artifact(uri, run_id, SPLIT_ARTIFACT)
    if not checkpoint:
        return saved["method"], saved["config"], split_dict, None
    with tempfile.TemporaryDirectory() as tmp:
        path = tracking.download(uri, run_id, CHECKPOINT_ARTIFACT, tmp)
        state = load_checkpoint(path.parent)
    return saved["method"], saved["config"], split_dict, state


def require_generator(method: str, run_id: str, command: str) -> None:
    """Classifier runs (protonet, metairnet) make no images: say so instead of failing inside ``adapt``."""
    if is_classifier(method):
        raise UserError(f"run {run_id} is a {method} classifier, which generates no images: give {command} the run "
                        f"id of a generator run (figr, mfh, mtgan, transfer)")


def resume_config(saved_cfg: dict[str, Any], overrides: dict[str, Any], sets: list[str], run_id: str) -> dict[str, Any]:
    """The recorded config with a new budget; any other ``--set`` that changes a recorded value is refused."""
    budget = {k: v for k, v in overrides.items() if k in BUDGET_KEYS and v is not None}
    cfg = config_mod.apply_overrides({**saved_cfg, **budget}, sets)
    changed = sorted(k for k in cfg if k not in BUDGET_KEYS and cfg[k] != saved_cfg.get(k))
    if changed:
        raise UserError(f"--resume {run_id} continues the run with its recorded config; --set changes "
                        f"{', '.join(changed)}: start a new run with train (only --steps/--budget-minutes may change)")
    return finish_config(cfg)

