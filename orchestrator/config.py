"""Resolved run configuration: harness defaults + the method's defaults + ``--set`` overrides.

One flat dict, so every value is one ``--set key=value`` away and logs to MLflow as a param.
Types come from the defaults; a value that does not parse as that type is a user error.
"""
from __future__ import annotations

from typing import Any

from orchestrator.data import registry as datasets
from orchestrator.errors import UserError

# Keys the harness owns (method keys come from ``Method.default_config``).
HARNESS_DEFAULTS: dict[str, Any] = {
    "dataset": datasets.DEFAULT,  # declared with the datasets (data/registry.py)
    "data_root": "",
    "image_size": 32,
    "channels": 1,
    "split_seed": 0,
    "n_val": 0,  # 0 = the dataset's conventional split
    "n_novel": 0,
    "seed": 0,  # task sampling seed
    "tasks_per_worker": 1,
    "steps": 0,  # 0 = no step limit (then budget_minutes must be set)
    "budget_minutes": 0.0,
    "log_every": 10,  # progress line + tasks/s; losses go to MLflow every step
    "eval_every": 100,  # validation-class evaluation + checkpoint, in meta-steps
    "val_generate": 96,  # images per validation class at checkpoint selection (FID needs more than its 64 feature dims)
    "n_generate": 128,  # images per novel class in the final evaluation
    "eval_seed": 0,
    "lpips_weights": "",  # torchvision backbone weights file: adds lpips_diversity* to the novel-class evaluation
    # Checkpoint chosen on validation classes by this metric (its direction: kinds.higher_is_better); "last": latest.
    # Generators select on class-specificity: pooled FID on these features rewards blob-like pages (docs/protocol.md).
    "select_metric": "val_class_hit",
}

# A value MLflow would cut (its param limit is 6,000 characters): refused before anything is recorded.
MAX_VALUE_CHARS = 6000

# Old config names, refused with the one name each concept has now (one name per concept across methods).
RENAMED: dict[str, str] = {"ways": "n_way", "query_shots": "queries", "outer_lr": "meta_lr"}


def parse_value(key: str, raw: str, default: Any) -> Any:
    """Parse ``raw`` as the type of ``default``; UserError names the key, the type and the fix."""
    if isinstance(default, bool):
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
    else:
        try:
            if isinstance(default, int):
                return int(raw)
            if isinstance(default, float):
                return float(raw)
            if isinstance(default, str):
                return raw
        except ValueError:
            pass
    kind = {"int": "an int", "float": "a float", "bool": "a bool (true/false)", "str": "a str"}.get(
        type(default).__name__, f"a {type(default).__name__}")
    raise UserError(f"--set {key}={raw}: expected {kind} (like {key}={default!r}); fix the value")


def apply_overrides(config: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings to a copy of ``config``; unknown keys are refused with the valid ones."""
    out = dict(config)
    for item in sets:
        if "=" not in item:
            raise UserError(f"--set {item}: expected key=value, e.g. --set inner_lr=1e-4")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key in RENAMED and key not in out:
            raise UserError(f"--set {key}: renamed; use --set {RENAMED[key]}={raw}")
        if key not in out:
            import difflib

            close = difflib.get_close_matches(key, list(out), n=1)
            hint = f"did you mean --set {close[0]}={raw}? " if close else ""
            raise UserError(f"--set {key}: unknown config key; {hint}valid keys are: {', '.join(sorted(out))}")
        if len(raw) > MAX_VALUE_CHARS:
            raise UserError(f"--set {key}=...: the value is {len(raw)} characters, over MLflow's parameter limit of "
                            f"{MAX_VALUE_CHARS}; pass a shorter value (e.g. a path to a file holding it)")
        out[key] = parse_value(key, raw, out[key])
    return out


def resolve(method_defaults: dict[str, Any], overrides: dict[str, Any], sets: list[str],
            harness_defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Harness defaults (with the method's ``harness_defaults`` over them, e.g. a method that wants
    several classes per step raises ``tasks_per_worker``), then the method's own keys, then CLI
    flags (``overrides``), then ``--set``."""
    clash = set(HARNESS_DEFAULTS) & set(method_defaults)
    assert not clash, f"method config keys clash with the harness's: {clash}"
    unknown = set(harness_defaults or {}) - set(HARNESS_DEFAULTS)
    assert not unknown, f"harness_defaults names keys the harness does not have: {unknown}"
    config = {**HARNESS_DEFAULTS, **(harness_defaults or {}), **method_defaults}
    config.update({k: v for k, v in overrides.items() if v is not None})
    return apply_overrides(config, sets)
