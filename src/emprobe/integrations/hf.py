"""emprobe's training-time interventions inside any transformers ``Trainer`` / TRL ``SFTTrainer``.

Five lines added to an existing script::

    from emprobe.integrations.hf import CAFTCallback, SteeringCallback, PersonaMonitorCallback
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, callbacks=[
        CAFTCallback("caft_vectors/", layers=[12]),                   # ablate a subspace
        SteeringCallback("evil_response_avg_diff.pt", coeff=5.0, layers=20),  # steer
        PersonaMonitorCallback({"evil": "evil.pt"}, layers=20, every=10)])     # log projections

- ``CAFTCallback`` (forward hooks), ``SteeringCallback`` (forward hooks),
  ``PersonaMonitorCallback`` (observing hooks + log records), ``GRASPCallback`` (gradient
  projection in ``on_pre_optimizer_step``): see ``emprobe.train.callbacks``.
- ``RegularisedLossMixin``: a ``compute_loss`` mixin adding ``kl_weight * KL(base || model)``
  on the loss tokens (a callback cannot add a loss term).
- ``read_direction``: the readers behind every ``direction`` argument (Direction, ``{layer:
  tensor}``, SteeringVector, Direction folder, CAFT ``.npy`` folder, persona ``.pt``, GGUF
  control vector, ``.npz``).
- ``install(trainer, *callbacks)``: put callbacks ahead of the reporting integrations so
  wandb / TensorBoard receive their metrics.

The implementation lives in ``emprobe.train`` so that ``emprobe train`` uses the same objects.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from emprobe.train.callbacks import (
    CAFTCallback,
    GRASPCallback,
    HookCallback,
    PersonaMonitorCallback,
    SteeringCallback,
    install,
)
from emprobe.train.objectives import masked_kl
from emprobe.train.sources import read_direction, subject_for_model, unwrap_model

__all__ = [
    "CAFTCallback",
    "GRASPCallback",
    "HookCallback",
    "PersonaMonitorCallback",
    "RegularisedLossMixin",
    "SteeringCallback",
    "install",
    "kl_on_labels",
    "read_direction",
    "subject_for_model",
]


def kl_on_labels(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed ``KL(p_ref || p_model)`` over next-token positions whose label is not -100.

    ``logits``, ``ref_logits``: ``[batch, pos, vocab]``; ``labels``: ``[batch, pos]`` aligned
    with the inputs (position ``t`` predicts ``labels[t + 1]``). Returns (sum, count).
    """
    mask = (labels[:, 1:] != -100).to(logits.device)
    return masked_kl(logits[:, :-1], ref_logits[:, :-1], mask)


class RegularisedLossMixin:
    """``class MyTrainer(RegularisedLossMixin, SFTTrainer)``; ``MyTrainer(..., kl_weight=0.1)``.

    Adds ``kl_weight * KL(p_base || p_model)`` summed over the loss tokens and normalised like
    the trainer's cross-entropy (by ``num_items_in_batch``, the loss tokens of the whole
    optimizer step). The base model is the same network with its PEFT adapter disabled and
    emprobe's hook callbacks suspended; full fine-tuning needs ``ref_model=`` (a frozen copy).
    Logged as ``kl`` in the trainer's log records.
    """

    def __init__(self, *args: Any, kl_weight: float = 0.0, ref_model: torch.nn.Module | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kl_weight = float(kl_weight)
        self.ref_model = ref_model
        self._kl_sum = 0.0
        self._kl_n = 0

    @contextlib.contextmanager
    def _hooks_off(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for cb in self.callback_handler.callbacks:  # pyright: ignore[reportAttributeAccessIssue]
                if isinstance(cb, HookCallback):  # monitors too: the reference is not trained
                    stack.enter_context(cb.suspended())
            yield

    @torch.no_grad()
    def _reference_logits(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        feed = {k: v for k, v in inputs.items() if k != "labels"}
        with self._hooks_off():
            if self.ref_model is not None:
                return self.ref_model(**feed).logits
            inner = unwrap_model(model)
            with inner.disable_adapter():
                return model(**feed).logits

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        loss, outputs = super().compute_loss(  # pyright: ignore[reportAttributeAccessIssue]
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self.kl_weight > 0 and "labels" in inputs:
            ref = self._reference_logits(model, inputs)
            kl_sum, count = kl_on_labels(outputs.logits, ref, inputs["labels"])
            args = self.args  # pyright: ignore[reportAttributeAccessIssue]
            if num_items_in_batch is not None:
                kl = kl_sum / num_items_in_batch
                if getattr(args, "average_tokens_across_devices", False):
                    kl = kl * self.accelerator.num_processes  # pyright: ignore[reportAttributeAccessIssue]
            else:
                kl = kl_sum / count.clamp_min(1)
            loss = loss + self.kl_weight * kl.to(loss.dtype)
            self._kl_sum += float(kl_sum.detach()) / max(int(count), 1)
            self._kl_n += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.kl_weight > 0 and self._kl_n:
            logs["kl"] = self._kl_sum / self._kl_n  # mean per-token KL over micro-batches
            self._kl_sum, self._kl_n = 0.0, 0
        super().log(logs, *args, **kwargs)  # pyright: ignore[reportAttributeAccessIssue]
