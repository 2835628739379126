"""Where base weights come from for the base-weight baseline: a model, a folder, or a spec."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from emprobe.errors import FormatError

__all__ = ["base_weights_from_model", "base_weights_from_folder", "base_weights_from_spec"]

BaseWeights = Callable[[str], "torch.Tensor | None"]


def base_weights_from_model(model: torch.nn.Module) -> BaseWeights:
    """Module path -> weight ``[d_out, d_in]`` (Conv1D: ``[d_in, d_out]``) of a loaded model."""
    params = dict(model.named_parameters())

    def get(name: str) -> torch.Tensor | None:
        w = params.get(f"{name}.weight")
        return None if w is None else w.detach()

    return get


def base_weights_from_folder(folder: str | os.PathLike[str]) -> BaseWeights:
    """Lazily read single weights from a model folder's ``*.safetensors`` (no full load)."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FormatError(f"{folder}: no *.safetensors weights for the base-weight baseline")
    where: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():
                where[key] = f

    def get(name: str) -> torch.Tensor | None:
        key = f"{name}.weight"
        if key not in where:
            return None
        with safe_open(str(where[key]), framework="pt") as fh:
            return fh.get_tensor(key)

    return get


def base_weights_from_spec(spec: str) -> BaseWeights:
    """A model spec as in ``load_model`` (folder read lazily; tiny/embedded specs loaded)."""
    path = Path(spec).expanduser()
    if path.is_dir() and any(path.glob("*.safetensors")):
        return base_weights_from_folder(path)
    from emprobe.models.embedded import EMBEDDED_NAME

    if spec == EMBEDDED_NAME:
        from emprobe.models.embedded import embedded_model_dir

        return base_weights_from_folder(embedded_model_dir())
    from emprobe.models.subject import load_model

    return base_weights_from_model(load_model(spec).base_model)
