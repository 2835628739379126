"""repeng / llama.cpp control-vector GGUF, written and read with the ``gguf`` package.

File layout: architecture ``controlvector``; keys ``controlvector.model_hint``
(string) and ``controlvector.layer_count`` (uint32); one float32 tensor
``direction.{N}`` of ``[d_model]`` per layer.

Layer mapping: llama.cpp adds ``direction.N`` to the output of block ``N`` (its
graph applies control tensor ``il`` after layer ``il``; ``direction.0`` is
rejected as "never present"). So ``direction.N`` = emprobe ``resid_post`` layer
``N`` and emprobe layer 0 cannot be exported (it is dropped with a note in the
result, or refused with ``strict=True``). repeng's ``ControlModel`` also adds
``directions[N]`` to block ``N``'s output.

emprobe's own metadata travels in an extra string key ``emprobe.direction_json``
that llama.cpp ignores, so a round trip keeps provenance.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emprobe.directions.direction import Direction
from emprobe.errors import FormatError, ShapeError
from emprobe.io import atomic_path

ARCH = "controlvector"
META_KEY = "emprobe.direction_json"


def to_gguf(direction: Direction, path: str | os.PathLike[str], model_hint: str | None = None,
            component: int = 0, strict: bool = False) -> dict[str, Any]:
    """Write a control-vector GGUF. Needs ``site == "resid_post"``.

    Returns ``{"path", "layers" (written), "dropped" (emprobe layers not exportable)}``.
    For bases ``[d, k]`` column ``component`` is written.
    """
    import gguf

    if direction.site != "resid_post":
        raise FormatError(f"control vectors act on block outputs (resid_post), not {direction.site!r}")
    dropped = [la for la in direction.layers if la < 1]
    if dropped and strict:
        raise FormatError("llama.cpp control vectors have no layer 0 (direction.0 is rejected)")
    layers = [la for la in direction.layers if la >= 1]
    if not layers:
        raise FormatError("nothing to export: llama.cpp control vectors start at layer 1")
    hint = model_hint or _hint(direction.model)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", hint)
        writer.add_uint32(f"{ARCH}.layer_count", len(layers))
        writer.add_string(META_KEY, json.dumps(direction.metadata()))
        for la in layers:
            vec = direction.vector(la, component).numpy().astype(np.float32)
            writer.add_tensor(f"direction.{la}", vec)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return {"path": str(path), "layers": layers, "dropped": dropped, "model_hint": hint}


def _hint(model: str) -> str:
    # repeng writes the model_type (e.g. "llama"); a path's last part is the best we have
    return Path(model).name or model


def read_gguf_fields(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Raw ``(key -> value, tensor name -> array)`` of a GGUF file (via ``gguf.GGUFReader``)."""
    import gguf

    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{p}: no such file")
    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as exc:
        raise FormatError(f"{p}: not a readable GGUF file ({exc})") from None
    kv: dict[str, Any] = {}
    for name, fld in reader.fields.items():
        if not fld.types:
            continue
        if fld.types[0] == gguf.GGUFValueType.STRING:
            kv[name] = bytes(fld.parts[fld.data[0]]).decode("utf-8")
        elif fld.types[0] != gguf.GGUFValueType.ARRAY:
            kv[name] = fld.parts[fld.data[0]].tolist()[0]
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    return kv, tensors


def from_gguf(path: str | os.PathLike[str], model: str | None = None) -> Direction:
    """Read a control-vector GGUF (emprobe's or repeng's) into a Direction.

    ``direction.N`` -> emprobe resid_post layer ``N``. With emprobe's metadata key
    present the original metadata is restored; otherwise ``model`` (or the
    model hint) names the model.
    """
    kv, tensors = read_gguf_fields(path)
    arch = kv.get("general.architecture")
    if arch != ARCH:
        raise FormatError(f"{path}: architecture is {arch!r}, not {ARCH!r}")
    vectors: dict[int, torch.Tensor] = {}
    for name, arr in tensors.items():
        if not name.startswith("direction."):
            continue
        try:
            layer = int(name.split(".", 1)[1])
        except ValueError:
            raise FormatError(f"{path}: bad tensor name {name!r}") from None
        if layer < 1:
            raise FormatError(f"{path}: {name}: llama.cpp control vectors start at direction.1")
        vectors[layer] = torch.from_numpy(arr.astype(np.float32).reshape(-1).copy())
    if not vectors:
        raise FormatError(f"{path}: no direction.N tensors")
    widths = {v.shape[0] for v in vectors.values()}
    if len(widths) != 1:
        raise ShapeError(f"{path}: direction tensors of different widths {sorted(widths)}")
    if META_KEY in kv:
        meta = json.loads(kv[META_KEY])
        known = {k: meta[k] for k in ("model", "fingerprint", "revision", "adapter", "n_layers",
                                      "positions", "normalisation", "sign", "method", "params",
                                      "provenance", "stats", "created", "emprobe_version")
                 if k in meta}
        if model is not None:
            known["model"] = model
        return Direction(vectors=vectors, d_model=widths.pop(), site="resid_post", **known)
    return Direction(
        vectors=vectors, model=model or str(kv.get(f"{ARCH}.model_hint", "unknown")),
        d_model=widths.pop(), site="resid_post", positions="all", method="imported_gguf",
        params={"source": str(path), "model_hint": kv.get(f"{ARCH}.model_hint"),
                "layer_count": kv.get(f"{ARCH}.layer_count")},
    )
