"""Mean difference of activations between two sets of conversations (the convergent EM direction)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from emprobe.directions.activations import ChatItem, LayerMeans, all_layers, layer_means
from emprobe.directions.direction import Direction, data_provenance
from emprobe.errors import DataError

if TYPE_CHECKING:
    from emprobe.models.chat import Conversation
    from emprobe.models.subject import Subject


def _pooled_difference(
    plus: tuple[Subject, Sequence[ChatItem]], minus: tuple[Subject, Sequence[ChatItem]],
    layer_list: list[int], *, positions: str, site: str, batch_size: int,
    max_length: int | None, progress: bool,
) -> tuple[dict[int, torch.Tensor], LayerMeans, LayerMeans]:
    """``{layer: pooled mean of plus - pooled mean of minus}`` and both ``layer_means``
    results; each side is ``(subject, conversations)``, measured in that order."""
    a, b = (layer_means(sub, data, layers=layer_list, positions=positions, site=site,
                        batch_size=batch_size, max_length=max_length, progress=progress)
            for sub, data in (plus, minus))
    return {la: a.pooled[la] - b.pooled[la] for la in layer_list}, a, b


def mean_difference(
    subject: Subject,
    positive: Sequence[ChatItem],
    negative: Sequence[ChatItem],
    layers: Sequence[int] | int | None = None,
    positions: str = "response",
    site: str = "resid_post",
    batch_size: int = 8,
    max_length: int | None = 512,
    sign: str = "positive set minus negative set",
    progress: bool = False,
) -> Direction:
    """``v_l = mean_tokens(h_l | positive) - mean_tokens(h_l | negative)`` for every layer.

    Means are pooled over the selected tokens (``positions``, default the
    assistant responses) of all conversations of a set. One batched early-exit
    capture gathers all layers. The vectors are raw (``normalisation="none"``);
    e.g. ``positive`` = misaligned answers, ``negative`` = aligned answers, both run
    through the misaligned model (methods.md section 2).

    Returns a Direction with ``vectors[l]`` of shape ``[d_model]`` for each layer.
    """
    if not positive or not negative:
        raise DataError("mean_difference: both sets need at least one conversation")
    vectors, pos, neg = _pooled_difference(
        (subject, positive), (subject, negative), all_layers(subject, layers), positions=positions,
        site=site, batch_size=batch_size, max_length=max_length, progress=progress)
    return Direction.from_subject(
        subject,
        vectors,
        site=site,
        positions=positions,
        normalisation="none",
        sign=sign,
        method="mean_difference",
        params={"batch_size": batch_size, "max_length": max_length, "pooling": "tokens"},
        provenance={"positive": data_provenance(list(positive)),
                    "negative": data_provenance(list(negative))},
        stats={"positive_tokens": int(pos.counts.sum()), "negative_tokens": int(neg.counts.sum()),
               "norms": {str(la): float(v.norm()) for la, v in vectors.items()}},
    )


def model_mean_difference(
    base: Subject,
    finetuned: Subject,
    conversations: Sequence[Conversation],
    layers: Sequence[int] | int | None = None,
    positions: str = "response",
    site: str = "resid_post",
    batch_size: int = 8,
    max_length: int | None = 512,
    progress: bool = False,
) -> Direction:
    """``v_l = mean_tokens(h_l^ft) - mean_tokens(h_l^base)`` on the same conversations.

    The shift a fine-tune makes in the residual stream (e.g. bad-advice fine-tune
    minus base on the evaluation prompts). Recorded against ``base``'s model id;
    the fine-tune goes to ``params``. ``positions="content"``: the response's content
    tokens only (the chat template's special tokens dropped; ``pca.content_mask``).
    """
    if positions == "content":
        from emprobe.directions.extract.pca import pca_difference

        res = pca_difference(base, finetuned, conversations, layers=layers, k=1,
                             positions="content", batch_size=batch_size, n_contexts=0,
                             max_length=max_length, progress=progress)
        if res.mean_diff is None:  # pragma: no cover - pca_difference always sets it
            raise DataError("model_mean_difference: no content-token mean")
        return res.mean_diff
    if base.d_model != finetuned.d_model:
        raise DataError(f"base width {base.d_model} != fine-tune width {finetuned.d_model}")
    if not conversations:
        raise DataError("model_mean_difference: no conversations")
    vectors, _, bs = _pooled_difference(
        (finetuned, conversations), (base, conversations), all_layers(base, layers),
        positions=positions, site=site, batch_size=batch_size, max_length=max_length,
        progress=progress)
    return Direction.from_subject(
        base, vectors, site=site, positions=positions, normalisation="none",
        sign="fine-tuned minus base", method="model_mean_difference",
        params={"finetuned": str(finetuned.name),
                "finetuned_adapter": str(finetuned.adapter) if finetuned.adapter else None,
                "finetuned_fingerprint": finetuned.fingerprint(), "batch_size": batch_size},
        provenance={"conversations": data_provenance(list(conversations))},
        stats={"tokens": int(bs.counts.sum()),
               "norms": {str(la): float(v.norm()) for la, v in vectors.items()}},
    )
