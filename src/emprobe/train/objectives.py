"""Loss terms on response tokens: SFT cross-entropy, gradient ascent, NPO, retain CE and KL.

All take logits ``[batch, pos, vocab]`` and a ``ChatBatch`` whose ``response_mask`` marks the
assistant tokens; the prediction at position ``t`` is scored against token ``t + 1`` and
counted when token ``t + 1`` is a response token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from emprobe.models.chat import ChatBatch

__all__ = ["token_logprobs", "sum_ce", "sequence_logprob", "npo_loss", "kl_to_reference"]


def _shift(logits: torch.Tensor, batch: ChatBatch) -> tuple[torch.Tensor, torch.Tensor,
                                                             torch.Tensor]:
    """Logits ``[b, p-1, v]``, targets ``[b, p-1]``, mask ``[b, p-1]`` for next-token loss."""
    mask = batch.response_mask[:, 1:] & batch.attention_mask[:, 1:].bool()
    return logits[:, :-1], batch.input_ids[:, 1:], mask


def token_logprobs(logits: torch.Tensor, batch: ChatBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token ``[batch, pos-1]`` and the loss mask ``[batch, pos-1]``."""
    lg, tgt, mask = _shift(logits, batch)
    logp = torch.log_softmax(lg.float(), dim=-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return logp, mask


def sum_ce(logits: torch.Tensor, batch: ChatBatch) -> torch.Tensor:
    """Summed next-token cross-entropy over response tokens (a scalar; divide by the count)."""
    lg, tgt, mask = _shift(logits, batch)
    ce = F.cross_entropy(lg.float().reshape(-1, lg.shape[-1]), tgt.reshape(-1), reduction="none")
    return (ce * mask.reshape(-1)).sum()


def sequence_logprob(logits: torch.Tensor, batch: ChatBatch) -> torch.Tensor:
    """Summed log-probability of each sequence's response ``[batch]``."""
    logp, mask = token_logprobs(logits, batch)
    return (logp * mask).sum(-1)


def npo_loss(seq_logp: torch.Tensor, ref_seq_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative preference optimisation per sequence ``[batch]``:
    ``(2 / beta) * log(1 + (pi / pi_ref)^beta) = -(2 / beta) logsigmoid(-beta (log pi - log pi_ref))``.
    """
    return -(2.0 / beta) * F.logsigmoid(-beta * (seq_logp - ref_seq_logp))


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, batch: ChatBatch
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed ``KL(p_ref || p_model)`` over response positions, and the number of positions."""
    lg, _, mask = _shift(logits, batch)
    ref, _, _ = _shift(ref_logits, batch)
    logp = torch.log_softmax(lg.float(), -1)
    logq = torch.log_softmax(ref.float(), -1)
    kl = (logq.exp() * (logq - logp)).sum(-1)
    return (kl * mask).sum(), mask.sum()
