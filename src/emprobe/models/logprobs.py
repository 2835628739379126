"""Response-token log-probabilities: the one implementation training, scoring, persona
screening, connectivity and SAE attribution all use.

The prediction at position ``t`` is scored against token ``t + 1``; it counts when token
``t + 1`` is an assistant (response) token and a real (non-padding) token, so every tensor
here is ``[batch, pos - 1]``.

Large vocabularies: the log-softmax runs only on the rows of response positions, in chunks
of at most ``CHUNK_ELEMENTS`` float32 values (never a ``[batch, pos, vocab]`` float32 copy);
``forward_response_logprobs`` also asks the model for logits only at the positions that
predict a response token (transformers' ``logits_to_keep``), so the ``[pos, vocab]``
unembedding is not computed for prompt tokens. Chunking does not change any value: each
row's log-softmax is the same operation either way.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from emprobe.models.subject import Subject

from emprobe.errors import ShapeError
from emprobe.models.chat import ChatBatch

__all__ = [
    "CHUNK_ELEMENTS",
    "check_positions",
    "forward_response_logprobs",
    "forward_sequence_logprobs",
    "logprobs_at",
    "needed_positions",
    "response_logprobs",
    "response_mask_shifted",
    "sequence_logprobs",
    "supports_logits_to_keep",
]

CHUNK_ELEMENTS = 1 << 25
"""Most float32 values one log-softmax chunk holds (128 MiB): 128 rows of a 262k vocabulary."""


def response_mask_shifted(batch: ChatBatch) -> torch.Tensor:
    """Bool ``[batch, pos-1]``: the next token is a real response token."""
    return batch.response_mask[:, 1:].bool() & batch.attention_mask[:, 1:].bool()


def needed_positions(batch: ChatBatch) -> torch.Tensor:
    """Long ``[k]``: positions (0..pos-2) whose prediction some row of the batch scores."""
    return response_mask_shifted(batch).any(0).nonzero()[:, 0]


def check_positions(logits: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> None:
    """Raise ``ShapeError`` unless ``logits`` ``[batch, k, ...]`` has one row per position of
    ``positions`` ``[k]`` and those cover every True of ``mask`` ``[batch, pos-1]``."""
    if logits.shape[:2] != (mask.shape[0], positions.numel()):
        raise ShapeError(f"logits {tuple(logits.shape)} do not match {mask.shape[0]} rows x "
                         f"{positions.numel()} positions")
    covered = torch.zeros(mask.shape[1], dtype=torch.bool, device=mask.device)
    covered[positions.to(mask.device)] = True
    if bool((mask & ~covered).any()):
        raise ShapeError("logits are missing positions that predict response tokens")


def logprobs_at(logits: torch.Tensor, positions: torch.Tensor, batch: ChatBatch,
                chunk_elements: int = CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Response log-probs from logits computed only at some positions.

    Args:
        logits: ``[batch, k, vocab]``, the logits at ``positions`` (any float dtype).
        positions: long ``[k]``, positions in ``0..pos-2`` (the predicting token's index);
            must include every position ``needed_positions(batch)`` lists.
        batch: the ``ChatBatch`` (its ``input_ids`` give the targets).
        chunk_elements: most float32 values per log-softmax chunk.

    Returns:
        ``(logp [batch, pos-1] float32, mask [batch, pos-1] bool)``, 0 off the mask;
        gradients flow to ``logits``.
    """
    mask = response_mask_shifted(batch).to(logits.device)
    target = batch.input_ids[:, 1:].to(logits.device)
    positions = positions.to(logits.device)
    check_positions(logits, positions, mask)
    rows, cols = mask[:, positions].nonzero(as_tuple=True)
    step = max(1, chunk_elements // max(1, int(logits.shape[-1])))
    parts = []
    for s in range(0, int(rows.numel()), step):
        r, c = rows[s:s + step], cols[s:s + step]
        picked = logits[r, c].float()  # [chunk, vocab]
        tgt = target[r, positions[c]][:, None]
        parts.append(torch.log_softmax(picked, dim=-1).gather(-1, tgt)[:, 0])
    lp = torch.cat(parts) if parts else logits.new_zeros(0, dtype=torch.float32)
    out = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)
    out = out.index_put((rows, positions[cols]), lp)
    return out, mask


def response_logprobs(logits: torch.Tensor, batch: ChatBatch,
                      chunk_elements: int = CHUNK_ELEMENTS
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability (nats) of each next token, and the response mask.

    Args:
        logits: ``[batch, pos, vocab]`` (any float dtype; the softmax runs in float32).
        batch: the ``ChatBatch`` the logits came from.

    Returns:
        ``(logp [batch, pos-1] float32, mask [batch, pos-1] bool)``; ``logp`` is 0 where
        ``mask`` is False. Only the masked rows go through the softmax, in chunks of
        ``chunk_elements`` values, and gradients flow to ``logits``.
    """
    pos = torch.arange(logits.shape[1] - 1, device=logits.device)
    return logprobs_at(logits[:, :-1], pos, batch, chunk_elements)


def sequence_logprobs(logits: torch.Tensor, batch: ChatBatch, mean: bool = False,
                      dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed (or, with ``mean``, per-token mean) response log-prob of each sequence.

    Returns ``(values [batch] in dtype, n_response_tokens [batch] long)``; a row with no
    response tokens has value 0 (its mean is 0, not NaN).
    """
    logp, mask = response_logprobs(logits, batch)
    return _reduce(logp, mask, mean, dtype)


def _reduce(logp: torch.Tensor, mask: torch.Tensor, mean: bool,
            dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    counts = mask.sum(-1)
    sums = logp.to(dtype).sum(-1)
    if mean:
        sums = sums / counts.clamp_min(1).to(dtype)
    return sums, counts


def supports_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the (possibly PEFT-wrapped) model's forward takes ``logits_to_keep``."""
    get_base = getattr(model, "get_base_model", None)
    inner: object = get_base() if callable(get_base) else model
    return _forward_takes_logits_to_keep(type(inner))


@functools.lru_cache(maxsize=64)
def _forward_takes_logits_to_keep(cls: type) -> bool:
    """Per model class (the trainers ask on every micro-batch)."""
    forward = getattr(cls, "forward", None)
    if forward is None:
        return False
    try:
        return "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def forward_response_logprobs(subject: Subject, batch: ChatBatch,
                              chunk_elements: int = CHUNK_ELEMENTS
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``subject.forward(batch)`` and return ``response_logprobs`` of it, computing the
    unembedding only at positions that predict a response token (``logits_to_keep``) when
    the model supports it. Same values as ``response_logprobs(subject.forward(batch).logits,
    batch)``; hooks, PEFT and gradients behave as in a plain forward.
    """
    positions = needed_positions(batch)
    if positions.numel() == 0 or not supports_logits_to_keep(subject.model):
        return response_logprobs(subject.forward(batch).logits, batch, chunk_elements)
    logits = subject.forward(batch, logits_to_keep=positions).logits  # [batch, k, vocab]
    return logprobs_at(logits, positions, batch, chunk_elements)


def forward_sequence_logprobs(subject: Subject, batch: ChatBatch, mean: bool = False,
                              dtype: torch.dtype = torch.float32
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``sequence_logprobs`` through ``forward_response_logprobs`` (no full-vocab logits)."""
    logp, mask = forward_response_logprobs(subject, batch)
    return _reduce(logp, mask, mean, dtype)
