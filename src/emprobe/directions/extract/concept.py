"""Concept vectors per layer and the layer-wise cosine matrix between concepts [inferred].

Concept vector ``c_l = mean(h_l at the last prompt token | concept prompts)
- mean(h_l at the last prompt token | neutral prompts)`` (narrow-unlearning study).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from emprobe.directions.activations import ChatItem, LayerMeans, all_layers, layer_means
from emprobe.directions.direction import Direction, data_provenance
from emprobe.directions.prompts import NEUTRAL_PROMPTS
from emprobe.errors import DataError, ShapeError

if TYPE_CHECKING:
    from emprobe.models.chat import Conversation
    from emprobe.models.subject import Subject


def _as_prompts(prompts: Sequence[ChatItem]) -> list[Conversation]:
    return [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]


def concept_vectors(
    subject: Subject,
    concepts: Mapping[str, Sequence[ChatItem]],
    neutral: Sequence[ChatItem] | None = None,
    layers: Sequence[int] | int | None = None,
    batch_size: int = 8,
) -> dict[str, Direction]:
    """One Direction per concept, each with a ``[d_model]`` vector at every layer.

    Prompts are user messages (strings) or conversations; the generation prompt is
    appended, so "last prompt token" is the last token before the assistant's reply.
    """
    if not concepts:
        raise DataError("concept_vectors: no concepts given")
    neutral_list = _as_prompts(neutral if neutral is not None else NEUTRAL_PROMPTS)
    layer_list = all_layers(subject, layers)
    def last_token_means(prompts: list[Conversation]) -> LayerMeans:
        return layer_means(subject, prompts, layers=layer_list, positions="last",
                           batch_size=batch_size, add_generation_prompt=True)

    base = last_token_means(neutral_list)
    out = {}
    for name, prompts in concepts.items():
        if not prompts:
            raise DataError(f"concept {name!r}: no prompts")
        got = last_token_means(_as_prompts(prompts))
        vectors = {la: got.pooled[la] - base.pooled[la] for la in layer_list}
        out[name] = Direction.from_subject(
            subject, vectors, positions="last", normalisation="none",
            sign=f"{name} prompts minus neutral prompts", method="concept_vector",
            params={"concept": name, "token": "last prompt token (after generation prompt)"},
            provenance={"concept": data_provenance(list(prompts)),
                        "neutral": data_provenance(neutral_list)},
        )
    return out


def cosine_matrix(directions: Mapping[str, Direction]) -> tuple[list[str], list[int], torch.Tensor]:
    """Layer-wise cosine similarity between concepts.

    Returns ``(names, layers, cos)`` with ``cos [n_layers, n_concepts, n_concepts]``,
    symmetric with ones on the diagonal (over the layers all concepts share).
    """
    names = list(directions)
    if not names:
        raise DataError("cosine_matrix: no directions")
    widths = {d.d_model for d in directions.values()}
    if len(widths) != 1:
        raise ShapeError(f"cosine_matrix: directions of different widths {sorted(widths)}")
    layers = sorted(set.intersection(*(set(d.layers) for d in directions.values())))
    if not layers:
        raise DataError("cosine_matrix: the directions share no layer")
    cos = torch.empty(len(layers), len(names), len(names))
    for i, la in enumerate(layers):
        m = torch.stack([directions[n].vector(la) for n in names])
        m = m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        c = m @ m.T
        cos[i] = (c + c.T) / 2
        cos[i].fill_diagonal_(1.0)
    return names, layers, cos
