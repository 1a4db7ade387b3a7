"""The generated-image store: one Parquet shard per source image, written atomically (ours; pyarrow's format).

``pregenerate`` writes it; the few-shot classifiers read it (``orchestrator.classify.GeneratedStore``).
A low layer: both the command and the classifier kind import it, and it imports neither.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.errors import UserError

MANIFEST = "_manifest.json"



def shard_path(out: Path, image_id: int) -> Path:
    return Path(out) / f"part-{int(image_id):08d}.parquet"


def done_ids(out: Path) -> set[int]:
    """Image ids whose shard is complete (temp files are hidden and never counted)."""
    ids = set()
    for f in Path(out).glob("part-*.parquet"):
        try:
            ids.add(int(f.stem.split("-", 1)[1]))
        except ValueError:
            continue
    return ids


def write_shard(out: Path, image_id: int, rows: list[dict[str, Any]]) -> bool:
    """Write one image's rows atomically (hidden temp file + rename); False if it was already there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    final = shard_path(out, image_id)
    if final.exists():
        return False
    table = pa.Table.from_pylist(rows, schema=SCHEMA())
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, final)
    return True


def SCHEMA():  # noqa: N802 (a function so pyarrow is imported only when used)
    import pyarrow as pa

    return pa.schema([("image_id", pa.int64()), ("label", pa.int32()), ("class_name", pa.string()),
                      ("variant", pa.int32()), ("seed", pa.int64()), ("loss", pa.float32()),
                      ("png", pa.binary())])


def read_store(out: Path, columns: list[str] | None = None):
    """The whole Parquet dataset as one pyarrow Table (hidden and ``_`` files are skipped)."""
    import pyarrow.dataset as pads

    out = Path(out)
    if not out.is_dir() or not any(out.glob("part-*.parquet")):
        raise UserError(f"{out} holds no pre-generated variants: run python -m orchestrator pregenerate --out {out} first")
    return pads.dataset(str(out), format="parquet", schema=SCHEMA()).to_table(columns=columns)


def read_manifest(out: Path) -> dict[str, Any] | None:
    path = Path(out) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def decode_png(data: bytes):
    """PNG bytes -> float tensor [C, H, W] in [-1, 1] (C as stored: 3 for BigGAN variants)."""
    import torch
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0


def encode_png(image) -> bytes:
    """[3, H, W] tensor in [-1, 1] -> PNG bytes."""
    from PIL import Image

    x = image.detach().cpu().float().numpy()  # numpy: a few µs; the same in torch ops was ~15 ms on a busy machine
    arr = np.ascontiguousarray(((np.clip(x, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
