"""Response-token log-probabilities: the one implementation training, scoring, persona
screening, connectivity and SAE attribution all use.

The prediction at position ``t`` is scored against token ``t + 1``; it counts when token
``t + 1`` is an assistant (response) token and a real (non-padding) token, so every tensor
here is ``[batch, pos - 1]``.
"""

from __future__ import annotations

import torch

from emprobe.models.chat import ChatBatch

__all__ = ["response_logprobs", "response_mask_shifted", "sequence_logprobs"]


def response_mask_shifted(batch: ChatBatch) -> torch.Tensor:
    """Bool ``[batch, pos-1]``: the next token is a real response token."""
    return batch.response_mask[:, 1:].bool() & batch.attention_mask[:, 1:].bool()


def response_logprobs(logits: torch.Tensor, batch: ChatBatch
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability (nats) of each next token, and the response mask.

    Args:
        logits: ``[batch, pos, vocab]`` (any float dtype; the softmax runs in float32).
        batch: the ``ChatBatch`` the logits came from.

    Returns:
        ``(logp [batch, pos-1] float32, mask [batch, pos-1] bool)``; ``logp`` is 0 where
        ``mask`` is False. Only the masked rows go through the softmax (memory
        ``n_response_tokens x vocab``), and gradients flow to ``logits``.
    """
    mask = response_mask_shifted(batch).to(logits.device)
    target = batch.input_ids[:, 1:].to(logits.device)
    picked = logits[:, :-1][mask].float()  # [n_tokens, vocab]
    lp = torch.log_softmax(picked, dim=-1).gather(-1, target[mask][:, None])[:, 0]
    out = torch.zeros(mask.shape, dtype=lp.dtype, device=lp.device)
    out = out.masked_scatter(mask, lp)
    return out, mask


def sequence_logprobs(logits: torch.Tensor, batch: ChatBatch, mean: bool = False,
                      dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed (or, with ``mean``, per-token mean) response log-prob of each sequence.

    Returns ``(values [batch] in dtype, n_response_tokens [batch] long)``; a row with no
    response tokens has value 0 (its mean is 0, not NaN).
    """
    logp, mask = response_logprobs(logits, batch)
    counts = mask.sum(-1)
    sums = logp.to(dtype).sum(-1)
    if mean:
        sums = sums / counts.clamp_min(1).to(dtype)
    return sums, counts
