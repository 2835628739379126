"""Loss terms on response tokens: SFT cross-entropy, gradient ascent, NPO, retain CE and KL.

Each term is an ``Objective`` that owns its math; the trainer only sums
``weight * objective(logits, batch, counts, reference)``. All take logits
``[batch, pos, vocab]`` and a ``ChatBatch``; the prediction at position ``t`` is scored
against token ``t + 1`` and counted when token ``t + 1`` is a real response token
(``emprobe.models.logprobs``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from emprobe.models.chat import ChatBatch
from emprobe.models.logprobs import response_logprobs, response_mask_shifted, sequence_logprobs

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
    "npo_loss",
    "objectives_for",
    "sequence_logprob",
    "sum_ce",
    "token_logprobs",
]

# logits of the frozen reference model (adapter disabled, training hooks off) for a batch
Reference = Callable[[ChatBatch], torch.Tensor]


def token_logprobs(logits: torch.Tensor, batch: ChatBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token ``[batch, pos-1]`` and the loss mask ``[batch, pos-1]``."""
    return response_logprobs(logits, batch)


def sum_ce(logits: torch.Tensor, batch: ChatBatch) -> torch.Tensor:
    """Summed next-token cross-entropy over response tokens (a scalar; divide by the count)."""
    logp, _ = response_logprobs(logits, batch)
    return -logp.sum()


def sequence_logprob(logits: torch.Tensor, batch: ChatBatch) -> torch.Tensor:
    """Summed log-probability of each sequence's response ``[batch]``."""
    return sequence_logprobs(logits, batch)[0]


def npo_loss(seq_logp: torch.Tensor, ref_seq_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative preference optimisation per sequence ``[batch]``:
    ``(2 / beta) * log(1 + (pi / pi_ref)^beta) = -(2 / beta) logsigmoid(-beta (log pi - log pi_ref))``.
    """
    return -(2.0 / beta) * F.logsigmoid(-beta * (seq_logp - ref_seq_logp))


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, batch: ChatBatch
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed ``KL(p_ref || p_model)`` over response positions, and the number of positions."""
    mask = response_mask_shifted(batch).to(logits.device)
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    logq = torch.log_softmax(ref_logits[:, :-1].float(), -1)
    kl = (logq.exp() * (logq - logp)).sum(-1)
    return (kl * mask).sum(), mask.sum()


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
                 reference: Reference) -> torch.Tensor:
        """This micro-batch's share of the step's loss (a scalar)."""
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        return {"name": type(self).__name__, "key": self.key}


class CrossEntropy(Objective):
    """Supervised fine-tuning: mean next-token cross-entropy over response tokens."""

    def __call__(self, logits: torch.Tensor, batch: ChatBatch, counts: StepCounts,
                 reference: Reference) -> torch.Tensor:
        return sum_ce(logits, batch) / counts.tokens


class GradientAscent(Objective):
    """Unlearning by gradient ascent: the negated cross-entropy."""

    def __call__(self, logits: torch.Tensor, batch: ChatBatch, counts: StepCounts,
                 reference: Reference) -> torch.Tensor:
        return -sum_ce(logits, batch) / counts.tokens


@dataclass
class NPO(Objective):
    """Negative preference optimisation (``npo_loss``), averaged over sequences."""

    beta: float = 0.1
    needs_reference = True

    def __call__(self, logits: torch.Tensor, batch: ChatBatch, counts: StepCounts,
                 reference: Reference) -> torch.Tensor:
        ref = sequence_logprob(reference(batch), batch)
        return npo_loss(sequence_logprob(logits, batch), ref, self.beta).sum() / counts.sequences


class RetainCE(Objective):
    """Cross-entropy on the retain set (keeps general behaviour while unlearning)."""

    key = "loss/retain_ce"

    def __call__(self, logits: torch.Tensor, batch: ChatBatch, counts: StepCounts,
                 reference: Reference) -> torch.Tensor:
        return sum_ce(logits, batch) / counts.tokens


class RetainKL(Objective):
    """``KL(p_ref || p_model)`` on the retain set, per response token."""

    key = "loss/retain_kl"
    needs_reference = True

    def __call__(self, logits: torch.Tensor, batch: ChatBatch, counts: StepCounts,
                 reference: Reference) -> torch.Tensor:
        kl, _ = kl_to_reference(logits, reference(batch), batch)
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
