"""Steering, subspace ablation and projection recording: context managers over site hooks.

All three take a ``Direction``, a tensor (with ``layers=``) or ``{layer: tensor}``
through ``as_layer_table`` (a Direction is checked against the model and gives the
default site), patch activations with ``add_site_hook``, work at inference and during
training (gradients flow through the edit), and always remove their hooks on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from emprobe.errors import ConfigError
from emprobe.hooks.core import add_site_hook, token_mask
from emprobe.hooks.layer_table import LayerInput, as_layer_table, default_site
from emprobe.hooks.types import check_mode, check_positions, check_site

if TYPE_CHECKING:
    from emprobe.hooks.core import SiteFn
    from emprobe.models.subject import Subject

__all__ = ["ablate", "orthonormal_basis", "patch", "record_projections", "steer"]

LayerTensors = Mapping[int, torch.Tensor]
Layers = int | Sequence[int] | None


@contextlib.contextmanager
def patch(subject: Subject, site: str, fns: Mapping[int, SiteFn]) -> Iterator[None]:
    """The one patch primitive: ``fns[layer]`` on ``(site, layer)`` while the block runs.

    Every hook is removed on exit, exceptions included.
    """
    handles = []
    try:
        for layer, fn in fns.items():
            handles.append(add_site_hook(subject, site, layer, fn))
        yield
    finally:
        for h in handles:
            h.remove()


def _apply_masked(hidden: torch.Tensor, new: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return new
    return torch.where(mask.unsqueeze(-1), new, hidden)


@contextlib.contextmanager
def steer(
    subject: Subject,
    vector: LayerInput,
    coeff: float = 1.0,
    layers: Layers = None,
    site: str | None = None,
    positions: str = "all",
    allow_other_model: bool = False,
) -> Iterator[None]:
    """Add ``coeff * vector`` to the activations at ``(site, layer)`` on the chosen tokens.

    ``vector``: a Direction, ``[d_model]`` (with ``layers``) or ``{layer: [d_model]}``. The
    vector is used as given (not normalised): persona-vector coefficients assume raw
    vectors. ``site`` defaults to the Direction's site, else ``resid_post``.
    """
    site = check_site(site or default_site(vector))
    check_positions(positions)
    table = as_layer_table(vector, subject, layers, "steering vector",
                           allow_other_model=allow_other_model, width_dim=-1)

    def make(vec: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(hidden: torch.Tensor) -> torch.Tensor:
            v = vec.to(device=hidden.device, dtype=hidden.dtype)
            mask = token_mask(positions, hidden)
            return _apply_masked(hidden, hidden + coeff * v, mask)

        return fn

    with patch(subject, site, {layer: make(vec) for layer, vec in table.items()}):
        yield


def orthonormal_basis(directions: torch.Tensor) -> torch.Tensor:
    """``[d_model]`` or ``[d_model, k]`` -> orthonormal columns ``[d_model, k]`` (QR)."""
    q = directions.unsqueeze(-1) if directions.dim() == 1 else directions
    q, _ = torch.linalg.qr(q.float())
    return q


@contextlib.contextmanager
def ablate(
    subject: Subject,
    basis: LayerInput,
    layers: Layers = None,
    mode: str = "zero",
    mean: LayerInput | None = None,
    site: str | None = None,
    positions: str = "all",
    orthonormalise: bool = True,
    allow_other_model: bool = False,
) -> Iterator[None]:
    """Remove a subspace from the activations.

    ``basis``: a Direction, ``[d_model, k]`` (or ``[d_model]``) with ``layers``, or one per
    layer. Zero ablation: ``h <- h - (h Q) Q^T``. Mean ablation: ``h <- h - ((h - mu) Q)
    Q^T``, which keeps the mean component ``mu`` along Q (``mean`` is required,
    ``[d_model]`` per layer). ``site`` defaults to the Direction's site, else ``resid_post``.
    """
    check_mode(mode)
    site = check_site(site or default_site(basis))
    check_positions(positions)
    raw = as_layer_table(basis, subject, layers, "ablation basis",
                         allow_other_model=allow_other_model, width_dim=0)
    table: dict[int, torch.Tensor] = {}
    for layer, q in raw.items():
        q2 = q.unsqueeze(-1) if q.dim() == 1 else q
        table[layer] = orthonormal_basis(q2) if orthonormalise else q2.float()
    means: dict[int, torch.Tensor] = {}
    if mode == "mean":
        if mean is None:
            raise ConfigError("mode='mean' needs mean=... (the per-layer mean activation)")
        means = as_layer_table(mean, subject, list(table), "ablation mean", width_dim=-1)

    def make(q: torch.Tensor, mu: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(hidden: torch.Tensor) -> torch.Tensor:
            qq = q.to(device=hidden.device, dtype=hidden.dtype)
            centred = hidden if mu is None else hidden - mu.to(hidden.device, hidden.dtype)
            new = hidden - (centred @ qq) @ qq.T
            return _apply_masked(hidden, new, token_mask(positions, hidden))

        return fn

    with patch(subject, site, {la: make(q, means.get(la)) for la, q in table.items()}):
        yield


@contextlib.contextmanager
def record_projections(
    subject: Subject,
    direction: LayerInput,
    layers: Layers = None,
    site: str | None = None,
    positions: str = "response",
    allow_other_model: bool = False,
) -> Iterator[dict[int, list[float]]]:
    """Record the mean projection ``h . v / |v|`` over the chosen tokens, per forward call.

    ``direction``: a Direction, ``[d_model]`` with ``layers``, or ``{layer: [d_model]}``.
    Yields ``{layer: [value per call]}`` that fills as the model runs.
    """
    site = check_site(site or default_site(direction))
    check_positions(positions)
    table = as_layer_table(direction, subject, layers, "direction",
                           allow_other_model=allow_other_model, width_dim=-1)
    record: dict[int, list[float]] = {layer: [] for layer in table}

    def make(layer: int, vec: torch.Tensor) -> Callable[[torch.Tensor], None]:
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

    with patch(subject, site, {la: make(la, vec) for la, vec in table.items()}):
        yield record
