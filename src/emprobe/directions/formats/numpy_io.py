"""Plain numpy: ``{layer: ndarray}`` in memory, or one ``.npz`` (``layer_{l}`` arrays + metadata JSON)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from emprobe.directions.direction import Direction
from emprobe.errors import FormatError
from emprobe.io import atomic_path

_KEY = re.compile(r"^layer_(\d+)$")


def to_numpy(direction: Direction) -> dict[int, np.ndarray]:
    """``{layer: [d] or [d, k]}`` float32 arrays (copies)."""
    return {la: direction.vectors[la].numpy().astype(np.float32).copy() for la in direction.layers}


def save_npz(direction: Direction, path: str | os.PathLike[str]) -> Path:
    """Write ``layer_{l}`` arrays and a ``metadata`` JSON string (no pickled objects)."""
    arrays = {f"layer_{la}": a for la, a in to_numpy(direction).items()}
    arrays["metadata"] = np.array(json.dumps(direction.metadata()))
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.savez(fh, **arrays)
    return Path(path)


def from_numpy(arrays: dict[int, np.ndarray], model: str = "unknown", **meta: object) -> Direction:
    vectors = {int(k): torch.from_numpy(np.asarray(v, dtype=np.float32).copy()) for k, v in arrays.items()}
    if not vectors:
        raise FormatError("no arrays")
    meta.setdefault("method", "imported_numpy")
    return Direction(vectors=vectors, model=model, d_model=int(next(iter(vectors.values())).shape[0]),
                     **meta)  # type: ignore[arg-type]


def load_npz(path: str | os.PathLike[str]) -> Direction:
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{p}: no such file")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {int(m.group(1)): z[k] for k in z.files if (m := _KEY.match(k))}
            meta = json.loads(str(z["metadata"])) if "metadata" in z.files else {}
    except (ValueError, OSError) as exc:
        raise FormatError(f"{p}: not a readable .npz ({exc})") from None
    if not arrays:
        raise FormatError(f"{p}: no layer_{{l}} arrays")
    known = {k: meta[k] for k in ("fingerprint", "revision", "adapter", "n_layers", "site", "positions",
                                  "normalisation", "sign", "method", "params", "provenance", "stats",
                                  "created", "emprobe_version") if k in meta}
    return from_numpy(arrays, model=meta.get("model", "unknown"), **known)
