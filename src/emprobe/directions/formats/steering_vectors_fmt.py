"""steering-vectors ``SteeringVector(layer_activations={layer: [d]}, layer_type=...)``.

steering-vectors hooks ``model.layers[l]`` (``decoder_block``: the block output =
emprobe resid_post ``l``), ``self_attn`` (attn_out) and ``mlp`` (mlp_out), so layer
keys map one to one. The package pins transformers < 5; when it cannot be
imported the same data is returned as a plain dict
``{"layer_activations": ..., "layer_type": ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from emprobe.directions.direction import Direction
from emprobe.directions.formats._checks import real_tensor
from emprobe.errors import FormatError
from emprobe.validate import excerpt, layer_key

LayerType = Literal["decoder_block", "self_attn", "mlp"]
SITE_TO_TYPE: dict[str, LayerType] = {"resid_post": "decoder_block", "attn_out": "self_attn", "mlp_out": "mlp"}
TYPE_TO_SITE = {v: k for k, v in SITE_TO_TYPE.items()}


def to_steering_vector(direction: Direction, component: int = 0, as_dict: bool = False) -> Any:
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


def from_steering_vector(sv: Any, model: str = "unknown", **meta: Any) -> Direction:
    """A SteeringVector (or its dict form) -> Direction."""
    if isinstance(sv, Mapping):
        acts, layer_type = sv.get("layer_activations"), sv.get("layer_type", "decoder_block")
    else:
        acts, layer_type = getattr(sv, "layer_activations", None), getattr(sv, "layer_type", None)
    if not isinstance(acts, Mapping) or not acts:
        raise FormatError("steering vector has no layer_activations")
    if not isinstance(layer_type, str) or layer_type not in TYPE_TO_SITE:
        raise FormatError(f"steering-vectors layer_type {excerpt(layer_type, 40)} has no "
                          "emprobe site")
    # one [d_model] vector per layer: a 2-D value is refused, never flattened
    vectors = {layer_key(k, "layer_activations"): real_tensor(v, f"layer_activations[{k}]")
               for k, v in acts.items()}
    d = {v.shape[0] for v in vectors.values()}
    if len(d) != 1:
        raise FormatError(f"layer_activations of different widths {sorted(d)}")
    meta.setdefault("method", "imported_steering_vectors")
    meta.setdefault("positions", "all")
    return Direction(vectors=vectors, model=model, d_model=d.pop(), site=TYPE_TO_SITE[layer_type], **meta)
