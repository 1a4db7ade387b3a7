"""Where the product keeps its files (environment settings, ours): feature cache and Ray Train storage."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$FSIG_CACHE`` or ``~/.cache/fsig``: base-class feature networks and decoded datasets."""
    return Path(os.environ.get("FSIG_CACHE", Path.home() / ".cache" / "fsig"))


def default_storage() -> str:
    """``$FSIG_STORAGE`` or ``./.orchestrator/ray_results``; URIs (``s3://...``) pass through untouched."""
    value = os.environ.get("FSIG_STORAGE", str(Path.cwd() / ".orchestrator" / "ray_results"))
    return value if "://" in value else str(Path(value).resolve())


def join(storage: str, *parts: str) -> str:
    """Join under a local path or a URI (``s3://bucket/x``), which ``pathlib`` would mangle."""
    return "/".join([str(storage).rstrip("/"), *parts])


# Set in every Ray Train worker process by the loop; ``orchestrator.tracking`` refuses to write where it is set,
# so the record is made only on the driver's node (the driver and Ray Train's controller).
WORKER_ENV = "FSIG_IN_TRAIN_WORKER"

# Report key (from the workers) and run tag (set by the recorder) of a deterministic failure: the driver ends
# the run with it as one line, and Ray Train never retries it.
FATAL = "fatal_error"

# What a Ray Train checkpoint holds besides the model (written by the loop, read by the recorder): the
# per-step record since the previous checkpoint, and the sample grids of its validation.
HISTORY_FILE = "history.json"
SAMPLES_DIR = "samples"
