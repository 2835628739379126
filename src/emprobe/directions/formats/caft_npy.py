"""CAFT directions: one ``.npy`` per layer plus a JSON spec of the chosen component indices.

Folder layout written by emprobe::

    out/
      layer_{l}.npy      [k, d_model]  components as rows (row i = component i)
      spec.json          {"10": [0, 12], ...}  chosen components per layer (CAFT style)

``from_caft`` applies a spec (``{"layer": [indices]}``) to select components.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from emprobe.directions.direction import Direction
from emprobe.directions.formats._checks import naming, pick_meta, real_array
from emprobe.errors import FormatError, ShapeError
from emprobe.io import atomic_dir, atomic_path, read_json, write_json
from emprobe.validate import check_int, excerpt, layer_key, one_line

_NAME = re.compile(r"^layer_(0|[1-9][0-9]{0,5})\.npy$")


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


def _check_spec(spec: object, where: str) -> dict[int, list[int]]:
    """A CAFT spec: ``{"layer": [component indices]}`` with integer keys and indices."""
    if not isinstance(spec, Mapping) or not spec:
        raise FormatError(f"{where}: spec must be a non-empty object mapping layer -> indices, "
                          f"got {excerpt(spec, 60)}")
    out: dict[int, list[int]] = {}
    for k, v in spec.items():
        la = layer_key(k, f"{where}: spec")
        if not isinstance(v, (list, tuple)) or not v:
            raise FormatError(f"{where}: spec[{la}] must be a non-empty list of component "
                              f"indices, got {excerpt(v, 60)}")
        out[la] = [check_int(i, f"{where}: spec[{la}] index", min_value=0) for i in v]
    return out


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
    spec_where = str(spec) if isinstance(spec, (str, os.PathLike)) else f"{p}: spec"
    if isinstance(spec, (str, os.PathLike)):
        spec = read_json(spec, allow_nan=False)
    chosen = None if spec is None else _check_spec(spec, spec_where)
    meta = read_json(p / "direction.json", allow_nan=False) if (p / "direction.json").is_file() else {}
    keep = pick_meta(meta, str(p / "direction.json"))
    vectors: dict[int, torch.Tensor] = {}
    layers = sorted(files) if chosen is None else sorted(chosen)
    for la in layers:
        if la not in files:
            raise FormatError(f"{p}: spec names layer {la} but layer_{la}.npy is missing")
        try:
            arr = np.load(files[la], allow_pickle=False)
        except Exception as exc:  # numpy header, truncation and memory errors
            raise FormatError(f"{files[la]}: not a numeric .npy ({type(exc).__name__}: "
                              f"{one_line(exc, 120)})") from None
        if not isinstance(arr, np.ndarray):
            raise FormatError(f"{files[la]}: not a single .npy array")
        arr = real_array(arr, str(files[la]))
        if arr.ndim == 1:
            arr = arr[None]
        idx = list(range(arr.shape[0])) if chosen is None else chosen[la]
        if any(i < 0 or i >= arr.shape[0] for i in idx):
            raise ShapeError(f"{files[la]}: spec indices {excerpt(idx, 60)} out of range "
                             f"0..{arr.shape[0] - 1}")
        vectors[la] = torch.from_numpy(arr[idx].T.astype(np.float32).copy())
    widths = {v.shape[0] for v in vectors.values()}
    if len(widths) != 1:
        raise ShapeError(f"{p}: layers of different widths {sorted(widths)}")
    meta_model = keep.pop("model", "unknown")
    keep.pop("stats", None)
    keep.setdefault("method", "imported_caft")
    params = keep.get("params", {})
    if not isinstance(params, Mapping):
        raise FormatError(f"{p / 'direction.json'}: params must be an object")
    keep["params"] = {**params, "caft_spec": ({str(k): v for k, v in chosen.items()}
                                              if chosen else None)}
    with naming(p):
        return Direction(vectors=vectors, model=model or meta_model, d_model=widths.pop(), **keep)
