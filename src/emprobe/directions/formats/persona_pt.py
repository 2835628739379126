"""persona_vectors tensors: ``[n_layers + 1, d_model]``, row ``i`` = HF ``hidden_states[i]``.

Row 0 is the embeddings (no emprobe resid_post layer); row ``l + 1`` is emprobe
resid_post layer ``l`` for ``l < n_layers - 1``. The last row ``n_layers`` is what
transformers' last ``hidden_states`` holds: the final norm applied to the last block's
output, which is not a linear function of emprobe's (pre-norm) ``resid_post[n_layers - 1]``.
So the export writes that row as zeros (with a warning) and the import skips it. Rows for
layers a direction lacks are written as zeros.
emprobe writes safetensors (one tensor, key ``vectors``) by default; a ``.pt``
path writes a plain tensor with ``torch.save`` for the original code, and is
read back only with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from emprobe.directions.direction import Direction
from emprobe.directions.formats._checks import naming
from emprobe.errors import FormatError, ShapeError
from emprobe.hooks.convention import from_persona_index, to_persona_index
from emprobe.io import atomic_path, load_tensors, save_tensors
from emprobe.validate import MAX_LAYER, check_tensor, excerpt, layer_key, one_line

KEY = "vectors"


def to_persona_tensor(direction: Direction, n_layers: int | None = None) -> torch.Tensor:
    """``[n_layers + 1, d_model]`` with emprobe layer ``l`` in row ``l + 1`` (missing rows zero)."""
    if direction.site != "resid_post":
        raise FormatError(f"persona_vectors rows are block outputs (resid_post), not {direction.site!r}")
    n = n_layers or direction.n_layers
    if n is None:
        raise ShapeError("persona tensor needs n_layers (the direction does not record it)")
    if max(direction.layers) >= n:
        raise ShapeError(f"direction has layer {max(direction.layers)} but n_layers is {n}")
    out = torch.zeros(n + 1, direction.d_model)
    for la in direction.layers:
        if la == n - 1:
            warnings.warn(f"persona tensor: row {n} is the final-norm output, not emprobe's "
                          f"resid_post {la}; left as zeros", stacklevel=2)
            continue
        out[to_persona_index(la, n)] = direction.vector(la)
    return out


def save_persona(direction: Direction, path: str | os.PathLike[str], n_layers: int | None = None) -> Path:
    """Write the persona tensor (``.pt`` -> torch.save of a plain tensor; else safetensors)."""
    t = to_persona_tensor(direction, n_layers)
    p = Path(path)
    if p.suffix in (".pt", ".pth"):
        with atomic_path(p) as tmp:
            torch.save(t.contiguous(), tmp)
        return p
    return save_tensors(p, {KEY: t}, metadata={"format": "persona_vectors", "rows": "hidden_states index"})


def load_persona_tensor(path: str | os.PathLike[str]) -> torch.Tensor:
    """The ``[n_layers + 1, d_model]`` tensor of a persona file (``.pt`` read weights-only).

    Refuses anything but one real floating 2-D tensor; every error is one line naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{p}: no such file")
    if p.suffix in (".pt", ".pth"):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch's weights-only text spans many lines: keep the first
            raise FormatError(f"{p}: not a weights-only torch tensor file ({type(exc).__name__}: "
                              f"{one_line(exc, 120)})") from None
        if not isinstance(obj, torch.Tensor):
            raise FormatError(f"{p}: expected one tensor, found {type(obj).__name__}")
        t = obj
    else:
        tensors = load_tensors(p)
        if KEY not in tensors and len(tensors) != 1:
            raise FormatError(f"{p}: expected one tensor or key {KEY!r}; found "
                              f"{excerpt(sorted(tensors), 80)}")
        t = tensors[KEY] if KEY in tensors else next(iter(tensors.values()))
    check_tensor(t, str(p), ndims=(2,))  # NaN / inf anywhere is refused, not only in used rows
    if t.shape[0] < 2 or t.shape[0] > MAX_LAYER + 2:
        raise ShapeError(f"{p}: persona tensor has {t.shape[0]} rows; want n_layers + 1 with "
                         f"1 <= n_layers <= {MAX_LAYER + 1}")
    t = t.float()
    if not bool(torch.isfinite(t).all()):  # e.g. a float64 beyond float32's range
        raise FormatError(f"{p}: values overflow float32")
    return t


def from_persona(path_or_tensor: str | os.PathLike[str] | torch.Tensor, model: str = "unknown",
                 layers: Sequence[int] | None = None, trait: str | None = None) -> Direction:
    """persona tensor -> Direction (emprobe layers; all-zero rows skipped unless ``layers`` given)."""
    where = "persona tensor" if isinstance(path_or_tensor, torch.Tensor) else str(path_or_tensor)
    if isinstance(path_or_tensor, torch.Tensor):
        t = check_tensor(path_or_tensor, where, ndims=(2,), error=ShapeError).float()
    else:
        t = load_persona_tensor(path_or_tensor)
    if t.shape[0] < 2:
        raise ShapeError(f"{where}: must be [n_layers + 1, d]; got {tuple(t.shape)}")
    n_layers = t.shape[0] - 1
    with naming(where):
        if layers is None:
            # row n_layers is post final-norm: no emprobe site, so it is never imported
            rows = [i for i in range(1, n_layers) if t[i].abs().sum() > 0]
        else:
            rows = [to_persona_index(layer_key(la, "layers"), n_layers) for la in layers]
        vectors = {from_persona_index(i, n_layers): t[i] for i in rows}
    if not vectors:
        raise FormatError(f"{where}: no non-zero block-output rows")
    with naming(where):
        return Direction(vectors=vectors, model=model, d_model=int(t.shape[1]),
                         n_layers=n_layers,
                         positions="response", method="imported_persona_vectors",
                         sign="trait minus anti-trait (persona_vectors response_avg_diff)",
                         params={"trait": trait, "source": None if isinstance(
                             path_or_tensor, torch.Tensor) else str(path_or_tensor)})
