"""The callbacks ``finetune(engine="hf")`` gives transformers' ``Trainer``.

- ``InterventionCallback``: emprobe ``Intervention`` objects (hooks from ``on_train_begin`` to
  ``on_train_end``; gradient edits once per optimizer step, before clipping as in emprobe's
  loop; parameter edits in ``on_optimizer_step``), and the CAFT ablation measured inside
  every rank's forward passes;
- ``RunLog``: ``metrics.jsonl`` lines with the same fields and values as emprobe's loop
  (loss terms of the logged step, lr, grad norm, tokens, step time, LoRA norms, rotation at
  checkpoints, monitored projections), checkpoints at emprobe's steps, the stop of a
  time-sliced call, and the torch RNG of the first step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from emprobe.io import append_jsonl
from emprobe.train import monitor as mon
from emprobe.train.checkpoint import set_rng
from emprobe.train.config import TrainConfig
from emprobe.train.interventions import Intervention

if TYPE_CHECKING:
    from emprobe.models.subject import Subject
    from emprobe.train.trainer import Trainer as EmprobeTrainer

__all__ = ["InterventionCallback", "RunLog", "StepRecord", "is_checkpoint_step", "lr_lambda"]


def lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The multiplier of ``config.lr`` at optimizer step ``s`` (emprobe's schedule)."""
    def f(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.lr_schedule == "constant":
            return 1.0
        span = max(1, total_steps - config.warmup_steps)
        frac = min(1.0, (step - config.warmup_steps) / span)
        if config.lr_schedule == "linear":
            return 1.0 - frac
        return 0.5 * (1.0 + math.cos(math.pi * frac))

    return f


def is_checkpoint_step(config: TrainConfig, done: int, end: int) -> bool:
    """Whether emprobe checkpoints after ``done`` steps of a call that stops at ``end``."""
    every = config.checkpoint_every
    return (every > 0 and (done % every == 0 or done == end)) or done in config.checkpoint_steps


class InterventionCallback(TrainerCallback):
    """emprobe ``Intervention`` objects run by a transformers ``Trainer``."""

    def __init__(self, subject: Subject, interventions: Sequence[Intervention]) -> None:
        self.subject, self.interventions = subject, list(interventions)
        self._checks: contextlib.ExitStack | None = None
        self._open = False
        self._projected_step = -1
        self.max_rel_proj: float | None = None

    def _attach(self) -> None:
        from emprobe.hooks import patch
        from emprobe.train.callbacks import ablation_checker
        from emprobe.train.interventions import CAFT

        for iv in self.interventions:
            if not iv.attached:
                iv.attach(self.subject)
        if self._checks is None:  # CAFT verified in every forward pass, on every rank
            self._checks = contextlib.ExitStack()
            for iv in self.interventions:
                if isinstance(iv, CAFT) and iv.positions == "all":
                    means = iv.means if iv.mode == "mean" else None
                    self._checks.enter_context(patch(self.subject, iv.site, {
                        la: ablation_checker(q, (means or {}).get(la), self._seen)
                        for la, q in iv.bases.items()}))

    def _detach(self) -> None:
        if self._checks is not None:
            self._checks.close()
            self._checks = None
        for iv in self.interventions:
            iv.detach()

    def _seen(self, value: float) -> None:
        self.max_rel_proj = max(self.max_rel_proj or 0.0, value)

    def project_gradients(self, step: int) -> None:
        """Each intervention's gradient edit, once per optimizer step (GRASP's projection)."""
        if step == self._projected_step:
            return
        self._projected_step = step
        for iv in self.interventions:
            iv.after_backward(self.subject.model)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: object) -> None:
        from emprobe.train.callbacks import per_rank

        if logs is not None and self._checks is not None and "loss" in logs:
            vals = per_rank(self.max_rel_proj if self.max_rel_proj is not None else -1.0)
            logs.update({f"caft/max_rel_proj/rank{r}": v for r, v in enumerate(vals) if v >= 0})
            self.max_rel_proj = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: object) -> None:
        from emprobe.train.callbacks import refuse_sharded

        if any(iv.needs_lora and not iv.edits_activations for iv in self.interventions):
            refuse_sharded("GRASP", args)
        self._attach()
        self._open = True
        if state.global_step == 0:
            for iv in self.interventions:  # start inside any constrained subspace
                iv.after_step(self.subject.model)

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState,
                              control: TrainerControl, **kwargs: object) -> None:
        self.project_gradients(state.global_step)  # no-op when clipping already ran it

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState,
                          control: TrainerControl, **kwargs: object) -> None:
        for iv in self.interventions:
            iv.after_step(self.subject.model)

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: object) -> None:
        self._detach()
        self._open = False

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Every hook off (reference model, monitoring), back on afterwards."""
        if not self._open:
            yield
            return
        self._detach()
        try:
            yield
        finally:
            self._attach()


@dataclass
class StepRecord:
    """One optimizer step's loss terms on this rank, filled by the engine's ``compute_loss``.

    ``terms``: ``{objective key: summed share}`` (each share is normalised by the whole
    step's counts, so the sum over micro-batches and ranks is the step's term); ``shown``:
    the keys logged; ``tokens`` / ``sequences``: the step's global counts.
    """

    step: int = -1
    micro: int = 0
    terms: dict[str, float] = field(default_factory=dict)
    shown: list[str] = field(default_factory=list)
    tokens: int = 0
    sequences: int = 0

    def begin(self, step: int, keys: Sequence[str]) -> None:
        self.step, self.micro = step, 0
        self.terms = {k: 0.0 for k in keys}
        self.shown = [keys[0]]

    def add(self, key: str, value: torch.Tensor) -> None:
        self.terms[key] += float(value.detach())
        if key not in self.shown:
            self.shown.append(key)

    def global_terms(self, world: int) -> dict[str, float]:
        """The terms summed over ranks (a collective call when ``world > 1``)."""
        if world <= 1:
            return dict(self.terms)
        vec = torch.tensor(list(self.terms.values()), dtype=torch.float64)
        torch.distributed.all_reduce(vec)
        return dict(zip(self.terms, vec.tolist()))


class RunLog(TrainerCallback):
    """``metrics.jsonl`` lines (rank 0), checkpoints at emprobe's steps, monitoring, stop."""

    def __init__(self, et: EmprobeTrainer, path: Path, config: TrainConfig, end: int,
                 record: StepRecord, monitor: Mapping[str, Mapping[int, torch.Tensor]],
                 hooks: InterventionCallback, first_rng: dict[str, torch.Tensor] | None) -> None:
        self.et, self.path, self.cfg, self.end = et, path, config, end
        self.record, self.monitor, self.hooks = record, monitor, hooks
        self.first_rng = first_rng
        self.lr = lr_lambda(et.config, et.total_steps)
        self.lora = not et.config.full_finetune
        self.prev_b: dict[str, torch.Tensor] | None = None
        self.monitor_batch = et.train_set.batch(list(range(min(8, len(et.train_set)))),
                                                et.subject.device)
        self.last_loss: float | None = None
        self._t0 = 0.0
        self._step_time = float("nan")

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: object) -> None:
        if self.lora:
            self.prev_b = mon.snapshot_b(mon.lora_factors(self.et.model))

    def on_step_begin(self, args: TrainingArguments, state: TrainerState,
                      control: TrainerControl, **kwargs: object) -> None:
        if state.global_step == 0 and self.first_rng is not None:
            set_rng(self.first_rng)  # the RNG emprobe's loop starts with (dropout draws)
            self.first_rng = None
        self._t0 = time.perf_counter()

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: object) -> None:
        done = state.global_step
        self._step_time = time.perf_counter() - self._t0
        if is_checkpoint_step(self.cfg, done, self.end):
            control.should_save = True
            control.should_log = True
        if done % self.cfg.log_every == 0 or done == self.end:
            control.should_log = True
        if done >= self.end:
            control.should_training_stop = True

    def _extra(self, done: int) -> dict[str, float]:
        """LoRA norms, rotation at checkpoints, monitored projections (hooks off)."""
        extra: dict[str, float] = {}
        if self.lora:
            factors = mon.lora_factors(self.et.model)
            extra.update(mon.lora_norms(factors))
            if is_checkpoint_step(self.cfg, done, self.end) and self.prev_b is not None:
                now_b = mon.snapshot_b(factors)
                extra.update(mon.rotation(self.prev_b, now_b))
                self.prev_b = now_b
        if self.monitor:
            model = self.et.model
            was = model.training
            model.eval()
            with self.hooks.suspended():
                extra.update(mon.project(self.et.subject, self.monitor, self.monitor_batch))
            model.train(was)
        return extra

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: object) -> None:
        logs = logs if logs is not None else {}
        if "loss" not in logs:
            return
        done = state.global_step
        terms = self.record.global_terms(self.et.world)
        total = sum(w * terms[obj.key] for w, obj in self.et.objectives)
        shown = {k: terms[k] for k in self.record.shown}
        self.last_loss = total
        logs.update(shown)
        rec: dict[str, float] = {
            "step": done, "loss": total, **shown,
            "lr": self.et.config.lr * self.lr(done - 1),
            "grad_norm": float(logs.get("grad_norm", float("nan"))),
            "tokens": self.record.tokens, "sequences": self.record.sequences,
            "step_time_s": self._step_time}
        rec.update({k: v for k, v in logs.items() if "/" in k and k not in rec})
        rec.update(self._extra(done))
        if state.is_world_process_zero:
            append_jsonl(self.path, rec)

