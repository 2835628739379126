"""Loss terms on response tokens: SFT cross-entropy, gradient ascent, NPO, retain CE and KL.

Each term is an ``Objective`` that owns its math; the trainer only sums
``weight * objective(logits, batch, counts, reference, positions)``. All take a
``ChatBatch`` and its logits: ``[batch, pos, vocab]`` when ``positions`` is None, or only
the rows at ``positions`` (``[batch, k, vocab]``, transformers' ``logits_to_keep``: the
trainers ask for the positions that predict a response token, ``loss_positions``, so the
unembedding and its gradient skip the prompt). The prediction at position ``t`` is scored
against token ``t + 1`` and counted when token ``t + 1`` is a real response token
(``emprobe.models.logprobs``); both forms give the same loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from emprobe.models.chat import ChatBatch
from emprobe.models.logprobs import (
    check_positions,
    logprobs_at,
    needed_positions,
    response_logprobs,
    response_mask_shifted,
    supports_logits_to_keep,
)

if TYPE_CHECKING:
    from emprobe.train.config import TrainConfig

__all__ = [
    "CrossEntropy",
    "GradientAscent",
    "NPO",
    "Objective",
    "RetainCE",
    "RetainKL",
    "StepCounts",
    "kl_to_reference",
    "loss_positions",
    "masked_kl",
    "npo_loss",
    "objectives_for",
    "sequence_logprob",
    "sum_ce",
    "token_logprobs",
]

# logits of the frozen reference model (adapter disabled, training hooks off) for a batch,
# at the same positions as the trained model's logits
Reference = Callable[[ChatBatch], torch.Tensor]


def loss_positions(model: torch.nn.Module, batch: ChatBatch) -> torch.Tensor | None:
    """The positions to ask ``model`` for logits at (``logits_to_keep``) so that every
    objective here still sees each response token's prediction: those that predict a
    response token in some row (``needed_positions``). None (all positions) when the model's
    forward has no ``logits_to_keep`` or the batch has no response token."""
    positions = needed_positions(batch)
    if positions.numel() == 0 or not supports_logits_to_keep(model):
        return None
    return positions


def token_logprobs(logits: torch.Tensor, batch: ChatBatch,
                   positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token ``[batch, pos-1]`` and the loss mask ``[batch, pos-1]``
    (``logits`` at ``positions`` only when given, as the module docstring says)."""
    if positions is None:
        return response_logprobs(logits, batch)
    return logprobs_at(logits, positions, batch)


def sum_ce(logits: torch.Tensor, batch: ChatBatch,
           positions: torch.Tensor | None = None) -> torch.Tensor:
    """Summed next-token cross-entropy over response tokens (a scalar; divide by the count)."""
    logp, _ = token_logprobs(logits, batch, positions)
    return -logp.sum()


def sequence_logprob(logits: torch.Tensor, batch: ChatBatch,
                     positions: torch.Tensor | None = None) -> torch.Tensor:
    """Summed log-probability of each sequence's response ``[batch]``."""
    return token_logprobs(logits, batch, positions)[0].sum(-1)


def npo_loss(seq_logp: torch.Tensor, ref_seq_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative preference optimisation per sequence ``[batch]``:
    ``(2 / beta) * log(1 + (pi / pi_ref)^beta) = -(2 / beta) logsigmoid(-beta (log pi - log pi_ref))``.
    """
    return -(2.0 / beta) * F.logsigmoid(-beta * (seq_logp - ref_seq_logp))


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, batch: ChatBatch,
                    positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed ``KL(p_ref || p_model)`` over response positions, and the number of positions
    (both logits at ``positions`` only when given)."""
    mask = response_mask_shifted(batch).to(logits.device)
    if positions is None:
        logits, ref_logits = logits[:, :-1], ref_logits[:, :-1]
    else:
        check_positions(logits, positions, mask)
        check_positions(ref_logits, positions, mask)
        mask = mask[:, positions.to(mask.device)]
    return masked_kl(logits, ref_logits, mask)


def masked_kl(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed ``KL(p_ref || p_model)`` over the rows of ``[batch, pos, vocab]`` logits where
    ``mask`` ``[batch, pos]`` is True, and their number; only those rows go through the
    (float32) softmax."""
    rows = mask.nonzero(as_tuple=True)
    logp = torch.log_softmax(logits[rows].float(), -1)
    logq = torch.log_softmax(ref_logits[rows].float(), -1)
    return (logq.exp() * (logq - logp)).sum(), mask.sum()


@dataclass(frozen=True)
class StepCounts:
    """Normalisers of one optimizer step, over the global batch (all micro-batches, ranks).

    tokens: response tokens (``>= 1``). sequences: sequences (``>= 1``).
    """

    tokens: int
    sequences: int


class Objective:
    """One loss term. ``key`` names it in the metrics (``loss/task``, ``loss/retain_ce``...);
    ``needs_reference`` says whether it reads the frozen reference model's logits."""

    key = "loss/task"
    needs_reference = False

    def __call__(self, logits: torch.Tensor, batch: ChatBatch, counts: StepCounts,
                 reference: Reference, positions: torch.Tensor | None = None) -> torch.Tensor:
        """This micro-batch's share of the step's loss (a scalar); ``logits`` at
        ``positions`` only when given (the module docstring)."""
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        return {"name": type(self).__name__, "key": self.key}


class CrossEntropy(Objective):
    """Supervised fine-tuning: mean next-token cross-entropy over response tokens."""

    def __call__(self, logits: torch.Tensor, batch: ChatBatch, counts: StepCounts,
                 reference: Reference, positions: torch.Tensor | None = None) -> torch.Tensor:
        return sum_ce(logits, batch, positions) / counts.tokens


class GradientAscent(Objective):
    """Unlearning by gradient ascent: the negated cross-entropy."""

    def __call__(self, logits: torch.Tensor, batch: ChatBatch, counts: StepCounts,
                 reference: Reference, positions: torch.Tensor | None = None) -> torch.Tensor:
        return -sum_ce(logits, batch, positions) / counts.tokens


@dataclass
class NPO(Objective):
    """Negative preference optimisation (``npo_loss``), averaged over sequences."""

    beta: float = 0.1
    needs_reference = True

    def __call__(self, logits: torch.Tensor, batch: ChatBatch, counts: StepCounts,
                 reference: Reference, positions: torch.Tensor | None = None) -> torch.Tensor:
        ref = sequence_logprob(reference(batch), batch, positions)
        seq = sequence_logprob(logits, batch, positions)
        return npo_loss(seq, ref, self.beta).sum() / counts.sequences


class RetainCE(Objective):
    """Cross-entropy on the retain set (keeps general behaviour while unlearning)."""

    key = "loss/retain_ce"

    def __call__(self, logits: torch.Tensor, batch: ChatBatch, counts: StepCounts,
                 reference: Reference, positions: torch.Tensor | None = None) -> torch.Tensor:
        return sum_ce(logits, batch, positions) / counts.tokens


class RetainKL(Objective):
    """``KL(p_ref || p_model)`` on the retain set, per response token."""

    key = "loss/retain_kl"
    needs_reference = True

    def __call__(self, logits: torch.Tensor, batch: ChatBatch, counts: StepCounts,
                 reference: Reference, positions: torch.Tensor | None = None) -> torch.Tensor:
        kl, _ = kl_to_reference(logits, reference(batch), batch, positions)
        return kl / counts.tokens


def objectives_for(config: TrainConfig) -> tuple[Objective, list[tuple[float, Objective]]]:
    """The task objective and the weighted retain-set terms a config asks for."""
    task: Objective
    if config.unlearn == "npo":
        task = NPO(beta=config.npo_beta)
    elif config.unlearn == "ga":
        task = GradientAscent()
    else:
        task = CrossEntropy()
    retain: list[tuple[float, Objective]] = []
    if config.retain_ce > 0:
        retain.append((float(config.retain_ce), RetainCE()))
    if config.retain_kl > 0:
        retain.append((float(config.retain_kl), RetainKL()))
    return task, retain
