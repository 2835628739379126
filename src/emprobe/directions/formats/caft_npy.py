"""CAFT directions: one ``.npy`` per layer plus a JSON spec of the chosen component indices.

Folder layout written by emprobe::

    out/
      layer_{l}.npy      [k, d_model]  components as rows (row i = component i)
      spec.json          {"10": [0, 12], ...}  chosen components per layer (CAFT style)

``from_caft`` applies a spec (``{"layer": [indices]}``) to select components.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from emprobe.directions.direction import Direction
from emprobe.errors import FormatError, ShapeError
from emprobe.io import atomic_dir, atomic_path, read_json, write_json

_NAME = re.compile(r"^layer_(\d+)\.npy$")


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def to_caft(direction: Direction, folder: str | os.PathLike[str],
            spec: Mapping[int | str, Sequence[int]] | None = None) -> Path:
    """Write ``layer_{l}.npy`` ``[k, d]`` per layer and ``spec.json`` (default: all components)."""
    with atomic_dir(folder) as tmp:
        for la in direction.layers:
            t = direction.vectors[la]
            rows = (t.unsqueeze(-1) if t.dim() == 1 else t).T.contiguous().numpy().astype(np.float32)
            _save_npy(tmp / f"layer_{la}.npy", rows)
        chosen = ({str(int(k)): [int(i) for i in v] for k, v in spec.items()} if spec is not None
                  else {str(la): list(range(direction.k[la])) for la in direction.layers})
        write_json(tmp / "spec.json", chosen)
        write_json(tmp / "direction.json", direction.metadata())
    return Path(folder)


def from_caft(folder: str | os.PathLike[str], spec: Mapping[str, Sequence[int]] | str | os.PathLike[str] | None = None,
              model: str | None = None) -> Direction:
    """Read CAFT ``.npy`` files (rows = components); select per ``spec`` (dict, JSON path or
    the folder's ``spec.json``; no spec = all components)."""
    p = Path(folder)
    files = {int(m.group(1)): f for f in p.iterdir() if (m := _NAME.match(f.name))} if p.is_dir() else {}
    if not files:
        raise FormatError(f"{p}: no layer_{{l}}.npy files")
    if spec is None and (p / "spec.json").is_file():
        spec = p / "spec.json"
    if isinstance(spec, (str, os.PathLike)):
        spec = read_json(spec)
    meta = read_json(p / "direction.json") if (p / "direction.json").is_file() else {}
    vectors: dict[int, torch.Tensor] = {}
    layers = sorted(files) if spec is None else sorted(int(k) for k in spec)
    for la in layers:
        if la not in files:
            raise FormatError(f"{p}: spec names layer {la} but layer_{la}.npy is missing")
        try:
            arr = np.load(files[la], allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise FormatError(f"{files[la]}: not a numeric .npy ({exc})") from None
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2:
            raise ShapeError(f"{files[la]}: expected [k, d]; got {arr.shape}")
        idx = list(range(arr.shape[0])) if spec is None else [int(i) for i in spec[str(la)]]
        if any(i < 0 or i >= arr.shape[0] for i in idx):
            raise ShapeError(f"{files[la]}: spec indices {idx} out of range 0..{arr.shape[0] - 1}")
        vectors[la] = torch.from_numpy(arr[idx].T.copy()).float()
    widths = {v.shape[0] for v in vectors.values()}
    if len(widths) != 1:
        raise ShapeError(f"{p}: layers of different widths {sorted(widths)}")
    keep = {k: meta[k] for k in ("fingerprint", "revision", "adapter", "n_layers", "site", "positions",
                                 "normalisation", "sign", "method", "params", "provenance", "created",
                                 "emprobe_version") if k in meta}
    keep.setdefault("method", "imported_caft")
    keep["params"] = {**keep.get("params", {}), "caft_spec": json.loads(json.dumps(spec)) if spec else None}
    return Direction(vectors=vectors, model=model or meta.get("model", "unknown"),
                     d_model=widths.pop(), **keep)
