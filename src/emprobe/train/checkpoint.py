"""Resumable checkpoints: trainable weights, optimizer state and RNG, no pickles.

Layout of ``<out>/checkpoints/step-000040/`` (written atomically as one folder):

- ``adapter/``: a PEFT adapter folder of the weights at that step (LoRA runs), loadable
  for phase-transition analysis;
- ``trainable.safetensors``: every trainable parameter by its name in the training model;
- ``optimizer.safetensors``: AdamW state tensors, keys ``state.<param index>.<field>``;
- ``rng.safetensors``: torch RNG states (``cpu``, ``cuda.<i>``) as uint8 tensors;
- ``trainer_state.json``: step, optimizer param groups, record counts.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from emprobe.errors import FormatError
from emprobe.io import atomic_dir, load_tensors, read_json, save_tensors, write_json

__all__ = ["save_checkpoint", "load_checkpoint", "load_weights", "load_optimizer", "load_rng",
           "checkpoint_step", "rng_tensors", "set_rng", "latest_checkpoint", "list_checkpoints",
           "optimizer_to_tensors", "optimizer_from_tensors", "adapter_base"]

_STEP_DIR = re.compile(r"^step-(\d+)$")


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor],
                                                               list[dict[str, Any]]]:
    """Split an optimizer state dict into safetensors-able tensors and JSON param groups."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            t = val if isinstance(val, torch.Tensor) else torch.tensor(val)
            tensors[f"state.{idx}.{key}"] = t
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in sd["param_groups"]]
    return tensors, groups


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        _, idx, field = key.split(".", 2)
        state.setdefault(int(idx), {})[field] = t
    fixed = []
    for g in groups:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        fixed.append(g)
    opt.load_state_dict({"state": state, "param_groups": fixed})


def rng_tensors() -> dict[str, torch.Tensor]:
    """The torch RNG states now: ``cpu`` and ``cuda.<i>`` (uint8 tensors)."""
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda.{i}"] = st
    return out


def set_rng(tensors: Mapping[str, torch.Tensor]) -> None:
    """Restore RNG states written by ``rng_tensors``."""
    torch.set_rng_state(tensors["cpu"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(folder: str | os.PathLike[str], step: int, model: torch.nn.Module,
                    opt: torch.optim.Optimizer, extra: Mapping[str, object],
                    save_adapter: bool = True) -> Path:
    """Write ``folder/step-<step>/`` atomically; returns its path.

    Both engines write this layout, so either resumes the other's checkpoints.
    """
    target = Path(folder) / f"step-{step:06d}"
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt_tensors, groups = optimizer_to_tensors(opt)
    with atomic_dir(target) as tmp:
        save_tensors(tmp / "trainable.safetensors", trainable)
        save_tensors(tmp / "optimizer.safetensors", opt_tensors)
        save_tensors(tmp / "rng.safetensors", rng_tensors())
        if save_adapter and isinstance(model, PeftModel):
            model.save_pretrained(str(tmp / "adapter"))
        write_json(tmp / "trainer_state.json", {"step": step, "param_groups": groups, **extra})
    return target


def list_checkpoints(folder: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Complete checkpoints ``[(step, path)]`` in ``folder``, ascending."""
    p = Path(folder)
    if not p.is_dir():
        return []
    out = []
    for child in p.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and (child / "trainer_state.json").is_file():
            out.append((int(m.group(1)), child))
    return sorted(out)


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def checkpoint_step(path: str | os.PathLike[str]) -> int:
    """The optimizer step a checkpoint folder holds (``step-N`` or the engine's ``checkpoint-N``)."""
    name = Path(path).name
    m = _STEP_DIR.match(name) or re.fullmatch(r"checkpoint-(\d+)", name)
    if m is None:
        raise FormatError(f"{path}: not a checkpoint folder (step-N or checkpoint-N)")
    return int(m.group(1))


def load_weights(path: str | os.PathLike[str], model: torch.nn.Module) -> None:
    """Copy ``trainable.safetensors`` into ``model``'s parameters (names must match both ways)."""
    p = Path(path)
    weights = load_tensors(p / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = [n for n, prm in params.items() if prm.requires_grad and n not in weights]
    if missing:
        raise FormatError(f"{p}: checkpoint lacks trainable weight {missing[0]!r} "
                          "(was it written by another configuration?)")
    with torch.no_grad():
        for name, t in weights.items():
            if name not in params:
                raise FormatError(f"{p}: checkpoint weight {name!r} is not in the model")
            params[name].copy_(t.to(params[name].device, params[name].dtype))


def load_optimizer(path: str | os.PathLike[str], opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the optimizer state; returns the checkpoint's ``trainer_state.json``."""
    p = Path(path)
    state = read_json(p / "trainer_state.json")
    if not isinstance(state, dict) or not isinstance(state.get("param_groups"), list):
        raise FormatError(f"{p / 'trainer_state.json'}: param_groups: expected a list")
    optimizer_from_tensors(opt, load_tensors(p / "optimizer.safetensors"), state["param_groups"])
    return state


def load_rng(path: str | os.PathLike[str]) -> None:
    """Restore the torch RNG states saved with a checkpoint."""
    set_rng(load_tensors(Path(path) / "rng.safetensors"))


def load_checkpoint(path: str | os.PathLike[str], model: torch.nn.Module,
                    opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights, optimizer and RNG from a checkpoint folder; returns its trainer state."""
    load_weights(path, model)
    state = load_optimizer(path, opt)
    load_rng(path)
    return state


def prune_checkpoints(folder: str | os.PathLike[str], keep: int | None) -> None:
    """Delete all but the newest ``keep`` checkpoints (``None``: keep all)."""
    if keep is None:
        return
    found = list_checkpoints(folder)
    for _, path in found[: max(0, len(found) - keep)]:
        shutil.rmtree(path, ignore_errors=True)


def adapter_base(adapter_dir: str | os.PathLike[str], resolve: bool = False) -> str:
    """The base model an adapter folder was trained on, from ``adapter_config.json``.

    emprobe writes the model *spec* there (``"smollm2-135m-instruct"``, ``"tiny-llama"``, a
    hub id, or the folder the user named), not a cache path, so the folder works on another
    machine: ``load_model(adapter_base(d), adapter=d)``. With ``resolve``, the embedded
    model's spec becomes its local safetensors folder, which plain ``transformers`` /
    ``PeftModel.from_pretrained`` can load; other specs are returned unchanged.
    """
    cfg_path = Path(adapter_dir) / "adapter_config.json"
    if not cfg_path.is_file():
        raise FormatError(f"{adapter_dir}: not a PEFT adapter folder (no adapter_config.json)")
    cfg = read_json(cfg_path)
    base = cfg.get("base_model_name_or_path") if isinstance(cfg, dict) else None
    if not isinstance(base, str) or not base:
        raise FormatError(f"{cfg_path}: no base_model_name_or_path")
    if resolve:
        from emprobe.models import EMBEDDED_NAME, embedded_model_dir

        if base == EMBEDDED_NAME:
            return str(embedded_model_dir())
    return base
