"""Checkpoint files: one format for Ray Train checkpoints, logged models and resumes.

A checkpoint is ``model.pt`` holding ``{"state": method.state_dict(), "step": int, "elapsed_s": float}``
(plus ``history.json`` beside it in Ray Train checkpoints: the records reported with it). It is read
with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only, so a file
planted in a shared artifact store cannot run code on the machine that evaluates it (ours; the
loader is PyTorch's own restricted unpickler).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from orchestrator.errors import UserError

CHECKPOINT_FILE = "model.pt"


def save_checkpoint(state: dict[str, Any], step: int, elapsed_s: float, directory: Path | str) -> Path:
    """Write ``model.pt`` into ``directory`` (created if missing); returns its path.

    ``state``: a method's ``state_dict()`` (tensors and plain Python values); ``step``: meta-steps
    trained (>= 0); ``elapsed_s``: training seconds so far, validation excluded.
    """
    path = Path(directory) / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": state, "step": int(step), "elapsed_s": float(elapsed_s)}, path)
    return path


def load_checkpoint(directory: Path | str, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Read ``directory/model.pt`` with ``weights_only=True``.

    Returns ``{"state", "step", "elapsed_s"}``. Raises ``UserError`` (one line) when the file is
    missing, is not a checkpoint, or holds anything but tensors and plain values (a pickled object
    is refused, never executed).
    """
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"{path}: no checkpoint file; pick a run whose training finished")
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise UserError(f"{path}: refused to load (not a plain weights file: {first[:160]}); "
                        f"only checkpoints written by this product are loaded, re-train the run") from None
    if not isinstance(saved, dict) or "state" not in saved or "step" not in saved:
        raise UserError(f"{path}: not a checkpoint of this product (no state/step); re-train the run")
    saved.setdefault("elapsed_s", 0.0)
    return saved
