"""The intervention vocabulary: ``Steer``, ``Ablate`` and ``Project`` objects over site hooks.

Each object holds the math of one intervention (``edit``: hidden ``[batch, pos, d_model]``
-> edited hidden) and its settings; ``obj.apply(subject)`` is a context manager that hooks
it into the model and always removes the hooks on exit, exceptions included. The function
forms ``steer`` / ``ablate`` / ``record_projections`` build an object and apply it::

    with steer(subject, direction, coeff=4.0):                    # absolute (default)
        subject.generate(prompts)
    with Steer(direction, coeff=0.5, relative=True).apply(subject):  # 0.5 x mean ||h||
        ...

All take a ``Direction``, a tensor (with ``layers=``) or ``{layer: tensor}`` through
``as_layer_table`` (a Direction is checked against the model and gives the default site).
Gradients flow through the edits, so the same objects work at inference and in training
(``emprobe.train`` wraps them as trainer plug-ins).

Steering coefficients: **absolute by default** (``h + coeff * v`` with ``v`` as stored,
the persona-vector convention); ``relative=True`` scales each layer's *unit* vector by
``coeff`` times the site's mean activation norm (``emprobe.hooks.norms``), which carries
over between models whose residual norms differ by orders of magnitude.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from emprobe.errors import ConfigError
from emprobe.hooks.core import add_site_hook, token_mask
from emprobe.hooks.layer_table import LayerInput, as_layer_table, default_site
from emprobe.hooks.types import check_mode, check_positions, check_site

if TYPE_CHECKING:
    from emprobe.hooks.core import SiteFn
    from emprobe.models.subject import Subject

__all__ = [
    "Ablate",
    "Intervention",
    "Project",
    "Steer",
    "ablate",
    "orthonormal_basis",
    "patch",
    "record_projections",
    "steer",
]

LayerTensors = Mapping[int, torch.Tensor]
Layers = int | Sequence[int] | None


class Intervention(Protocol):
    """What every inference-time intervention offers: a context manager that applies it."""

    def apply(self, subject: Subject) -> contextlib.AbstractContextManager[object]: ...

    def describe(self) -> dict[str, object]: ...


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


def orthonormal_basis(directions: torch.Tensor) -> torch.Tensor:
    """``[d_model]`` or ``[d_model, k]`` -> orthonormal columns ``[d_model, k]`` (QR)."""
    q = directions.unsqueeze(-1) if directions.dim() == 1 else directions
    q, _ = torch.linalg.qr(q.float())
    return q


@dataclass(frozen=True)
class Steer:
    """Add ``coeff * v_l`` to the activations at ``(site, l)`` on the chosen tokens.

    Attributes:
        vector: a Direction, ``[d_model]`` (with ``layers``) or ``{layer: [d_model]}``.
        coeff: the coefficient; absolute (times ``v`` as stored) unless ``relative``.
        layers: which layers (required for a bare tensor; narrows a Direction or mapping).
        site: hook site; default the Direction's, else ``resid_post``.
        positions: ``all``, ``prompt``, ``response`` or ``last`` tokens.
        relative: add ``coeff * norm_l * v_l / ||v_l||`` where ``norm_l`` is the site's
            mean activation norm (``norms``, else measured by ``site_mean_norms``).
        norms: ``{layer: mean norm}`` or one number for all layers (relative mode only).
        allow_other_model: accept a Direction extracted from another model.
    """

    vector: LayerInput
    coeff: float = 1.0
    layers: Layers = None
    site: str | None = None
    positions: str = "all"
    relative: bool = False
    norms: Mapping[int, float] | float | None = None
    allow_other_model: bool = False

    @staticmethod
    def edit(hidden: torch.Tensor, vector: torch.Tensor, coeff: float) -> torch.Tensor:
        """``hidden [.., d_model] + coeff * vector [d_model]`` (in ``hidden``'s dtype)."""
        return hidden + coeff * vector.to(device=hidden.device, dtype=hidden.dtype)

    def scaled(self, coeff: float) -> Steer:
        """The same steer with another coefficient."""
        return dataclasses.replace(self, coeff=float(coeff))

    def vectors(self, subject: Subject) -> dict[int, torch.Tensor]:
        """``{layer: the vector actually added at coeff = 1}`` (``[d_model]``)."""
        site = check_site(self.site or default_site(self.vector))
        table = as_layer_table(self.vector, subject, self.layers, "steering vector",
                               allow_other_model=self.allow_other_model, width_dim=-1)
        if not self.relative:
            return table
        norms = self.norms
        if norms is None:
            from emprobe.hooks.norms import site_mean_norms

            norms = site_mean_norms(subject, site, list(table))
        scale = ({la: float(norms) for la in table} if isinstance(norms, (int, float))
                 else {la: float(norms[la]) for la in table})
        return {la: v.float() / v.float().norm().clamp_min(1e-12) * scale[la]
                for la, v in table.items()}

    @contextlib.contextmanager
    def apply(self, subject: Subject) -> Iterator[None]:
        site = check_site(self.site or default_site(self.vector))
        positions = check_positions(self.positions)
        coeff = float(self.coeff)

        def make(vec: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
            def fn(hidden: torch.Tensor) -> torch.Tensor:
                return _apply_masked(hidden, self.edit(hidden, vec, coeff),
                                     token_mask(positions, hidden))

            return fn

        with patch(subject, site, {la: make(v) for la, v in self.vectors(subject).items()}):
            yield

    def describe(self) -> dict[str, object]:
        return {"kind": "steer", "coeff": self.coeff, "relative": self.relative,
                "site": self.site or default_site(self.vector), "positions": self.positions}


@dataclass(frozen=True)
class Ablate:
    """Remove a subspace from the activations (zero or mean ablation).

    Zero: ``h <- h - (h Q) Q^T``. Mean: ``h <- h - ((h - mu) Q) Q^T``, which keeps the mean
    component ``mu`` along ``Q``.

    Attributes:
        basis: a Direction, ``[d_model, k]`` (or ``[d_model]``) with ``layers``, or one per layer.
        layers: which layers (required for a bare tensor).
        mode: ``zero`` or ``mean``.
        mean: ``{layer: mu [d_model]}`` (required for ``mode="mean"``).
        site, positions, allow_other_model: as for ``Steer``.
        orthonormalise: QR the columns first (turn off only for an orthonormal basis).
    """

    basis: LayerInput
    layers: Layers = None
    mode: str = "zero"
    mean: LayerInput | None = None
    site: str | None = None
    positions: str = "all"
    orthonormalise: bool = True
    allow_other_model: bool = False

    @staticmethod
    def edit(hidden: torch.Tensor, q: torch.Tensor, mu: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden [.., d_model]`` minus its (centred) component in ``span(q [d_model, k])``."""
        qq = q.to(device=hidden.device, dtype=hidden.dtype)
        centred = hidden if mu is None else hidden - mu.to(hidden.device, hidden.dtype)
        return hidden - (centred @ qq) @ qq.T

    def bases(self, subject: Subject) -> dict[int, torch.Tensor]:
        """``{layer: Q [d_model, k]}`` as applied (orthonormal unless told otherwise)."""
        raw = as_layer_table(self.basis, subject, self.layers, "ablation basis",
                             allow_other_model=self.allow_other_model, width_dim=0)
        out = {}
        for layer, q in raw.items():
            q2 = q.unsqueeze(-1) if q.dim() == 1 else q
            out[layer] = orthonormal_basis(q2) if self.orthonormalise else q2.float()
        return out

    @contextlib.contextmanager
    def apply(self, subject: Subject) -> Iterator[None]:
        check_mode(self.mode)
        site = check_site(self.site or default_site(self.basis))
        positions = check_positions(self.positions)
        table = self.bases(subject)
        means: dict[int, torch.Tensor] = {}
        if self.mode == "mean":
            if self.mean is None:
                raise ConfigError("mode='mean' needs mean=... (the per-layer mean activation)")
            means = as_layer_table(self.mean, subject, list(table), "ablation mean", width_dim=-1)

        def make(q: torch.Tensor, mu: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
            def fn(hidden: torch.Tensor) -> torch.Tensor:
                return _apply_masked(hidden, self.edit(hidden, q, mu), token_mask(positions, hidden))

            return fn

        with patch(subject, site, {la: make(q, means.get(la)) for la, q in table.items()}):
            yield

    def describe(self) -> dict[str, object]:
        return {"kind": "ablate", "mode": self.mode,
                "site": self.site or default_site(self.basis), "positions": self.positions}


@dataclass(frozen=True)
class Project:
    """Record the mean projection ``h . v / ||v||`` over the chosen tokens, per forward call.

    Observes only (the activations are not changed). ``apply`` yields ``{layer: [value per
    call]}``, filled as the model runs.
    """

    direction: LayerInput
    layers: Layers = None
    site: str | None = None
    positions: str = "response"
    allow_other_model: bool = False

    @staticmethod
    def edit(hidden: torch.Tensor, unit: torch.Tensor, mask: torch.Tensor | None) -> float | None:
        """Mean of ``hidden [.., d_model] . unit`` over the masked tokens (None if none)."""
        proj = hidden.detach().float() @ unit.to(hidden.device)
        vals = proj[mask] if mask is not None else proj.reshape(-1)
        return float(vals.mean()) if vals.numel() else None

    @contextlib.contextmanager
    def apply(self, subject: Subject) -> Iterator[dict[int, list[float]]]:
        site = check_site(self.site or default_site(self.direction))
        positions = check_positions(self.positions)
        table = as_layer_table(self.direction, subject, self.layers, "direction",
                               allow_other_model=self.allow_other_model, width_dim=-1)
        record: dict[int, list[float]] = {layer: [] for layer in table}

        def make(layer: int, vec: torch.Tensor) -> Callable[[torch.Tensor], None]:
            unit = vec.float() / vec.float().norm().clamp_min(1e-12)

            def fn(hidden: torch.Tensor) -> None:
                with torch.no_grad():
                    value = self.edit(hidden, unit, token_mask(positions, hidden))
                if value is not None:
                    record[layer].append(value)

            return fn

        with patch(subject, site, {la: make(la, vec) for la, vec in table.items()}):
            yield record

    def describe(self) -> dict[str, object]:
        return {"kind": "project", "site": self.site or default_site(self.direction),
                "positions": self.positions}


def steer(
    subject: Subject,
    vector: LayerInput,
    coeff: float = 1.0,
    layers: Layers = None,
    site: str | None = None,
    positions: str = "all",
    allow_other_model: bool = False,
    relative: bool = False,
    norms: Mapping[int, float] | float | None = None,
) -> contextlib.AbstractContextManager[None]:
    """``with steer(subject, v, coeff): ...``: ``Steer(...).apply(subject)`` (see ``Steer``).

    Coefficients are absolute by default (``v`` used as given, not normalised: persona-vector
    coefficients assume raw vectors); ``relative=True`` makes ``coeff`` a multiple of the
    site's mean activation norm.
    """
    return Steer(vector, coeff, layers, site, positions, relative, norms,
                 allow_other_model).apply(subject)


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
) -> contextlib.AbstractContextManager[None]:
    """``with ablate(subject, basis): ...``: ``Ablate(...).apply(subject)`` (see ``Ablate``)."""
    return Ablate(basis, layers, mode, mean, site, positions, orthonormalise,
                  allow_other_model).apply(subject)


def record_projections(
    subject: Subject,
    direction: LayerInput,
    layers: Layers = None,
    site: str | None = None,
    positions: str = "response",
    allow_other_model: bool = False,
) -> contextlib.AbstractContextManager[dict[int, list[float]]]:
    """``with record_projections(subject, d) as rec: ...``: ``Project(...).apply(subject)``."""
    return Project(direction, layers, site, positions, allow_other_model).apply(subject)
