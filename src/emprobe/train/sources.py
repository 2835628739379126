"""Where a training-time intervention's vectors and model come from, for any trainer.

- ``read_direction(source)``: an emprobe ``Direction``, ``{layer: tensor}``, a
  steering-vectors ``SteeringVector`` (or its dict), or a file / folder emprobe reads: a
  Direction folder (``direction.json`` + ``direction.safetensors``), a CAFT folder of
  ``layer_{l}.npy`` (rows = components), a persona-vectors ``.pt`` / ``.safetensors``
  (``[n_layers + 1, d_model]``), a GGUF control vector (``.gguf``) or an emprobe ``.npz``.
  Readers are ``emprobe.directions.formats``' (their layer mappings are documented there).
- ``subject_for_model(model)``: an emprobe ``Subject`` view of a model as a trainer holds it
  (unwrapped from DDP / FSDP / DeepSpeed engines; a PEFT model stays PEFT, so hooks land on
  the same decoder blocks the trainer runs).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from emprobe.errors import ConfigError, FormatError
from emprobe.hooks import DirectionLike

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from emprobe.models.subject import Subject

__all__ = ["DirectionSource", "check_layers", "check_number", "drop_gguf_tag", "read_direction",
           "subject_for_model", "table_layer", "table_vector", "unwrap_model"]

DirectionSource = DirectionLike | Mapping[int, torch.Tensor] | str | os.PathLike[str] | object


def _read_path(p: Path, model: str | None) -> DirectionLike:
    from emprobe.directions import Direction
    from emprobe.directions import formats as f

    if not p.exists():
        raise FormatError(f"{p}: no such file or folder")
    if p.is_dir():
        if (p / "direction.json").is_file() and (p / "direction.safetensors").is_file():
            return Direction.load(p)
        if any(x.name.startswith("layer_") and x.suffix == ".npy" for x in p.iterdir()):
            return f.from_caft(p, model=model)
        raise FormatError(f"{p}: neither a Direction folder nor a CAFT folder of layer_<l>.npy")
    suffix = p.suffix.lower()
    if suffix == ".gguf":
        return f.from_gguf(p, model=model)
    if suffix in (".pt", ".pth", ".safetensors"):
        return f.from_persona(p, model=model or "unknown")
    if suffix == ".npz":
        return f.load_npz(p)
    raise FormatError(f"{p}: unknown direction file type {suffix!r} (use a Direction folder, a "
                      "CAFT folder, .pt / .safetensors persona vectors, .gguf or .npz)")


def _finite(direction: DirectionLike, where: str) -> DirectionLike:
    for la, v in direction.vectors.items():
        if not v.is_floating_point() or not bool(torch.isfinite(v).all()):
            raise FormatError(f"{where}: the vector at layer {la} is not finite real numbers")
    return direction


def read_direction(source: DirectionSource, model: str | None = None
                   ) -> DirectionLike | dict[int, torch.Tensor]:
    """A supported direction source -> a ``Direction`` (or ``{layer: tensor}`` as given).

    ``model`` names the model the file came from, for formats that do not record it.
    """
    if isinstance(source, DirectionLike):
        return _finite(source, "direction")
    if isinstance(source, (str, os.PathLike)):
        return _finite(_read_path(Path(source), model), str(source))
    if isinstance(source, Mapping) and "layer_activations" in source:
        from emprobe.directions.formats import from_steering_vector

        return from_steering_vector(source, model=model or "unknown")
    if hasattr(source, "layer_activations"):
        from emprobe.directions.formats import from_steering_vector

        return from_steering_vector(source, model=model or "unknown")
    if isinstance(source, Mapping) and source:
        return {table_layer(k): table_vector(k, v) for k, v in source.items()}
    raise ConfigError(f"direction: expected a Direction, {{layer: tensor}}, a SteeringVector or a "
                      f"file path, got {type(source).__name__}")


def table_layer(key: object) -> int:
    """A ``{layer: tensor}`` key: a non-negative int (or its decimal string), never a bool."""
    if isinstance(key, str) and key.isdigit():
        return int(key)
    if type(key) is not int or key < 0:
        raise ConfigError(f"direction table: layer key {key!r} is not a non-negative integer")
    return key


def table_vector(key: object, value: object) -> torch.Tensor:
    """A ``{layer: tensor}`` value: a finite real floating tensor of 1 or 2 dimensions."""
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"direction table: layer {key!r} holds a {type(value).__name__}, "
                          "not a tensor")
    if not value.is_floating_point() or value.dim() not in (1, 2) or value.numel() == 0:
        raise ConfigError(f"direction table: layer {key!r} must be a real floating [d_model] "
                          f"or [d_model, k] tensor, got {value.dtype} {tuple(value.shape)}")
    if not bool(torch.isfinite(value).all()):
        raise ConfigError(f"direction table: layer {key!r} holds non-finite values")
    return value


def check_layers(layers: Any, where: str) -> int | list[int] | None:
    """``layers=`` of a callback: None, a non-negative int, or a list of them (no bools)."""
    if layers is None:
        return None
    items = [layers] if not isinstance(layers, (list, tuple)) else list(layers)
    if not items or any(type(x) is not int or x < 0 for x in items):
        raise ConfigError(f"{where}: layers must be a non-negative int or a list of them, got "
                          f"{layers!r}")
    return layers if isinstance(layers, int) else items


def check_number(value: Any, where: str, name: str) -> float:
    """A finite real number argument (no bools, strings or None)."""
    import math

    if type(value) not in (int, float) or not math.isfinite(value):
        raise ConfigError(f"{where}: {name} must be a finite number, got {value!r}")
    return float(value)


def unwrap_model(model: Any) -> Any:
    """The module a trainer trains, without DDP / FSDP / DeepSpeed / compile wrappers."""
    seen = 0
    while seen < 8:
        inner = getattr(model, "module", None)
        if isinstance(inner, torch.nn.Module):
            model = inner
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model
        seen += 1
    return model


def subject_for_model(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase | None = None, name: str | None = None) -> Subject:
    """A ``Subject`` over ``model`` as a trainer holds it (engine wrappers removed)."""
    from emprobe.models.layers import LayerMap
    from emprobe.models.subject import Subject

    base = unwrap_model(model)
    cfg = getattr(base, "config", None)
    n_layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    layers = LayerMap.from_model(base, n_layers)
    label = name or str(getattr(cfg, "_name_or_path", "") or type(base).__name__)
    # built without Subject.__post_init__: hooks need no chat format, and resolving one would
    # install a template on the trainer's tokenizer (a side effect on the user's objects)
    subject = Subject.__new__(Subject)
    subject.__dict__.update(model=base, tokenizer=tokenizer, layers=layers, name=label,
                            path=None, adapter=None, meta={}, chat_format=None)
    return subject


def drop_gguf_tag(model: Any) -> Any:
    """Let trainers train a model loaded from GGUF: transformers de-quantises GGUF weights to
    float on load, but leaves a GGUF ``hf_quantizer`` that ``Trainer`` refuses to train.

    Removes the tag only when the quantization method is GGUF and every parameter is a float
    tensor; returns ``model``.
    """
    base = unwrap_model(model)
    quant = getattr(base, "hf_quantizer", None)
    method = str(getattr(getattr(quant, "quantization_config", None), "quant_method", ""))
    if quant is None or "gguf" not in method.lower():
        return model
    if not all(p.is_floating_point() for p in base.parameters()):
        return model
    base.hf_quantizer = None
    base.is_quantized = False
    if hasattr(base.config, "quantization_config"):
        del base.config.quantization_config
    return model
