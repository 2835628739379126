"""Directions from LoRA weights: singular vectors of a module's update, computed from the factors.

``dW = s * B @ A`` with ``B [d_out, r]``, ``A [r, d_in]``. With thin QR ``B = Q_B R_B``
and ``A^T = Q_A R_A``, ``dW = Q_B (s R_B R_A^T) Q_A^T``; the SVD of the ``r x r`` core
rotated back is the SVD of ``dW``, at O(d r^2) cost, never forming ``dW``.
Adapters are read by ``emprobe.models.adapter.read_adapter`` (safetensors + config only).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from emprobe.directions.direction import Direction
from emprobe.directions.formats._checks import naming
from emprobe.errors import ConfigError, FormatError, ShapeError
from emprobe.models.adapter import LoraModule
from emprobe.models.adapter import read_adapter as read_lora_adapter
from emprobe.models.lora import factor_svd
from emprobe.validate import check_int, excerpt

if TYPE_CHECKING:
    import torch

WRITE_MODULES = ("o_proj", "down_proj", "c_proj", "out_proj", "dense", "fc2", "dense_4h_to_h")
_LAYER_RE = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
_KEY_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def read_adapter(adapter_dir: str | os.PathLike[str]) -> tuple[dict[str, object], list[LoraModule]]:
    """Adapter config and its LoRA modules (``emprobe.models.adapter.read_adapter``)."""
    adapter = read_lora_adapter(os.fspath(adapter_dir))
    return adapter.config, list(adapter)


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
        raise ConfigError(f"{adapter_dir}: side must be auto, left or right, not "
                          f"{excerpt(side, 30)}")
    k = check_int(k, f"{adapter_dir}: k", min_value=1, error=ConfigError)
    cfg, modules = read_adapter(adapter_dir)
    chosen = [m for m in modules if m.module_type == module and m.layer is not None
              and (layers is None or m.layer in layers)]
    if not chosen:
        have = sorted({m.module_type for m in modules})
        raise FormatError(f"{adapter_dir}: no adapted module {excerpt(module, 40)} (has {have})")
    small = [m for m in chosen if m.rank < k]
    if small:
        raise ConfigError(f"{adapter_dir}: k={k} is more than module {small[0].name}'s rank "
                          f"{small[0].rank}")
    use_left = side == "left" or (side == "auto" and module in WRITE_MODULES)
    vectors, svals = {}, {}
    for m in chosen:
        u, s, v = factor_svd(m.B, m.A, m.scale)
        basis = (u if use_left else v)[:, :k]
        vectors[m.layer] = basis[:, 0] if k == 1 else basis
        svals[str(m.layer)] = s[:k].tolist()
    widths = {t.shape[0] for t in vectors.values()}
    if len(widths) != 1:
        raise ShapeError(f"{adapter_dir}: {module} singular vectors of different widths "
                         f"{sorted(widths)}")
    with naming(adapter_dir):
        return _direction(cfg, vectors, svals, chosen, module, use_left, adapter_dir, k)


def _direction(cfg: dict[str, object], vectors: dict[int, torch.Tensor], svals: dict[str, list[float]],
               chosen: list[LoraModule], module: str, use_left: bool,
               adapter_dir: str | os.PathLike[str], k: int) -> Direction:
    """The Direction of ``lora_direction`` (site from the module and the side)."""
    width = int(next(iter(vectors.values())).shape[0])
    if use_left:
        site = "mlp_out" if module in ("down_proj", "fc2", "dense_4h_to_h") else "attn_out"
        if module == "c_proj":
            site = "mlp_out" if any(".mlp." in m.name for m in chosen) else "attn_out"
    else:
        site = "resid_pre"
    return Direction(
        vectors=vectors, model=str(cfg.get("base_model_name_or_path") or "unknown"),
        d_model=width, site=site, positions="all", normalisation="unit",
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
