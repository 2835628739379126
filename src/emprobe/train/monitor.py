"""Monitoring during training: projections onto directions, LoRA norms, LoRA rotation.

- ``proj/<name>/L<layer>``: mean projection ``h . v / |v|`` of ``resid_post`` over the
  response tokens of a fixed monitoring batch, measured with the training-time
  interventions switched off (what the model does at inference);
- ``norm/A``, ``norm/B``: Frobenius norms of all LoRA ``A`` / ``B`` factors together;
- ``rotation/B_cos``: cosine between the concatenated ``B`` factors at this checkpoint and
  at the previous one, and ``rotation/B_cos_module_mean`` the mean over modules (for rank 1,
  the cosine of each module's single write vector).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from emprobe.errors import ConfigError
from emprobe.hooks import DirectionLike, as_layer_table, record_projections
from emprobe.models.chat import ChatBatch
from emprobe.train.interventions import lora_modules, lora_weight

if TYPE_CHECKING:
    from emprobe.models.subject import Subject

__all__ = ["lora_factors", "lora_norms", "rotation", "normalise_directions", "project"]

Directions = Mapping[str, Mapping[int, torch.Tensor]]
# what ``finetune(monitor=)`` takes: one direction or ``{layer: v}``, or them by name
LayerVectors = Mapping[int, torch.Tensor]
MonitorSpec = DirectionLike | LayerVectors | Mapping[str, DirectionLike | LayerVectors]


def normalise_directions(directions: Any, subject: Subject | None = None
                         ) -> dict[str, dict[int, torch.Tensor]]:
    """What to monitor -> ``{name: {layer: [d_model]}}``.

    Accepts one Direction or ``{layer: v}`` (named ``dir``), or ``{name: Direction | {layer:
    v}}``. With ``subject``, each goes through ``as_layer_table``'s model, layer and width
    checks.
    """
    if directions is None or (isinstance(directions, Mapping) and not directions):
        return {}
    if isinstance(directions, DirectionLike):
        named: dict[str, Any] = {"dir": directions}
    elif isinstance(directions, Mapping) and isinstance(next(iter(directions.values())),
                                                        torch.Tensor):
        named = {"dir": directions}
    elif isinstance(directions, Mapping):
        named = {str(n): v for n, v in directions.items()}
    else:
        raise ConfigError(f"monitor: expected a Direction or a mapping, got "
                          f"{type(directions).__name__}")
    return {name: as_layer_table(value, subject, None, f"monitor direction {name!r}",
                                 width_dim=-1) for name, value in named.items()}


def lora_factors(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module: (A [r, d_in], B [d_out, r])}`` of the active adapter."""
    out = {}
    for name, layer in lora_modules(model).items():
        out[name] = (lora_weight(layer, "A"), lora_weight(layer, "B"))
    return out


def lora_norms(factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    a = sum(float(fa.detach().float().pow(2).sum()) for fa, _ in factors.values())
    b = sum(float(fb.detach().float().pow(2).sum()) for _, fb in factors.values())
    return {"norm/A": a ** 0.5, "norm/B": b ** 0.5}


def snapshot_b(factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {n: fb.detach().float().clone().cpu() for n, (_, fb) in factors.items()}


def rotation(prev: Mapping[str, torch.Tensor], now: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Cosine between two snapshots of ``B`` (global and mean per module)."""
    names = [n for n in now if n in prev]
    if not names:
        return {}
    dot = sum(float((prev[n] * now[n]).sum()) for n in names)
    n1 = sum(float(prev[n].pow(2).sum()) for n in names) ** 0.5
    n2 = sum(float(now[n].pow(2).sum()) for n in names) ** 0.5
    per = []
    for n in names:
        d = float(prev[n].norm() * now[n].norm())
        if d > 0:
            per.append(float((prev[n] * now[n]).sum()) / d)
    out: dict[str, float] = {}
    if n1 > 0 and n2 > 0:  # undefined against the all-zero initial B
        out["rotation/B_cos"] = dot / (n1 * n2)
    if per:
        out["rotation/B_cos_module_mean"] = sum(per) / len(per)
    return out


@torch.no_grad()
def project(subject: Subject, directions: Mapping[str, Mapping[int, torch.Tensor]],
            batch: ChatBatch) -> dict[str, float]:
    """Mean response-token projections onto each direction at each of its layers."""
    out: dict[str, float] = {}
    for name, table in directions.items():
        with record_projections(subject, dict(table), positions="response") as rec:
            subject.forward(batch)
        for layer, vals in rec.items():
            if vals:
                out[f"proj/{name}/L{layer}"] = vals[-1]
    return out
