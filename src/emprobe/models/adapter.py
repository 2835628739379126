"""Read PEFT LoRA adapter folders into factors, without loading a base model.

A LoRA update of one Linear module is ``dW = s * B @ A`` with ``A`` ``[r, d_in]``,
``B`` ``[d_out, r]`` and scale ``s = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).
The folder holds ``adapter_config.json`` and ``adapter_model.safetensors``; a
pickled ``adapter_model.bin`` is refused, never unpickled.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from emprobe.errors import FormatError, ShapeError
from emprobe.io import load_tensors, read_json_object
from emprobe.validate import (
    MAX_LAYER,
    check_bool,
    check_int,
    check_mapping,
    check_number,
    check_optional_str,
    check_regex,
    check_str,
    check_tensor,
    excerpt,
)

__all__ = ["LoraModule", "LoraAdapter", "read_adapter", "lora_scale"]

_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+?)\.lora_(?P<side>A|B)(?:\.(?P<name>[^.]+))?\.weight$"
)
MAX_RANK = 1 << 20
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer|decoder\.layers)\.(\d+)\.")


@dataclass(frozen=True)
class LoraModule:
    """The factors of one adapted Linear module: ``dW = scale * B @ A``.

    Attributes:
        name: module path in the base model, e.g. ``model.layers.3.self_attn.q_proj``.
        layer: 0-based decoder block index (None when the path has none).
        module_type: last path component, e.g. ``q_proj``.
        A: ``[r, d_in]`` (read side). B: ``[d_out, r]`` (write side).
        scale: ``alpha / r`` or ``alpha / sqrt(r)`` (rsLoRA).
        fan_in_fan_out: the base weight is stored ``[d_in, d_out]`` (GPT-2 Conv1D).
    """

    name: str
    layer: int | None
    module_type: str
    A: torch.Tensor
    B: torch.Tensor
    scale: float
    rank: int
    alpha: float
    fan_in_fan_out: bool = False

    @property
    def d_in(self) -> int:
        return int(self.A.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.B.shape[0])

    @property
    def key(self) -> tuple[int, str]:
        """``(layer, module_type)``; layer -1 when the module has no layer index."""
        return (-1 if self.layer is None else self.layer, self.module_type)

    def delta(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense update ``scale * B @ A`` ``[d_out, d_in]`` (only for editing weights / tests)."""
        B = self.B if dtype is None else self.B.to(dtype)
        A = self.A if dtype is None else self.A.to(dtype)
        return self.scale * (B @ A)


@dataclass
class LoraAdapter:
    """All LoRA modules of one adapter folder, keyed by module path."""

    path: Path | None
    config: dict[str, Any]
    modules: dict[str, LoraModule]
    skipped: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[LoraModule]:
        return iter(self.modules.values())

    def __len__(self) -> int:
        return len(self.modules)

    @property
    def label(self) -> str:
        return self.path.name if self.path is not None else "adapter"

    def by_key(self) -> dict[tuple[int, str], LoraModule]:
        """Modules keyed by ``(layer, module_type)``."""
        return {m.key: m for m in self.modules.values()}

    def layers(self) -> list[int]:
        return sorted({m.layer for m in self.modules.values() if m.layer is not None})

    def module_types(self) -> list[str]:
        return sorted({m.module_type for m in self.modules.values()})


def lora_scale(alpha: float, rank: int, use_rslora: bool) -> float:
    """PEFT's scale: ``alpha / sqrt(r)`` with rsLoRA, else ``alpha / r``."""
    return float(alpha) / (math.sqrt(rank) if use_rslora else rank)


_V = TypeVar("_V")


def _pattern_value(patterns: Mapping[str, _V], module: str) -> _V | None:
    # Same matching rule as PEFT: the pattern must match a dotted suffix of the module path.
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return None


def _targets(module: str, target_modules: str | Sequence[str] | None) -> bool:
    if target_modules is None:
        return True
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            return True
        return re.fullmatch(target_modules, module) is not None
    return any(module == t or module.endswith("." + t) for t in target_modules)


def _read_config(folder: Path) -> dict[str, Any]:
    """``adapter_config.json`` with every field emprobe uses type- and range-checked."""
    cfg_path = folder / "adapter_config.json"
    if not cfg_path.is_file():
        raise FormatError(f"{folder}: not a PEFT adapter folder (no adapter_config.json)")
    cfg = read_json_object(cfg_path)
    where = str(cfg_path)
    peft_type = cfg.get("peft_type", "LORA")
    if not isinstance(peft_type, str) or peft_type.upper() != "LORA":
        raise FormatError(f"{cfg_path}: peft_type {excerpt(peft_type, 40)} is not LORA")
    for key in ("use_dora", "use_rslora", "fan_in_fan_out"):
        if key in cfg:  # PEFT writes true / false; null, 0, "false" are not flags
            check_bool(cfg[key], f"{where}: {key!r}")
    for key in ("base_model_name_or_path", "revision"):
        check_optional_str(cfg.get(key), f"{where}: {key!r}")
    if cfg.get("use_dora"):
        raise FormatError(f"{cfg_path}: DoRA adapters are not a pure low-rank update (use_dora=true)")
    for key in ("r", "lora_alpha"):
        if key not in cfg:
            raise FormatError(f"{cfg_path}: missing {key!r}")
    check_int(cfg["r"], f"{where}: 'r'", min_value=1, max_value=MAX_RANK)
    check_number(cfg["lora_alpha"], f"{where}: 'lora_alpha'", positive=True)
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key) is None:
            continue
        patterns = check_mapping(cfg[key], f"{where}: {key!r}")
        for pattern, value in patterns.items():
            check_regex(pattern, f"{where}: {key!r} pattern")
            if key == "rank_pattern":
                check_int(value, f"{where}: rank_pattern[{excerpt(pattern, 30)}]", min_value=1,
                          max_value=MAX_RANK)
            else:
                check_number(value, f"{where}: alpha_pattern[{excerpt(pattern, 30)}]",
                             positive=True)
    targets = cfg.get("target_modules")
    if isinstance(targets, str):
        if targets != "all-linear":
            check_regex(targets, f"{where}: 'target_modules'")
    elif targets is not None:
        if not isinstance(targets, list):
            raise FormatError(f"{cfg_path}: 'target_modules' must be a regex string or a list "
                              f"of module names, got {excerpt(targets, 60)}")
        for t in targets:
            check_str(t, f"{where}: 'target_modules' entry", non_empty=True)
    layers = cfg.get("layers_to_transform")
    if layers is not None:
        items = [layers] if not isinstance(layers, list) else layers
        for la in items:
            check_int(la, f"{where}: 'layers_to_transform'", min_value=0, max_value=MAX_LAYER)
    pattern = cfg.get("layers_pattern")
    for p in [] if pattern is None else pattern if isinstance(pattern, list) else [pattern]:
        check_str(p, f"{where}: 'layers_pattern'", non_empty=True)
    return cfg


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    st = folder / "adapter_model.safetensors"
    if not st.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise FormatError(
                f"{folder}: only a pickled adapter_model.bin; emprobe never unpickles "
                "(re-save it with save_pretrained(safe_serialization=True))"
            )
        raise FormatError(f"{folder}: no adapter_model.safetensors")
    tensors = load_tensors(st)
    for key, t in tensors.items():
        check_tensor(t, f"{st}: {excerpt(key, 80)}", ndims=(1, 2, 3, 4))
    return tensors


def read_adapter(path: str | Path, dtype: torch.dtype | None = None) -> LoraAdapter:
    """Read a PEFT LoRA adapter folder into per-module factors.

    Args:
        path: folder with ``adapter_config.json`` and ``adapter_model.safetensors``.
        dtype: cast the factors (default: keep the stored dtype).

    Raises:
        FormatError: missing/inconsistent config, no safetensors file, pickled weights only.
        ShapeError: factor shapes that do not chain (``A [r, d_in]``, ``B [d_out, r]``).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FormatError(f"{folder}: no such adapter folder")
    cfg = _read_config(folder)
    tensors = _read_weights(folder)
    cfg_path, st_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    pairs, skipped = _pair_factors(tensors)
    if not pairs:
        raise FormatError(f"{folder / 'adapter_model.safetensors'}: no lora_A/lora_B weights found")
    modules: dict[str, LoraModule] = {}
    for name in sorted(pairs, key=_natural_key):
        A, B = _chained_factors(name, pairs[name], st_path)
        modules[name] = _lora_module(name, A, B, cfg, cfg_path, dtype)
    return LoraAdapter(path=folder, config=cfg, modules=modules, skipped=skipped)


def _pair_factors(tensors: dict[str, torch.Tensor],
                  ) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """``{module: {"A": lora_A, "B": lora_B}}`` from PEFT's tensor names, and the names that
    are no LoRA factor (kept as ``LoraAdapter.skipped``)."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    skipped: list[str] = []
    for key, value in tensors.items():
        m = _KEY.match(key)
        if m is None:
            skipped.append(key)
            continue
        pairs.setdefault(m.group("module"), {})[m.group("side")] = value
    return pairs, skipped


def _chained_factors(name: str, got: dict[str, torch.Tensor],
                     st_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Module ``name``'s ``A [r, d_in]`` and ``B [d_out, r]``: both present, 2-D, chaining."""
    if set(got) != {"A", "B"}:
        missing = "lora_B" if "A" in got else "lora_A"
        raise FormatError(f"{st_path}: module {name} has no {missing} weight")
    A, B = got["A"], got["B"]
    if A.ndim != 2 or B.ndim != 2:
        raise ShapeError(
            f"{st_path}: module {name}: only Linear LoRA is supported "
            f"(lora_A {tuple(A.shape)}, lora_B {tuple(B.shape)})"
        )
    if A.shape[0] != B.shape[1]:
        raise ShapeError(
            f"{st_path}: module {name}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} "
            "do not chain (A [r, d_in], B [d_out, r])"
        )
    return A, B


def _lora_module(name: str, A: torch.Tensor, B: torch.Tensor, cfg: dict[str, Any],
                 cfg_path: Path, dtype: torch.dtype | None) -> LoraModule:
    """One module's ``LoraModule``, checked against the config: its rank (``r`` or
    ``rank_pattern``), ``target_modules`` and ``layers_to_transform``; alpha from
    ``lora_alpha`` or ``alpha_pattern``, scale with or without rsLoRA."""
    rank = int(A.shape[0])
    want_rank = _pattern_value(cfg.get("rank_pattern") or {}, name)
    want_rank = cfg["r"] if want_rank is None else want_rank
    if int(want_rank) != rank:
        raise FormatError(
            f"{cfg_path}: module {name} has rank {rank} in the weights but the config says "
            f"r={want_rank}"
        )
    module_type = name.rsplit(".", 1)[-1]
    if not _targets(name, cfg.get("target_modules")):
        raise FormatError(
            f"{cfg_path}: module {name} has LoRA weights but is not in target_modules "
            f"{cfg.get('target_modules')!r}"
        )
    lm = _LAYER.search(name)
    layer = int(lm.group(1)) if lm else None
    layers_to_transform = cfg.get("layers_to_transform")
    if isinstance(layers_to_transform, int):
        layers_to_transform = [layers_to_transform]
    if layers_to_transform is not None and layer is not None and layer not in layers_to_transform:
        raise FormatError(
            f"{cfg_path}: module {name} is at layer {layer}, outside layers_to_transform "
            f"{layers_to_transform}"
        )
    alpha = _pattern_value(cfg.get("alpha_pattern") or {}, name)
    alpha = float(cfg["lora_alpha"] if alpha is None else alpha)
    if dtype is not None:
        A, B = A.to(dtype), B.to(dtype)
    return LoraModule(
        name=name, layer=layer, module_type=module_type, A=A, B=B,
        scale=lora_scale(alpha, rank, bool(cfg.get("use_rslora", False))), rank=rank,
        alpha=alpha, fan_in_fan_out=bool(cfg.get("fan_in_fan_out", False)),
    )


def _natural_key(name: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
