"""``finetune(..., engine="hf")``: emprobe's fine-tuning on transformers' ``Trainer``.

The same data order, objective, optimizer and schedule as emprobe's own loop, run by the
engine the field uses, so ``accelerate launch`` (DDP, FSDP, DeepSpeed), gradient
checkpointing and the engine's logging integrations apply:

- data: ``StepSampler`` yields each optimizer step's records (``step_indices``, sorted by
  length within the step); the collator pads (or, with ``pack``, packs) them and sets
  ``labels`` to the token id on assistant tokens and -100 elsewhere;
- loss: ``emprobe.train.objectives`` on the logits, normalised by the step's loss tokens
  over all ranks (``num_items_in_batch``), times the world size because DDP averages;
- optimizer and schedule: AdamW with the config's betas / eps / weight decay and the old
  loop's warm-up and decay (``lr_lambda``);
- interventions: emprobe ``Intervention`` objects through ``InterventionCallback``
  (hooks from ``on_train_begin`` to ``on_train_end``, gradient edits in
  ``on_pre_optimizer_step``, parameter edits in ``on_optimizer_step``);
- output: the same folder (``adapter/``, ``train_config.json``, ``run.json``,
  ``metrics.jsonl``, ``result.json``) with the engine's ``checkpoint-N/`` folders for
  checkpoints and resume.

Not supported here (use the default engine): retain sets (``retain_ce`` / ``retain_kl``).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import Trainer as HFTrainer
from transformers import TrainerCallback, TrainingArguments

from emprobe.io import append_jsonl, write_jsonl
from emprobe.models.chat import ChatBatch
from emprobe.train import monitor as mon
from emprobe.train.config import TrainConfig
from emprobe.train.data import TokenizedSet, step_indices
from emprobe.train.interventions import Intervention
from emprobe.train.objectives import Objective, StepCounts

if TYPE_CHECKING:
    from emprobe.models.subject import Subject

__all__ = ["EmprobeHFTrainer", "InterventionCallback", "StepSampler", "collate", "lr_lambda",
           "training_arguments", "latest_hf_checkpoint", "run_hf"]


class StepSampler(torch.utils.data.Sampler[int]):
    """Record indices in training order: step ``s`` is ``step_indices(n, s, G, seed)``, sorted
    by length (stable) so consecutive micro-batches pad to similar widths."""

    def __init__(self, lengths: Sequence[int], steps: int, global_batch: int, seed: int) -> None:
        self.lengths, self.steps, self.g, self.seed = list(lengths), steps, global_batch, seed

    def __iter__(self) -> Iterator[int]:
        for s in range(self.steps):
            idx = step_indices(len(self.lengths), s, self.g, self.seed)
            yield from sorted(idx, key=lambda i: self.lengths[i])

    def __len__(self) -> int:
        return self.steps * self.g


class _Indices(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def collate(data: TokenizedSet, indices: Sequence[int], pack: bool = False,
            width: int | None = None) -> dict[str, torch.Tensor]:
    """Model inputs of some records: ``input_ids``, ``labels`` (-100 off the response) and
    ``attention_mask`` (padded) or ``position_ids`` (packed, restarting per record)."""
    idx = [int(i) for i in indices]
    if pack:
        batch, pos = data.packed_batch(idx, width=width)
        out = {"input_ids": batch.input_ids, "position_ids": pos}
    else:
        batch = data.batch(idx)
        out = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    out["labels"] = torch.where(batch.response_mask, batch.input_ids,
                                torch.full_like(batch.input_ids, -100))
    return out


def lr_lambda(config: TrainConfig, total_steps: int) -> Any:
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


class InterventionCallback(TrainerCallback):
    """emprobe ``Intervention`` objects run by a transformers ``Trainer``."""

    def __init__(self, subject: Subject, interventions: Sequence[Intervention]) -> None:
        self.subject, self.interventions = subject, list(interventions)
        self._checks: contextlib.ExitStack | None = None
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

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        from emprobe.train.callbacks import per_rank

        if logs is not None and self._checks is not None and "loss" in logs:
            vals = per_rank(self.max_rel_proj if self.max_rel_proj is not None else -1.0)
            logs.update({f"caft/max_rel_proj/rank{r}": v for r, v in enumerate(vals) if v >= 0})
            self.max_rel_proj = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from emprobe.train.callbacks import refuse_sharded

        if any(iv.needs_lora and not iv.edits_activations for iv in self.interventions):
            refuse_sharded("GRASP", args)
        self._attach()
        if state.global_step == 0:
            for iv in self.interventions:  # start inside any constrained subspace
                iv.after_step(self.subject.model)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for iv in self.interventions:
            iv.after_backward(self.subject.model)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for iv in self.interventions:
            iv.after_step(self.subject.model)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._detach()

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        if self._checks is None:
            yield
            return
        self._detach()
        try:
            yield
        finally:
            self._attach()


class _RunLog(TrainerCallback):
    """``metrics.jsonl`` lines (rank 0), checkpoints at emprobe's steps, monitoring, stop."""

    def __init__(self, path: Path, config: TrainConfig, end: int, lora: bool,
                 monitor: Mapping[str, Mapping[int, torch.Tensor]], probe: Any) -> None:
        self.path, self.cfg, self.end, self.lora = path, config, end, lora
        self.monitor, self.probe = monitor, probe
        self.last_loss: float | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        done, cfg = state.global_step, self.cfg
        if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or \
                done in cfg.checkpoint_steps or (cfg.checkpoint_every and done == self.end):
            control.should_save = True
        if done % cfg.log_every == 0 or done == self.end:
            control.should_log = True
        if done >= self.end:
            control.should_training_stop = True

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               model: Any = None, **kwargs: Any) -> None:
        logs = logs or {}
        if "loss" not in logs:
            return
        self.last_loss = float(logs["loss"])
        rec: dict[str, Any] = {"step": state.global_step, "loss": float(logs["loss"]),
                               "lr": float(logs.get("learning_rate", float("nan"))),
                               "grad_norm": float(logs.get("grad_norm", float("nan")))}
        rec.update({k: v for k, v in logs.items() if "/" in k})
        if self.lora and model is not None:
            rec.update(mon.lora_norms(mon.lora_factors(model)))
        if self.monitor and self.probe is not None:
            rec.update(self.probe())
        if state.is_world_process_zero:
            append_jsonl(self.path, rec)


class EmprobeHFTrainer(HFTrainer):
    """transformers' ``Trainer`` with emprobe's sampler, collator and objective."""

    def __init__(self, *args: Any, emprobe_data: TokenizedSet, emprobe_config: TrainConfig,
                 emprobe_objective: Objective, emprobe_steps: int, emprobe_hooks: Any = None,
                 **kwargs: Any) -> None:
        self.e_data, self.e_cfg, self.e_obj = emprobe_data, emprobe_config, emprobe_objective
        self.e_steps, self.e_hooks = emprobe_steps, emprobe_hooks
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        g = self.e_cfg.batch_size * self.e_cfg.grad_accum * self.args.world_size
        return StepSampler(self.e_data.lengths, self.e_steps, g, self.e_cfg.seed)

    def _reference(self, model: Any, inputs: dict[str, Any]) -> Any:
        def ref(batch: ChatBatch) -> torch.Tensor:
            feed = {k: v for k, v in inputs.items() if k != "labels"}
            suspend = self.e_hooks.suspended() if self.e_hooks else contextlib.nullcontext()
            with torch.no_grad(), suspend, model.disable_adapter():
                return model(**feed, use_cache=False).logits

        return ref

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        labels = inputs["labels"]
        feed = {k: v for k, v in inputs.items() if k != "labels"}
        out = model(**feed, use_cache=False)
        att = inputs.get("attention_mask")
        batch = ChatBatch(inputs["input_ids"], att if att is not None
                          else torch.ones_like(labels), labels != -100)
        g = self.e_cfg.batch_size * self.e_cfg.grad_accum * self.args.world_size
        tokens = int(num_items_in_batch) if num_items_in_batch is not None else \
            int((labels[:, 1:] != -100).sum())
        counts = StepCounts(tokens=max(1, tokens), sequences=g)
        loss = self.e_obj(out.logits, batch, counts, self._reference(model, inputs))
        loss = loss * self.accelerator.num_processes  # DDP averages; the loss is a global sum
        return (loss, out) if return_outputs else loss


def training_arguments(out: Path, config: TrainConfig, total_steps: int,
                       gradient_checkpointing: bool = False, progress: bool = False
                       ) -> TrainingArguments:
    """``TrainingArguments`` matching a ``TrainConfig`` (optimizer and schedule come separately)."""
    return TrainingArguments(
        output_dir=str(out), max_steps=total_steps, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.lr,
        max_grad_norm=config.max_grad_norm or 0.0, logging_steps=config.log_every,
        save_strategy="no", report_to=[], seed=config.seed, data_seed=config.seed,
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=not progress,
        average_tokens_across_devices=True, use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=gradient_checkpointing, save_only_model=False,
        ddp_find_unused_parameters=False, bf16=False, fp16=False,
    )


def latest_hf_checkpoint(out: str | os.PathLike[str]) -> Path | None:
    """The newest complete ``checkpoint-N`` folder (``trainer_state.json`` present)."""
    best: tuple[int, Path] | None = None
    root = Path(out)
    if not root.is_dir():
        return None
    for p in root.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / "trainer_state.json").is_file():
            if best is None or int(m.group(1)) > best[0]:
                best = (int(m.group(1)), p)
    return None if best is None else best[1]


def clear_hf_checkpoints(out: Path, metrics: Path) -> None:
    """Start over: drop earlier checkpoint-N folders and metrics."""
    import shutil

    if out.is_dir():
        for p in out.iterdir():
            if re.fullmatch(r"checkpoint-\d+", p.name):
                shutil.rmtree(p, ignore_errors=True)
    if metrics.exists():
        metrics.unlink()


def trim_metrics(metrics: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from."""
    from emprobe.io import read_jsonl

    if metrics.exists():
        write_jsonl(metrics, [r for r in read_jsonl(metrics) if int(r.get("step", 0)) <= step])


def _probe(et: Any, monitor: Mapping[str, Mapping[int, torch.Tensor]],
           hooks: InterventionCallback) -> Any:
    """Projections on a fixed batch with the training hooks off (as emprobe's loop logs them)."""
    batch = et.train_set.batch(list(range(min(8, len(et.train_set)))), et.subject.device)

    def probe() -> dict[str, float]:
        was = et.model.training
        et.model.eval()
        with hooks.suspended():
            got = mon.project(et.subject, monitor, batch)
        et.model.train(was)
        return got

    return probe


def run_hf(et: Any, out: Path, resume: bool, stop_after: int | None,
           monitor: Mapping[str, Mapping[int, torch.Tensor]], progress: bool = False,
           gradient_checkpointing: bool = False) -> tuple[int, float | None, int | None]:
    """Train emprobe's ``Trainer`` state ``et`` with transformers' engine.

    Returns ``(steps done, last logged loss, step resumed from or None)``.
    """
    cfg, metrics = et.config, out / "metrics.jsonl"
    ck = latest_hf_checkpoint(out) if resume else None
    start = int(ck.name.rsplit("-", 1)[1]) if ck is not None else 0
    if et.rank == 0:
        if ck is None:
            clear_hf_checkpoints(out, metrics)
        else:
            trim_metrics(metrics, start)
    end = et.total_steps if stop_after is None else min(et.total_steps, start + stop_after)
    sched = torch.optim.lr_scheduler.LambdaLR(et.optimizer, lr_lambda(cfg, et.total_steps))
    hooks = InterventionCallback(et.subject, et.interventions)
    log = _RunLog(metrics, cfg, end, not cfg.full_finetune, monitor,
                  _probe(et, monitor, hooks) if monitor else None)
    width = et.train_set.report.max_length if et.train_set.report else None
    hf = EmprobeHFTrainer(
        model=et.model, args=training_arguments(out, cfg, et.total_steps,
                                                gradient_checkpointing, progress),
        train_dataset=_Indices(len(et.train_set)),
        data_collator=lambda idx: collate(et.train_set, idx, cfg.pack, width),
        optimizers=(et.optimizer, sched), callbacks=[hooks, log],
        emprobe_data=et.train_set, emprobe_config=cfg, emprobe_objective=et.objective,
        emprobe_steps=et.total_steps, emprobe_hooks=hooks)
    if not progress:  # the engine prints every log record when its progress bar is off
        from transformers.trainer_callback import PrinterCallback

        hf.remove_callback(PrinterCallback)
    if end < et.total_steps:  # a later call resumes from here
        cfg_steps = set(cfg.checkpoint_steps) | {end}
        log.cfg = cfg.replace(checkpoint_steps=sorted(cfg_steps))
    hf.train(resume_from_checkpoint=str(ck) if ck is not None else None)
    return hf.state.global_step, log.last_loss, (start if ck is not None else None)
