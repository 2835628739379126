"""SAELens' ``SAETrainer`` with a lighter step: gradient clipping inside fused Adam.

Each step of ``sae_lens.SAETrainer`` clips the gradients to norm 1 with
``torch.nn.utils.clip_grad_norm_``, which multiplies every gradient in place by
``min(1, 1 / (norm + 1e-6))``, then runs Adam, which reads every gradient again. torch's
fused Adam takes a ``grad_scale`` and divides the gradients by it in the pass it makes
anyway, so ``EmprobeSAETrainer`` hands it ``1 / min(1, 1 / (norm + 1e-6))`` instead: the
same update up to float rounding, without a separate pass over the ~21 MiB of gradients of
a d_sae 4,608 SAE (about 2 ms of a ~30 ms step on two CPU cores).

The firing statistics (which latents fired, how often) come from the step's chosen latents
when the SAE says what they were (``SparseTopKTrainingSAE.last_fired``), else from the
dense ``feature_acts`` as SAELens counts them.

The step is SAELens' in everything else (autocast, dead-latent mask, coefficients, zeroing
the gradients, the learning-rate and coefficient schedules; ``tests/test_sae_trainer_step``
checks the weights and statistics against SAELens' own step). Whenever the optimizer is
not torch's fused Adam (``SAETrainConfig(fused_adam=False)`` or a device without the
kernel) the step is SAELens' own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from sae_lens import SAETrainer
    from sae_lens.saes.sae import TrainStepOutput

_CLASS: type[SAETrainer[Any, Any]] | None = None


def fused_adam_in_use(optimizer: torch.optim.Optimizer) -> bool:
    """True for a torch ``Adam`` running its fused kernel (the one that takes ``grad_scale``)."""
    return (type(optimizer) is torch.optim.Adam and bool(optimizer.defaults.get("fused"))
            and getattr(optimizer, "grad_scale", None) is None)


def clip_and_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
                  max_norm: float = 1.0) -> torch.Tensor:
    """``clip_grad_norm_(params, max_norm)`` then ``optimizer.step()``, with the clipping
    factor given to fused Adam as ``grad_scale`` (see module). Returns the total norm
    before clipping, as ``clip_grad_norm_`` does."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        optimizer.step()
        return torch.tensor(0.0)
    total = torch.nn.utils.get_total_norm(grads)
    factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # clip_grad_norm_'s own factor
    optimizer.grad_scale = (1.0 / factor).to(torch.float32)  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale  # type: ignore[attr-defined]
    return total


def trainer_class() -> type[SAETrainer[Any, Any]]:
    """``EmprobeSAETrainer``: a subclass of ``sae_lens.SAETrainer`` (made on first use so
    that importing emprobe does not import SAELens)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from sae_lens import SAETrainer
    from sae_lens.saes.sae import TrainStepInput

    class EmprobeSAETrainer(SAETrainer[Any, Any]):
        """SAELens' trainer whose step clips inside fused Adam (see module)."""

        def _train_step(self, sae: Any, sae_in: torch.Tensor) -> TrainStepOutput:
            if not fused_adam_in_use(self.optimizer):
                return super()._train_step(sae, sae_in)
            sae.train()
            with self.autocast_if_enabled:
                output = sae.training_forward_pass(step_input=TrainStepInput(
                    sae_in=sae_in,
                    dead_neuron_mask=self.dead_neurons,
                    coefficients=self.get_coefficients(),
                    n_training_steps=self.n_training_steps,
                    is_logging_step=self._is_logging_step(),
                ))
                with torch.no_grad():
                    self._count_firing(sae, output)
            output.loss.backward()
            clip_and_step(self.optimizer, list(sae.parameters()))
            self.optimizer.zero_grad()
            self.lr_scheduler.step()
            for scheduler in self.coefficient_schedulers.values():
                scheduler.step()
            return output

        def _count_firing(self, sae: Any, output: TrainStepOutput) -> None:
            """SAELens' statistics: steps since each latent last fired, and firing counts."""
            counts = getattr(sae, "last_fired", None)
            if counts is not None:
                did_fire, fired = counts > 0, counts
            else:  # SAELens' own counting from the dense (or sparse) activations
                firing = output.feature_acts.bool().float()
                did_fire = firing.sum(-2).bool()
                if did_fire.is_sparse:
                    did_fire = did_fire.to_dense()
                fired = firing.sum(0)
            self.n_forward_passes_since_fired += 1
            self.n_forward_passes_since_fired[did_fire] = 0
            self.act_freq_scores += fired
            self.n_frac_active_samples += self.cfg.train_batch_size_samples

    _CLASS = EmprobeSAETrainer
    return _CLASS
