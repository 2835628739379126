"""``as_layer_table``: the one normaliser of intervention inputs to ``{layer: tensor}``.

Steering, ablation, projection recording, CAFT, preventative steering and monitoring all
take the same three kinds of input and pass it through here:

- a ``Direction`` (anything with ``vectors: {layer: tensor}``, ``site`` and
  ``check_compatible(subject, allow_other_model)``): checked against the subject's model
  and width first, and its ``site`` becomes the default hook site;
- a tensor ``[d_model]`` (or ``[d_model, k]``) with ``layers=``: the same tensor at each;
- a mapping ``{layer: tensor}`` (optionally narrowed by ``layers=``).

``hooks`` cannot import ``emprobe.directions`` (a higher layer), so a Direction is
recognised by its shape (``DirectionLike``), not its class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from emprobe.errors import ConfigError, ShapeError, SiteError

if TYPE_CHECKING:
    from emprobe.models.subject import Subject

__all__ = ["DirectionLike", "LayerInput", "as_layer_table", "default_site"]


@runtime_checkable
class DirectionLike(Protocol):
    """What ``as_layer_table`` needs of ``emprobe.directions.Direction``."""

    vectors: dict[int, torch.Tensor]
    site: str

    def check_compatible(self, subject: Subject, allow_other_model: bool = False) -> None: ...


LayerInput = DirectionLike | torch.Tensor | Mapping[int, torch.Tensor]
Layers = int | Sequence[int] | None


def _wanted(layers: Layers) -> list[int] | None:
    if layers is None:
        return None
    return [int(layers)] if isinstance(layers, int) else [int(x) for x in layers]


def default_site(value: object, default: str = "resid_post") -> str:
    """A Direction's hook site, else ``default``."""
    return value.site if isinstance(value, DirectionLike) else default


def as_layer_table(
    value: LayerInput,
    subject: Subject | None = None,
    layers: Layers = None,
    what: str = "vector",
    allow_other_model: bool = False,
    width_dim: int = 0,
) -> dict[int, torch.Tensor]:
    """Normalise an intervention input to ``{layer: tensor}`` (module docstring).

    Args:
        value: a Direction, a tensor (needs ``layers``) or ``{layer: tensor}``.
        subject: when given, a Direction must fit it (``check_compatible``), layers are
            checked and made non-negative, and each tensor's ``width_dim`` must be d_model.
        layers: keep (or, for a tensor, place at) these layers.
        what: names the input in error messages.
        allow_other_model: passed to ``Direction.check_compatible``.
        width_dim: the dimension that holds ``d_model`` (0 for ``[d_model]`` /
            ``[d_model, k]``, -1 for row vectors).

    Raises:
        ConfigError: a tensor without ``layers``, or an input of another kind.
        SiteError: a layer the input does not have, or out of the model's range.
        ShapeError: a width that is not the model's ``d_model``.
        ModelMismatchError: a Direction from another model (unless ``allow_other_model``).
    """
    wanted = _wanted(layers)
    if isinstance(value, DirectionLike):
        if subject is not None:
            value.check_compatible(subject, allow_other_model=allow_other_model)
        source: dict[int, torch.Tensor] = {int(k): v for k, v in value.vectors.items()}
    elif isinstance(value, torch.Tensor):
        if wanted is None:
            raise ConfigError(f"{what}: give layers=... with a single tensor")
        source = {la: value for la in wanted}
    elif isinstance(value, Mapping):
        source = {int(k): v for k, v in value.items()}
    else:
        raise ConfigError(f"{what}: expected a Direction, a tensor or {{layer: tensor}}, "
                          f"got {type(value).__name__}")
    if subject is not None:  # negative layer indices count from the end
        source = {subject.layers.check_layer(la): t for la, t in source.items()}
        wanted = None if wanted is None else [subject.layers.check_layer(la) for la in wanted]
    if wanted is not None:
        missing = [la for la in wanted if la not in source]
        if missing:
            raise SiteError(f"{what}: no tensor for layer(s) {missing}; have {sorted(source)}")
        source = {la: source[la] for la in wanted}
    if subject is None:
        return source
    for layer, t in source.items():
        if not isinstance(t, torch.Tensor):
            raise ConfigError(f"{what} at layer {layer}: expected a tensor, got "
                              f"{type(t).__name__}")
        dim = width_dim if width_dim >= 0 else t.dim() + width_dim
        if t.dim() == 0 or dim >= t.dim() or t.shape[dim] != subject.d_model:
            raise ShapeError(f"{what} at layer {layer} has shape {tuple(t.shape)} but the "
                             f"model's d_model is {subject.d_model}")
    return source
