"""What makes two evaluations comparable, recorded with every evaluation.

Two numbers of the protocol can be set side by side, ranked or paired only when they were measured on the
same data (dataset, content, split), at the same image size, in the same feature space (the feature network's
weights), under the same protocol settings (shots, images generated per class, adaptation steps, evaluation
seeds) and on the same conditioning shots. :func:`comparability_record` builds that record, ONE place; the
lifecycle logs it as MLflow tags ``cmp.<key>`` on the run that holds the metrics and as ``comparability.json``;
``compare`` groups rows by it and refuses a paired difference across groups.

Other protocols (e.g. a LoFGAN-convention evaluation) use the same keys with their own ``protocol`` and
``protocol_variant`` values, so that their numbers form their own groups.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

TAG_PREFIX = "cmp."
# The record's keys, in the order they are shown; every one is a tag cmp.<key> (values are strings).
KEYS = ("dataset", "data_digest", "split_seed", "split_sha256", "image_size", "channels", "features",
        "features_sha256", "protocol", "protocol_variant", "shots", "n_generate", "adapt_steps", "eval_seeds",
        "shot_indices_sha256")
ARTIFACT = "comparability.json"
# Recorded, but not a reason to keep two evaluations apart: a method's own adaptation budget (figr 10 steps, transfer
# 50, mfh none) is part of the method being compared, not of how it was measured.
METHOD_KEYS = ("adapt_steps",)


# The value of a key on which the evaluations a summary holds disagree (a replicate parent's seeds: combined()).
MIXED_PREFIX = "mixed:"


def known(value: str | None) -> bool:
    """Whether a record's value says how the number was measured: not missing, not mixed. An unknown value is
    never equal to anything, another unknown included (:func:`unknown_keys`)."""
    return value is not None and not value.startswith(MIXED_PREFIX)


def complete(record: dict[str, str] | None) -> bool:
    """A record with a known value for every key of ``KEYS`` that groups (``METHOD_KEYS`` aside)."""
    return record is not None and all(known(record.get(k)) for k in KEYS if k not in METHOD_KEYS)


def combined(records: list[dict[str, str] | None]) -> dict[str, str] | None:
    """The record of a summary over several evaluations (a replicate parent over its seed runs): each key's value
    where all records agree, ``mixed:<v1>,<v2>...`` (the distinct values, sorted) where they disagree, missing where
    any record lacks it. None when there is no record or any evaluation has none. A mixed or missing key makes the
    summary comparable with nothing on that key (:func:`unknown_keys`), so it is marked, never dropped."""
    if not records or any(r is None for r in records):
        return None
    out: dict[str, str] = {}
    for key in dict.fromkeys(k for r in records for k in r):
        values = [r.get(key) for r in records]
        if any(v is None for v in values):
            continue
        distinct = sorted(set(values))
        out[key] = distinct[0] if len(distinct) == 1 else MIXED_PREFIX + ",".join(distinct)
    return out


def grouping(record: dict[str, str] | None) -> dict[str, str] | None:
    """The part of a record that must be equal for two evaluations to be compared (``METHOD_KEYS`` dropped)."""
    return None if record is None else {k: v for k, v in record.items() if k not in METHOD_KEYS}


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def split_sha256(split: Any) -> str:
    """sha256 (hex) of a ``data.Split``'s ``to_dict()`` (``cmp.split_sha256``)."""
    return _sha256_json(split.to_dict())


def data_digest(ds: Any, classes: list[int] | None = None) -> str:
    """sha256 (hex) of a loaded dataset's content: its name, class names, labels and uint8 images as loaded; the one
    content digest of the harness (``cmp.data_digest`` over the whole dataset; ``lifecycle.log_data_input`` over one
    split part, what ``evaluate --data-root`` checks a moved dataset against).

    ``ds``: an ``orchestrator.data`` dataset (``images`` uint8 [N, C, H, W], ``labels`` [N], ``class_names``,
    ``class_indices(c)``). ``classes``: digest only these classes' images (in this order; their names in place of
    all class names); None: the whole dataset. The images are hashed at the loaded size, so the same files at another
    ``--image-size`` give another digest (as they give other numbers). The whole dataset's digest is cached on the
    dataset object (the images are immutable once loaded)."""
    if classes is None:
        cached = getattr(ds, "_cmp_data_digest", None)
        if cached is not None:
            return cached
        names, labels, images = list(map(str, ds.class_names)), ds.labels, ds.images
    else:
        idx = (np.concatenate([np.asarray(ds.class_indices(int(c)), dtype=np.int64) for c in classes]) if classes
               else np.zeros(0, dtype=np.int64))
        names = [str(ds.class_names[int(c)]) for c in classes]
        labels, images = np.asarray(ds.labels)[idx], ds.images[idx]
    h = hashlib.sha256(json.dumps([str(ds.name), names]).encode())
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    h.update(images.contiguous().numpy().tobytes() if hasattr(images, "numpy") else np.asarray(images).tobytes())
    digest = h.hexdigest()
    if classes is None:
        try:
            ds._cmp_data_digest = digest
        except AttributeError:  # a dataset class with __slots__: recompute next time
            pass
    return digest


def features_sha256(features: Any) -> str:
    """sha256 (hex) of a feature network's weights (every tensor of ``features.net.state_dict()``, by name, in
    name order, as float bytes), or ``"none"`` for an evaluation without a feature network (classifiers)."""
    net = getattr(features, "net", None)
    if net is None:
        return "none"
    cached = getattr(features, "_cmp_sha256", None)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest = h.hexdigest()
    features._cmp_sha256 = digest
    return digest


def comparability_record(*, dataset: str, ds: Any, split: Any, features: Any, shots: int, n_generate: int | None,
                         adapt_steps: int | None, eval_seeds: list[int],
                         shot_indices: dict[int, dict[int, list[int]]],
                         protocol: str = "fsig", protocol_variant: str = "default") -> dict[str, str]:
    """The comparability record of one evaluation: ``KEYS`` -> string values (MLflow tag values).

    Args: ``dataset``: the dataset key (``omniglot``); ``ds``: the loaded dataset (``data_digest``; its
      ``image_shape`` (C, H, W) gives ``image_size`` (H, or ``HxW``) and ``channels``); ``split``: the
      ``orchestrator.data.Split`` (``seed``, ``to_dict()``); ``features``: the feature space the metrics were
      computed in (``kind`` and its network's weights) or None; ``shots``, ``n_generate`` (None: not a generator
      evaluation), ``adapt_steps`` (None: the method adapts without a step count); ``eval_seeds``: the evaluation
      seeds the run's metrics come from; ``shot_indices``: per evaluation seed, each class's dataset indices of
      its conditioning shots (``EvalResult.shot_indices``); ``protocol``/``protocol_variant``: ``fsig``/``default``
      for this project's protocol.
    Returns: a dict with every key of ``KEYS``; digests are full sha256 hex strings. Source: ours.
    """
    c, h, w = (int(v) for v in ds.image_shape)
    shot_map = {str(int(s)): {str(int(k)): [int(i) for i in v] for k, v in sorted(per.items())}
                for s, per in sorted(shot_indices.items())}
    return {
        "dataset": str(dataset),
        "data_digest": data_digest(ds),
        "split_seed": str(int(split.seed)),
        "split_sha256": split_sha256(split),
        "image_size": str(h) if h == w else f"{h}x{w}",
        "channels": str(c),
        "features": str(getattr(features, "kind", None) or "none"),
        "features_sha256": features_sha256(features),
        "protocol": str(protocol),
        "protocol_variant": str(protocol_variant),
        "shots": str(int(shots)),
        "n_generate": "none" if n_generate is None else str(int(n_generate)),
        "adapt_steps": "none" if adapt_steps is None else str(int(adapt_steps)),
        "eval_seeds": ",".join(str(int(s)) for s in sorted(eval_seeds)),
        "shot_indices_sha256": _sha256_json(shot_map),
    }


def as_tags(record: dict[str, str]) -> dict[str, str]:
    """``{"cmp.<key>": value}`` for MLflow tags."""
    return {f"{TAG_PREFIX}{k}": str(v) for k, v in record.items()}


def from_tags(tags: dict[str, str]) -> dict[str, str] | None:
    """The record held by a run's tags (``cmp.<key>``), or None for a run recorded before comparability tags."""
    record = {k[len(TAG_PREFIX):]: v for k, v in tags.items() if k.startswith(TAG_PREFIX)}
    return record or None


def differing_keys(a: dict[str, str] | None, b: dict[str, str] | None) -> list[str]:
    """The keys on which two records differ (a missing record differs on ``"record"``), in ``KEYS`` order;
    ``METHOD_KEYS`` are not compared. Values only: a key neither record holds is not listed here but by
    :func:`unknown_keys`, and two records are comparable only when both lists are empty."""
    if a is None or b is None:
        return [] if a is None and b is None else ["record"]
    a, b = grouping(a), grouping(b)
    keys = list(KEYS) + sorted((set(a) | set(b)) - set(KEYS))
    return [k for k in keys if a.get(k) != b.get(k)]


def unknown_keys(a: dict[str, str] | None, b: dict[str, str] | None) -> list[str]:
    """The grouping keys (``KEYS`` less ``METHOD_KEYS``, and any other key either holds) whose value is unknown on
    either side: missing or mixed (:func:`known`), missing on both sides included (nothing then says the two were
    measured alike, so it is not "equal"). In ``KEYS`` order; [] when either record is None (``differing_keys``
    says ``"record"``)."""
    if a is None or b is None:
        return []
    a, b = grouping(a), grouping(b)
    keys = [k for k in KEYS if k not in METHOD_KEYS] + sorted((set(a) | set(b)) - set(KEYS))
    return [k for k in keys if not (known(a.get(k)) and known(b.get(k)))]
