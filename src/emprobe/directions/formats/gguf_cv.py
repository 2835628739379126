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
from typing import TypedDict

import numpy as np
import torch

from emprobe.directions.direction import Direction
from emprobe.directions.formats._checks import naming, pick_meta, real_array
from emprobe.errors import EmprobeError, FormatError, ShapeError
from emprobe.io import atomic_path
from emprobe.validate import excerpt, layer_key, loads_json, one_line

ARCH = "controlvector"
META_KEY = "emprobe.direction_json"


class GgufExport(TypedDict):
    """What ``to_gguf`` wrote: the file, its layers, the layers left out, the model hint."""

    path: str
    layers: list[int]
    dropped: list[int]
    model_hint: str


def to_gguf(direction: Direction, path: str | os.PathLike[str], model_hint: str | None = None,
            component: int = 0, strict: bool = False) -> GgufExport:
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


ALLOWED_TENSOR_TYPES = ("F32", "F16")


def read_gguf_fields(path: str | os.PathLike[str]) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """Raw ``(key -> value, tensor name -> array)`` of a GGUF file (via ``gguf.GGUFReader``).

    Strings must be UTF-8; tensors must be F32 or F16 (quantised control vectors such as Q8_0
    are refused rather than returned as raw bytes). Every error names the file.
    """
    import gguf

    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{p}: no such file")
    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as exc:  # the reader raises ValueError, struct/numpy errors, MemoryError
        raise FormatError(f"{p}: not a readable GGUF file ({type(exc).__name__}: "
                          f"{one_line(exc, 120)})") from None
    kv: dict[str, object] = {}
    try:
        for name, fld in reader.fields.items():
            if not fld.types:
                continue
            if fld.types[0] == gguf.GGUFValueType.STRING:
                raw = bytes(fld.parts[fld.data[0]])
                try:
                    kv[name] = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise FormatError(f"{p}: key {excerpt(name, 60)} is not UTF-8 text "
                                      f"(byte {exc.start})") from None
            elif fld.types[0] != gguf.GGUFValueType.ARRAY:
                kv[name] = fld.parts[fld.data[0]].tolist()[0]
        tensors: dict[str, np.ndarray] = {}
        for t in reader.tensors:
            kind = gguf.GGMLQuantizationType(t.tensor_type).name
            if kind not in ALLOWED_TENSOR_TYPES:
                raise FormatError(f"{p}: tensor {excerpt(t.name, 60)} has type {kind}; control "
                                  f"vectors must be {' or '.join(ALLOWED_TENSOR_TYPES)}")
            tensors[t.name] = np.array(t.data).reshape([int(n) for n in reversed(t.shape)])
    except EmprobeError:
        raise
    except Exception as exc:
        raise FormatError(f"{p}: not a readable GGUF file ({type(exc).__name__}: "
                          f"{one_line(exc, 120)})") from None
    return kv, tensors


def from_gguf(path: str | os.PathLike[str], model: str | None = None) -> Direction:
    """Read a control-vector GGUF (emprobe's or repeng's) into a Direction.

    ``direction.N`` -> emprobe resid_post layer ``N``. With emprobe's metadata key
    present the original metadata is restored; otherwise ``model`` (or the
    model hint) names the model. Each ``direction.N`` must be one 1-D F32/F16 vector.
    """
    kv, tensors = read_gguf_fields(path)
    arch = kv.get("general.architecture")
    if arch != ARCH:
        raise FormatError(f"{path}: architecture is {excerpt(arch, 60)}, not {ARCH!r}")
    vectors: dict[int, torch.Tensor] = {}
    for name, arr in tensors.items():
        if not name.startswith("direction."):
            continue
        layer = layer_key(name.split(".", 1)[1], f"{path}: tensor {excerpt(name, 60)}")
        if layer < 1:
            raise FormatError(f"{path}: {name}: llama.cpp control vectors start at direction.1")
        a = real_array(arr, f"{path}: {name}", ndims=(1,))
        vectors[layer] = torch.from_numpy(a.astype(np.float32).copy())
    if not vectors:
        raise FormatError(f"{path}: no direction.N tensors")
    widths = {v.shape[0] for v in vectors.values()}
    if len(widths) != 1:
        raise ShapeError(f"{path}: direction tensors of different widths {sorted(widths)}")
    hint = kv.get(f"{ARCH}.model_hint")
    if hint is not None and not isinstance(hint, str):
        raise FormatError(f"{path}: {ARCH}.model_hint must be a string")
    with naming(path):
        if META_KEY in kv:
            raw = kv[META_KEY]
            if not isinstance(raw, str):
                raise FormatError(f"{META_KEY} must be a string")
            meta = loads_json(raw, META_KEY, allow_nan=False)
            known = pick_meta(meta, META_KEY)
            known.pop("site", None)
            if model is not None:
                known["model"] = model
            return Direction(vectors=vectors, d_model=widths.pop(), site="resid_post", **known)
        return Direction(
            vectors=vectors, model=model or hint or "unknown",
            d_model=widths.pop(), site="resid_post", positions="all", method="imported_gguf",
            params={"source": str(path), "model_hint": hint,
                    "layer_count": kv.get(f"{ARCH}.layer_count")},
        )
