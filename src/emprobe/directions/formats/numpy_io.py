"""Plain numpy: ``{layer: ndarray}`` in memory, or one ``.npz`` (``layer_{l}`` arrays + metadata JSON)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from emprobe.directions.direction import Direction
from emprobe.directions.formats._checks import naming, pick_meta, real_array
from emprobe.errors import EmprobeError, FormatError
from emprobe.io import atomic_path
from emprobe.validate import layer_key, loads_json, one_line

_KEY = re.compile(r"^layer_(0|[1-9][0-9]{0,5})$")


def to_numpy(direction: Direction) -> dict[int, np.ndarray]:
    """``{layer: [d] or [d, k]}`` float32 arrays (copies)."""
    return {la: direction.vectors[la].numpy().astype(np.float32).copy() for la in direction.layers}


def save_npz(direction: Direction, path: str | os.PathLike[str]) -> Path:
    """Write ``layer_{l}`` arrays and a ``metadata`` JSON string (no pickled objects)."""
    arrays = {f"layer_{la}": a for la, a in to_numpy(direction).items()}
    arrays["metadata"] = np.array(json.dumps(direction.metadata()))
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.savez(fh, allow_pickle=False, **arrays)
    return Path(path)


def from_numpy(arrays: dict[int, np.ndarray], model: str = "unknown", **meta: object) -> Direction:
    """``{layer: [d] or [d, k]}`` arrays -> Direction (real numeric arrays only; keys are
    non-negative ints or digit strings)."""
    if not isinstance(arrays, Mapping) or not arrays:
        raise FormatError("from_numpy: no arrays")
    vectors: dict[int, torch.Tensor] = {}
    for k, v in arrays.items():
        la = layer_key(k, "from_numpy")
        if la in vectors:
            raise FormatError(f"from_numpy: two keys for layer {la}")
        a = real_array(v, f"from_numpy: layer {la}")
        vectors[la] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32).copy())
    meta.setdefault("method", "imported_numpy")
    return Direction(vectors=vectors, model=model, d_model=int(next(iter(vectors.values())).shape[0]),
                     **meta)  # type: ignore[arg-type]


def load_npz(path: str | os.PathLike[str]) -> Direction:
    """Read an ``.npz`` written by :func:`save_npz` (or any ``layer_{l}`` arrays); pickled
    objects are refused, and every error names the file."""
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{p}: no such file")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {int(m.group(1)): z[k] for k in z.files if (m := _KEY.match(k))}
            meta_text = z["metadata"] if "metadata" in z.files else None
            if meta_text is not None:
                if meta_text.dtype.kind != "U" or meta_text.ndim != 0:
                    raise FormatError(f"{p}: 'metadata' must be one JSON string")
                meta_text = str(meta_text)
    except EmprobeError:
        raise
    except Exception as exc:  # zipfile, zlib, numpy header and memory errors all mean "corrupt"
        raise FormatError(f"{p}: not a readable .npz ({type(exc).__name__}: "
                          f"{one_line(exc, 120)})") from None
    if not arrays:
        raise FormatError(f"{p}: no layer_{{l}} arrays")
    meta = loads_json(meta_text, f"{p}: metadata", allow_nan=False) if meta_text else {}
    known = pick_meta(meta, f"{p}: metadata")
    model = known.pop("model", "unknown")
    with naming(p):
        return from_numpy(arrays, model=model, **known)
