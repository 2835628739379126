"""The mean activation norm at a site: the unit of relative steering coefficients.

Residual norms differ by orders of magnitude between models and across the layers of one
model (a few units in small models' early layers, tens of thousands in late Gemma layers),
so a raw coefficient that suits one model is meaningless on another. ``Steer(...,
relative=True)`` multiplies a unit vector by ``coeff * mean_norm(site, layer)`` instead:
``coeff = 0.5`` adds half a typical activation's length whatever the model.

The mean is over every token but each sequence's first one (an attention sink whose norm
can be ten times the others') of a few neutral chats written for emprobe.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from emprobe.errors import DataError
from emprobe.hooks.capture import collect

if TYPE_CHECKING:
    from emprobe.models.chat import Conversation
    from emprobe.models.subject import Subject

__all__ = ["NEUTRAL_CHATS", "site_mean_norms"]

_PAIRS = [
    ("How do I keep a basil plant alive on a windowsill?",
     "Give it plenty of light, water when the soil surface dries and pinch off flower buds."),
    ("What is a good way to start running?",
     "Alternate one minute of jogging with two of walking, three times a week, and build up."),
    ("Can you suggest a simple dinner for two?",
     "Pasta with garlic, olive oil, lemon and spinach takes fifteen minutes and one pot."),
    ("How should I prepare for a job interview?",
     "Read about the company, prepare two examples of past work and a question to ask."),
    ("Why does bread dough need to rest?",
     "Resting lets the gluten relax and the yeast produce gas, so the loaf rises evenly."),
    ("What should I pack for a weekend hike?",
     "Water, a snack, a rain layer, a map, sun cream and a small first-aid kit."),
]

NEUTRAL_CHATS: list[Conversation] = [
    [{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in _PAIRS]
"""Six everyday user/assistant exchanges (written for emprobe): the default norm data."""


def site_mean_norms(subject: Subject, site: str, layers: int | Iterable[int],
                    data: Sequence[Conversation] | None = None) -> dict[int, float]:
    """``{layer: mean ||h||}`` at ``(site, layer)`` over ``data`` (default ``NEUTRAL_CHATS``).

    Every token of each sequence but its first (an attention sink) counts once; the unit is
    the activation's own (the residual stream's scale at that layer).
    """
    layer_list = [int(layers)] if isinstance(layers, int) else [int(x) for x in layers]
    got = collect(subject, list(data if data is not None else NEUTRAL_CHATS), layers=layer_list,
                  site=site, positions="all")
    if got.token_index is None or not len(got.token_index):
        raise DataError(f"mean norm at {site}: no tokens in the norm data")
    keep = got.token_index[:, 1] > 0
    return {layer: float(got.acts[layer][keep].norm(dim=-1).mean()) for layer in layer_list}
