"""Steering, subspace ablation and projection recording: context managers over site hooks.

All of them work at inference and during training (gradients flow through the
edit) and always remove their hooks on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from emprobe.errors import ShapeError
from emprobe.hooks.core import add_site_hook, check_width, token_mask

LayerTensors = Mapping[int, torch.Tensor]


def _per_layer(
    subject: Any, value: torch.Tensor | LayerTensors, layers: int | list[int] | None, what: str
) -> dict[int, torch.Tensor]:
    if isinstance(value, Mapping):
        table = {subject.layers.check_layer(int(k)): v for k, v in value.items()}
        if layers is not None:
            wanted = [layers] if isinstance(layers, int) else layers
            table = {subject.layers.check_layer(la): table[subject.layers.check_layer(la)]
                     for la in wanted}
    else:
        if layers is None:
            raise ShapeError(f"{what}: give layers=... with a single tensor")
        wanted = [layers] if isinstance(layers, int) else layers
        table = {subject.layers.check_layer(la): value for la in wanted}
    for layer, t in table.items():
        check_width(t, subject.d_model, f"{what} at layer {layer}")
    return table


def _apply_masked(hidden: torch.Tensor, new: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return new
    return torch.where(mask.unsqueeze(-1), new, hidden)


@contextlib.contextmanager
def steer(
    subject: Any,
    vector: torch.Tensor | LayerTensors,
    coeff: float = 1.0,
    layers: int | list[int] | None = None,
    site: str = "resid_post",
    positions: str = "all",
) -> Iterator[None]:
    """Add ``coeff * vector`` to the activations at ``(site, layer)`` on the chosen tokens.

    ``vector`` is ``[d_model]`` (with ``layers``) or ``{layer: [d_model]}``. The vector is
    used as given (not normalised): persona-vector coefficients assume raw vectors.
    """
    table = _per_layer(subject, vector, layers, "steering vector")
    handles = []

    def make(vec: torch.Tensor):  # noqa: ANN202
        def fn(hidden: torch.Tensor) -> torch.Tensor:
            v = vec.to(device=hidden.device, dtype=hidden.dtype)
            mask = token_mask(positions, hidden)
            return _apply_masked(hidden, hidden + coeff * v, mask)

        return fn

    try:
        for layer, vec in table.items():
            handles.append(add_site_hook(subject, site, layer, make(vec)))
        yield
    finally:
        for h in handles:
            h.remove()


def orthonormal_basis(directions: torch.Tensor) -> torch.Tensor:
    """``[d_model]`` or ``[d_model, k]`` -> orthonormal columns ``[d_model, k]`` (QR)."""
    q = directions.unsqueeze(-1) if directions.dim() == 1 else directions
    q, _ = torch.linalg.qr(q.float())
    return q


@contextlib.contextmanager
def ablate(
    subject: Any,
    basis: torch.Tensor | LayerTensors,
    layers: int | list[int] | None = None,
    mode: str = "zero",
    mean: torch.Tensor | LayerTensors | None = None,
    site: str = "resid_post",
    positions: str = "all",
    orthonormalise: bool = True,
) -> Iterator[None]:
    """Remove a subspace from the activations.

    ``basis`` is ``[d_model, k]`` (or ``[d_model]``) per layer. Zero ablation:
    ``h <- h - (h Q) Q^T``. Mean ablation: ``h <- h - ((h - mu) Q) Q^T``, which keeps
    the mean component ``mu`` along Q (``mean`` is required, ``[d_model]`` per layer).
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"ablation mode must be 'zero' or 'mean', not {mode!r}")
    table: dict[int, torch.Tensor] = {}
    src = basis if isinstance(basis, Mapping) else None
    wanted = ([layers] if isinstance(layers, int) else list(layers)) if layers is not None else None
    if src is None:
        if wanted is None:
            raise ShapeError("ablation basis: give layers=... with a single tensor")
        src = {la: basis for la in wanted}
    for k, q in src.items():
        layer = subject.layers.check_layer(int(k))
        if wanted is not None and layer not in [subject.layers.check_layer(w) for w in wanted]:
            continue
        q2 = q.unsqueeze(-1) if q.dim() == 1 else q
        if q2.shape[0] != subject.d_model:
            raise ShapeError(
                f"ablation basis at layer {layer} has {q2.shape[0]} rows but d_model is {subject.d_model}"
            )
        table[layer] = orthonormal_basis(q2) if orthonormalise else q2.float()
    means: dict[int, torch.Tensor] = {}
    if mode == "mean":
        if mean is None:
            raise ValueError("mode='mean' needs mean=... (the per-layer mean activation)")
        means = _per_layer(subject, mean, list(table), "ablation mean")
    handles = []

    def make(q: torch.Tensor, mu: torch.Tensor | None):  # noqa: ANN202
        def fn(hidden: torch.Tensor) -> torch.Tensor:
            qq = q.to(device=hidden.device, dtype=hidden.dtype)
            centred = hidden if mu is None else hidden - mu.to(hidden.device, hidden.dtype)
            new = hidden - (centred @ qq) @ qq.T
            return _apply_masked(hidden, new, token_mask(positions, hidden))

        return fn

    try:
        for layer, q in table.items():
            handles.append(add_site_hook(subject, site, layer, make(q, means.get(layer))))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def record_projections(
    subject: Any,
    direction: torch.Tensor | LayerTensors,
    layers: int | list[int] | None = None,
    site: str = "resid_post",
    positions: str = "response",
) -> Iterator[dict[int, list[float]]]:
    """Record the mean projection ``h . v / |v|`` over the chosen tokens, per forward call.

    Yields ``{layer: [value per call]}`` that fills as the model runs.
    """
    table = _per_layer(subject, direction, layers, "direction")
    record: dict[int, list[float]] = {layer: [] for layer in table}
    handles = []

    def make(layer: int, vec: torch.Tensor):  # noqa: ANN202
        unit = vec.float() / vec.float().norm().clamp_min(1e-12)

        def fn(hidden: torch.Tensor) -> None:
            with torch.no_grad():
                proj = hidden.detach().float() @ unit.to(hidden.device)
                mask = token_mask(positions, hidden)
                vals = proj[mask] if mask is not None else proj.reshape(-1)
                if vals.numel():
                    record[layer].append(float(vals.mean()))
            return None

        return fn

    try:
        for layer, vec in table.items():
            handles.append(add_site_hook(subject, site, layer, make(layer, vec)))
        yield record
    finally:
        for h in handles:
            h.remove()
