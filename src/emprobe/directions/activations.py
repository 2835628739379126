"""Per-sequence and pooled token means of activations at many layers, from one pass per batch.

Every extractor reads activations through here: one early-exit capture of all
requested layers per batch (the forward stops after the deepest layer), never a
forward pass per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from emprobe.errors import DataError
from emprobe.hooks import capture
from emprobe.models.chat import ChatBatch, Conversation, sink_mask
from emprobe.models.context import use_batch

if TYPE_CHECKING:
    from emprobe.models.subject import Subject

# one input of an extractor: a conversation (response mask from the chat template) or a
# plain text (every token counts as response); a batch holds one kind only
ChatItem = str | Conversation


@dataclass
class LayerMeans:
    """Token means per sequence and pooled over all selected tokens.

    Attributes:
        per_seq: ``{layer: [n_seq, d_model]}`` mean over each sequence's selected tokens
            (NaN rows for sequences with none).
        pooled: ``{layer: [d_model]}`` mean over all selected tokens of all sequences.
        counts: ``[n_seq]`` selected tokens per sequence.
    """

    per_seq: dict[int, torch.Tensor]
    pooled: dict[int, torch.Tensor]
    counts: torch.Tensor


def encode(subject: Subject, items: Sequence[ChatItem], add_generation_prompt: bool = False,
           max_length: int | None = 512) -> ChatBatch:
    """Conversations or plain strings (the first item decides which) -> ``ChatBatch`` on
    the subject's device. A batch mixing the two is refused."""
    if not items:
        raise DataError("no data to run")
    if isinstance(items[0], str):
        texts = [x for x in items if isinstance(x, str)]
        if len(texts) != len(items):
            raise DataError("data mixes plain strings and conversations")
        return subject.encode_texts(texts, max_length=max_length)
    convs = [x for x in items if not isinstance(x, str)]
    if len(convs) != len(items):
        raise DataError("data mixes conversations and plain strings")
    return subject.encode_chats(
        convs, add_generation_prompt=add_generation_prompt, max_length=max_length
    )


def all_layers(subject: Subject, layers: Sequence[int] | int | None) -> list[int]:
    if layers is None:
        return list(range(subject.n_layers))
    if isinstance(layers, int):
        layers = [layers]
    return sorted({subject.layers.check_layer(int(la)) for la in layers})


def _sinks(subject: Subject, batch: ChatBatch) -> torch.Tensor:
    """The subject's attention-sink mask (first token only for objects without one)."""
    fn = getattr(subject, "sink_mask", None)
    got = fn(batch) if callable(fn) else None
    return got if isinstance(got, torch.Tensor) else sink_mask(batch)


@torch.no_grad()
def layer_means(
    subject: Subject,
    data: Sequence[ChatItem],
    layers: Sequence[int] | int | None = None,
    positions: str = "response",
    site: str = "resid_post",
    batch_size: int = 8,
    add_generation_prompt: bool = False,
    max_length: int | None = 512,
    progress: bool = False,
    exclude_sink: bool = True,
) -> LayerMeans:
    """Mean activations of the selected tokens, for every layer at once.

    ``data``: conversations (response masks from the chat template) or plain strings.
    One early-exit forward per batch captures all ``layers`` (default: all).
    ``exclude_sink`` (default) leaves out attention-sink positions (each row's first token
    and a prepended BOS: ``Subject.sink_mask``), whose activations are often tens of times
    larger than the rest and would dominate a mean over ``all`` / ``prompt`` tokens (or
    plain texts, whose every token counts as response).
    """
    layer_list = all_layers(subject, layers)
    items = list(data)
    sums = {la: torch.zeros(subject.d_model, dtype=torch.float64) for la in layer_list}
    per_seq: dict[int, list[torch.Tensor]] = {la: [] for la in layer_list}
    counts: list[torch.Tensor] = []
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    for chunk in tqdm(chunks, desc="activations", disable=not progress, leave=False):
        batch = encode(subject, chunk, add_generation_prompt, max_length)
        mask = batch.mask(positions)
        if exclude_sink:
            mask = mask & ~_sinks(subject, batch)
        m = mask.unsqueeze(-1).float()
        n = m.sum(1)  # [batch, 1]
        with capture(subject, layer_list, site, early_exit=True) as cache, use_batch(batch):
            subject.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        for la in layer_list:
            h = cache[site, la].float() * m  # [batch, pos, d_model]
            tot = h.sum(1)
            sums[la] += tot.sum(0).double().cpu()
            per_seq[la].append((tot / n).cpu())
        counts.append(n.squeeze(-1).cpu())
    count = torch.cat(counts)
    total = float(count.sum())
    if total == 0:
        raise DataError(f"no {positions!r} tokens in {len(items)} sequences")
    return LayerMeans(
        per_seq={la: torch.cat(v) for la, v in per_seq.items()},
        pooled={la: (s / total).float() for la, s in sums.items()},
        counts=count,
    )
