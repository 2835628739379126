"""steering-vectors ``SteeringVector(layer_activations={layer: [d]}, layer_type=...)``.

steering-vectors hooks ``model.layers[l]`` (``decoder_block``: the block output =
emprobe resid_post ``l``), ``self_attn`` (attn_out) and ``mlp`` (mlp_out), so layer
keys map one to one. The package pins transformers < 5; when it cannot be
imported the same data is returned as a plain dict
``{"layer_activations": ..., "layer_type": ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from emprobe.directions.direction import Direction
from emprobe.directions.formats._checks import naming, real_tensor
from emprobe.errors import FormatError, ShapeError
from emprobe.validate import excerpt, layer_key

if TYPE_CHECKING:
    import torch
    from steering_vectors import SteeringVector

LayerType = Literal["decoder_block", "self_attn", "mlp"]
SITE_TO_TYPE: dict[str, LayerType] = {"resid_post": "decoder_block", "attn_out": "self_attn", "mlp_out": "mlp"}
TYPE_TO_SITE = {v: k for k, v in SITE_TO_TYPE.items()}


class SteeringVectorDict(TypedDict):
    """The plain-dict form of a ``SteeringVector``."""

    layer_activations: dict[int, torch.Tensor]
    layer_type: LayerType


def to_steering_vector(direction: Direction, component: int = 0,
                       as_dict: bool = False) -> SteeringVector | SteeringVectorDict:
    """A ``steering_vectors.SteeringVector`` (or the equivalent dict)."""
    if direction.site not in SITE_TO_TYPE:
        raise FormatError(f"steering-vectors has no layer type for site {direction.site!r}")
    acts = {la: direction.vector(la, component).clone() for la in direction.layers}
    layer_type = SITE_TO_TYPE[direction.site]
    if not as_dict:
        try:
            from steering_vectors import SteeringVector
        except Exception:  # not installed, or incompatible with this transformers
            as_dict = True
        else:
            return SteeringVector(layer_activations=acts, layer_type=layer_type)
    return {"layer_activations": acts, "layer_type": layer_type}


def from_steering_vector(sv: object, model: str = "unknown", **meta: Any) -> Direction:
    """A SteeringVector (or its dict form) -> Direction.

    Checks: ``layer_activations`` a non-empty mapping of layer index (``0..MAX_LAYER``, no
    floats, bools or two keys for one layer) -> one finite real ``[d_model]`` vector, all of one
    width; ``layer_type`` one of ``decoder_block`` / ``self_attn`` / ``mlp``. Errors are one
    line starting ``steering vector:`` and naming the field.
    """
    where = "steering vector"
    if isinstance(sv, Mapping):
        acts, layer_type = sv.get("layer_activations"), sv.get("layer_type", "decoder_block")
    else:
        acts, layer_type = getattr(sv, "layer_activations", None), getattr(sv, "layer_type", None)
    if not isinstance(acts, Mapping) or not acts:
        raise FormatError(f"{where}: layer_activations must be a non-empty mapping layer -> "
                          f"vector, got {excerpt(acts, 60)}")
    if not isinstance(layer_type, str) or layer_type not in TYPE_TO_SITE:
        raise FormatError(f"{where}: layer_type {excerpt(layer_type, 40)} has no emprobe site "
                          f"(use one of {', '.join(TYPE_TO_SITE)})")
    # one [d_model] vector per layer: a 2-D value is refused, never flattened
    vectors: dict[int, torch.Tensor] = {}
    for k, v in acts.items():
        la = layer_key(k, f"{where}: layer_activations")
        if la in vectors:
            raise FormatError(f"{where}: layer_activations has two keys for layer {la}")
        vectors[la] = real_tensor(v, f"{where}: layer_activations[{excerpt(k, 20)}]")
    d = {v.shape[0] for v in vectors.values()}
    if len(d) != 1:
        raise ShapeError(f"{where}: layer_activations of different widths {sorted(d)}")
    meta.setdefault("method", "imported_steering_vectors")
    meta.setdefault("positions", "all")
    with naming(where):
        return Direction(vectors=vectors, model=model, d_model=d.pop(),
                         site=TYPE_TO_SITE[layer_type], **meta)
