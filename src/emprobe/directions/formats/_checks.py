"""Checks every converter runs on what it read, so each error names the file it came from."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from emprobe.errors import EmprobeError, FormatError, ShapeError
from emprobe.validate import excerpt

# Direction fields a converter may restore from stored emprobe metadata
META_FIELDS = ("model", "fingerprint", "revision", "adapter", "n_layers", "site", "positions",
               "normalisation", "sign", "method", "params", "provenance", "stats", "created",
               "emprobe_version")


def real_array(arr: object, where: str, ndims: tuple[int, ...] = (1, 2)) -> np.ndarray:
    """A real floating or integer numpy array with the allowed number of dims, none empty.

    Complex, object, string and boolean arrays are refused (never cast).
    """
    a = np.asarray(arr) if not isinstance(arr, np.ndarray) else arr
    if a.dtype.kind not in "fiu":
        raise FormatError(f"{where}: dtype {a.dtype} is not a real number type")
    if a.ndim not in ndims:
        raise ShapeError(f"{where}: array has {a.ndim} dims {a.shape}; want "
                         f"{' or '.join(map(str, ndims))}")
    if a.size == 0:
        raise ShapeError(f"{where}: array {a.shape} is empty")
    return a


def real_tensor(value: object, where: str, ndims: tuple[int, ...] = (1,)) -> torch.Tensor:
    """A finite float32 tensor from a tensor / array / list, refusing complex, non-numeric,
    empty or non-finite data (also values that overflow float32)."""
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise FormatError(f"{where}: dtype {value.dtype} is not a real number type")
        t = value.detach()
    else:
        try:
            a = np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise FormatError(f"{where}: not an array ({excerpt(str(exc), 80)})") from None
        a = real_array(a, where, ndims)
        t = torch.from_numpy(np.ascontiguousarray(a).copy())
    if t.dim() not in ndims:
        raise ShapeError(f"{where}: tensor has {t.dim()} dims {tuple(t.shape)}; want "
                         f"{' or '.join(map(str, ndims))}")
    if t.numel() == 0:
        raise ShapeError(f"{where}: tensor {tuple(t.shape)} is empty")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise FormatError(f"{where}: holds NaN or inf (in float32)")
    return t


def pick_meta(meta: object, where: str) -> dict[str, Any]:
    """The known Direction fields of stored metadata (a JSON object; types checked later)."""
    if not isinstance(meta, Mapping):
        raise FormatError(f"{where}: metadata must be a JSON object, got {type(meta).__name__}")
    return {k: meta[k] for k in META_FIELDS if k in meta}


@contextlib.contextmanager
def naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """Prefix the file name to any EmprobeError raised inside (unless it already names it)."""
    try:
        yield
    except EmprobeError as exc:
        text = str(exc)
        if text.startswith(str(path)):
            raise
        try:
            new = type(exc)(f"{path}: {text}")
        except TypeError:  # an error class with another constructor
            raise exc from None
        raise new from None
