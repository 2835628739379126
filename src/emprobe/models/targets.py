"""Default LoRA target modules for any family.

emprobe's default is the seven projections of a Llama-shaped block (``q_proj k_proj v_proj
o_proj gate_proj up_proj down_proj``). Families that name or fuse them differently get
every linear layer inside their decoder blocks instead, which covers the same weights:

- GPT-2: ``c_attn`` (fused q/k/v), ``c_proj`` (attention and MLP output), ``c_fc``;
- GPT-NeoX: ``query_key_value``, ``dense``, ``dense_h_to_4h``, ``dense_4h_to_h``;
- Phi-3: ``qkv_proj``, ``o_proj``, ``gate_up_proj``, ``down_proj``;
- Phi-1/2: ``q_proj k_proj v_proj dense fc1 fc2``.

An explicit list is checked: a name no block has is a one-line ``ConfigError`` listing the
names the family does have.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from emprobe.errors import ConfigError
from emprobe.models.layers import LayerMap

__all__ = ["SEVEN_PROJECTIONS", "block_linear_names", "lora_target_modules"]

SEVEN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def block_linear_names(model: nn.Module, layers: LayerMap | None = None) -> list[str]:
    """Sorted leaf names of the linear layers (``nn.Linear`` or GPT-2's ``Conv1D``) inside
    the decoder blocks."""
    from transformers.pytorch_utils import Conv1D

    layers = layers or LayerMap.from_model(model)
    names: set[str] = set()
    for block in layers.blocks:
        for name, mod in block.named_modules():
            if name and isinstance(mod, (nn.Linear, Conv1D)):
                names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def lora_target_modules(model: nn.Module, wanted: Sequence[str] | None = None,
                        layers: LayerMap | None = None) -> list[str]:
    """LoRA ``target_modules`` for ``model`` (module docstring).

    Args:
        model: the causal LM (PEFT-wrapped is fine).
        wanted: ``None`` or the seven projections: the family's default; an explicit list is
            returned as given once every name is found in the blocks (``"all-linear"`` passes
            through for PEFT to resolve).
        layers: the model's ``LayerMap`` when already known.
    """
    have = block_linear_names(model, layers)
    if wanted is None or list(wanted) == list(SEVEN_PROJECTIONS):
        if all(n in have for n in SEVEN_PROJECTIONS):
            return list(SEVEN_PROJECTIONS)
        return have
    want = list(wanted)
    if want == ["all-linear"]:
        return want
    missing = [n for n in want if n not in have]
    if missing:
        family = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ConfigError(f"target_modules {missing} not found in {family} blocks; they have "
                          f"{have}")
    return want
