"""Directions from LoRA weights: singular vectors of a module's update, computed from the factors.

``dW = s * B @ A`` with ``B [d_out, r]``, ``A [r, d_in]``. With thin QR ``B = Q_B R_B``
and ``A^T = Q_A R_A``, ``dW = Q_B (s R_B R_A^T) Q_A^T``; the SVD of the ``r x r`` core
rotated back is the SVD of ``dW``, at O(d r^2) cost, never forming ``dW``.
Adapters are read directly (``adapter_model.safetensors`` + ``adapter_config.json``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from emprobe.directions.direction import Direction
from emprobe.errors import FormatError, ShapeError
from emprobe.io import load_tensors, read_json
from emprobe.models.lora import factor_svd as _factor_svd

WRITE_MODULES = ("o_proj", "down_proj", "c_proj", "out_proj", "dense", "fc2", "dense_4h_to_h")
_LAYER_RE = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
_KEY_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


@dataclass
class LoraModule:
    """One adapted linear module: ``dW = scale * B @ A``."""

    name: str
    layer: int | None
    A: torch.Tensor  # [r, d_in]
    B: torch.Tensor  # [d_out, r]
    scale: float

    @property
    def short(self) -> str:
        return self.name.rsplit(".", 1)[-1]


def factor_svd(B: torch.Tensor, A: torch.Tensor, scale: float = 1.0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of ``scale * B @ A`` from the factors: ``(U [d_out, r], S [r], V [d_in, r])``.

    Signs are fixed so each left singular vector's largest-magnitude entry is positive.
    """
    return _factor_svd(B, A, scale, fix_signs=True)


def read_adapter(adapter_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], list[LoraModule]]:
    """Adapter config and its LoRA modules (scales from r / lora_alpha / rsLoRA / patterns)."""
    folder = Path(adapter_dir)
    cfg = read_json(folder / "adapter_config.json")
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise FormatError(f"{folder}: no adapter_model.safetensors (pickled .bin adapters are not read)")
    tensors = load_tensors(weights)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY_RE.match(key)
        if m:
            pairs.setdefault(m.group("module"), {})[m.group("ab")] = t
    if not pairs:
        raise FormatError(f"{weights}: no lora_A / lora_B tensors")
    modules = []
    for name, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise FormatError(f"{weights}: module {name} lacks lora_{'A' if 'A' not in ab else 'B'}")
        r = int(ab["A"].shape[0])  # the stored rank (rank_pattern already applied by PEFT)
        alpha = float(_pattern(cfg.get("alpha_pattern") or {}, name, cfg.get("lora_alpha", r)))
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        lm = _LAYER_RE.search(name + ".")
        modules.append(LoraModule(name=name, layer=int(lm.group(1)) if lm else None,
                                  A=ab["A"].float(), B=ab["B"].float(), scale=scale))
    return cfg, modules


def _pattern(patterns: dict[str, Any], name: str, default: Any) -> Any:
    for pat, val in patterns.items():
        if re.search(rf"(^|\.){re.escape(pat)}$", name) or re.search(pat, name):
            return val
    return default


def lora_direction(
    adapter_dir: str | os.PathLike[str],
    module: str = "down_proj",
    side: str = "auto",
    k: int = 1,
    layers: list[int] | None = None,
) -> Direction:
    """Top-``k`` singular vectors of ``module``'s update at each adapted layer.

    ``side``: ``left`` (directions the update writes into the residual stream; for
    write modules o_proj / down_proj), ``right`` (directions it reads; q/k/v/gate/up),
    or ``auto`` (left for write modules, right otherwise). Vectors are unit norm,
    ``[d]`` for k = 1 else ``[d, k]``; singular values go to ``stats``.
    """
    if side not in ("auto", "left", "right"):
        raise FormatError(f"side must be auto, left or right, not {side!r}")
    cfg, modules = read_adapter(adapter_dir)
    chosen = [m for m in modules if m.short == module and m.layer is not None
              and (layers is None or m.layer in layers)]
    if not chosen:
        have = sorted({m.short for m in modules})
        raise FormatError(f"{adapter_dir}: no adapted module {module!r} (has {have})")
    use_left = side == "left" or (side == "auto" and module in WRITE_MODULES)
    vectors, svals = {}, {}
    for m in chosen:
        u, s, v = factor_svd(m.B, m.A, m.scale)
        basis = (u if use_left else v)[:, :k]
        vectors[m.layer] = basis[:, 0] if k == 1 else basis
        svals[str(m.layer)] = s[:k].tolist()
    widths = {t.shape[0] for t in vectors.values()}
    if len(widths) != 1:
        raise ShapeError(f"{module}: singular vectors of different widths {sorted(widths)}")
    if use_left:
        site = "mlp_out" if module in ("down_proj", "fc2", "dense_4h_to_h") else "attn_out"
        if module == "c_proj":
            site = "mlp_out" if any(".mlp." in m.name for m in chosen) else "attn_out"
    else:
        site = "resid_pre"
    return Direction(
        vectors=vectors, model=str(cfg.get("base_model_name_or_path") or "unknown"),
        d_model=widths.pop(), site=site, positions="all", normalisation="unit",
        sign="largest-magnitude entry of each left singular vector is positive",
        method="lora_singular_vectors",
        params={"adapter": str(adapter_dir), "module": module,
                "side": "left" if use_left else "right", "k": k,
                "note": "right vectors are read from the block's normalised input"},
        provenance={"adapter": {"path": str(adapter_dir), "r": cfg.get("r"),
                                "lora_alpha": cfg.get("lora_alpha"),
                                "use_rslora": bool(cfg.get("use_rslora"))}},
        stats={"singular_values": svals},
    )
