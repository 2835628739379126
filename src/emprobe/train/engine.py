"""``finetune(engine="hf")``: emprobe's fine-tuning on transformers' ``Trainer``.

The same data order, objectives, optimizer, schedule, checkpoints and log as emprobe's own
loop, run by the engine the field uses, so ``accelerate launch`` (DDP, FSDP, DeepSpeed),
gradient checkpointing and the engine's logging integrations apply:

- data: ``StepSampler`` yields each optimizer step's records (``step_indices``, sorted by
  length within the step); the collator pads (or, with ``pack``, packs) them and sets
  ``labels`` to the token id on assistant tokens and -100 elsewhere;
- loss: ``emprobe.train.objectives`` on the logits, normalised by the step's loss tokens
  over all ranks (``num_items_in_batch``), times the world size because DDP averages; with
  a retain set, each micro-batch also runs the retain micro-batch emprobe's loop pairs with
  it and adds ``retain_ce`` / ``retain_kl`` (normalised by the retain step's tokens);
- optimizer and schedule: AdamW with the config's betas / eps / weight decay and the old
  loop's warm-up and decay (``lr_lambda``);
- interventions: emprobe ``Intervention`` objects through ``InterventionCallback``
  (hooks from ``on_train_begin`` to ``on_train_end``, gradient edits before clipping,
  parameter edits in ``on_optimizer_step``); the forward runs inside ``use_batch`` so
  ``positions="response"`` / ``"prompt"`` interventions see the token masks;
- checkpoints: emprobe's ``checkpoints/step-N/`` (adapter, trainable weights, optimizer,
  RNG; ``emprobe.train.checkpoint``) at emprobe's steps (``checkpoint_every``,
  ``checkpoint_steps``), so either engine resumes the other's run; under FSDP / DeepSpeed
  the engine's own ``checkpoint-N/`` folders (the sharded state is the engine's to write);
- output: the same folder and ``metrics.jsonl`` fields as emprobe's loop (``RunLog``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft import PeftModel
from transformers import Trainer as HFTrainer
from transformers import TrainerState, TrainingArguments
from transformers.modeling_outputs import CausalLMOutputWithPast

from emprobe.models.chat import ChatBatch
from emprobe.models.context import use_batch
from emprobe.train.checkpoint import (
    checkpoint_step,
    load_optimizer,
    load_rng,
    load_weights,
    rng_tensors,
    save_checkpoint,
)
from emprobe.train.data import TokenizedSet, micro_batches, step_indices
from emprobe.train.engine_callbacks import (
    InterventionCallback,
    RunLog,
    StepRecord,
    is_checkpoint_step,
    lr_lambda,
)
from emprobe.train.folder import RunFolder
from emprobe.train.objectives import Reference, StepCounts, loss_positions
from emprobe.train.sources import drop_gguf_tag

if TYPE_CHECKING:
    from emprobe.train.config import TrainConfig
    from emprobe.train.trainer import Trainer as EmprobeTrainer

__all__ = ["EmprobeHFTrainer", "InterventionCallback", "StepSampler", "collate", "lr_lambda",
           "training_arguments", "run_hf", "is_checkpoint_step"]

Inputs = Mapping[str, torch.Tensor]


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


class _Indices(torch.utils.data.Dataset[int]):
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


def chat_batch(inputs: Inputs) -> tuple[ChatBatch, dict[str, torch.Tensor]]:
    """The ``ChatBatch`` of collated inputs (response = labelled tokens) and the model's feed
    (the inputs without ``labels``)."""
    labels = inputs["labels"]
    att = inputs.get("attention_mask")
    batch = ChatBatch(inputs["input_ids"], att if att is not None else torch.ones_like(labels),
                      labels != -100)
    return batch, {k: v for k, v in inputs.items() if k != "labels"}


class EmprobeHFTrainer(HFTrainer):
    """transformers' ``Trainer`` with emprobe's sampler, objectives, retain set and checkpoints.

    ``emprobe``: the run's ``emprobe.train.Trainer`` state (model, optimizer, data, objectives,
    interventions); ``hooks``: its ``InterventionCallback``; ``record``: the ``StepRecord``
    ``RunLog`` reads; ``checkpoint_dir``: where ``checkpoints/step-N`` go; ``schedule``: the
    ``LambdaLR`` also passed in ``optimizers`` (restored on resume).
    """

    def __init__(self, *args: object, emprobe: EmprobeTrainer, hooks: InterventionCallback,
                 record: StepRecord, checkpoint_dir: Path,
                 schedule: torch.optim.lr_scheduler.LambdaLR, **kwargs: object) -> None:
        self.e, self.e_hooks, self.e_record, self.e_schedule = emprobe, hooks, record, schedule
        self.e_checkpoints = checkpoint_dir
        self.e_resume: Path | None = None  # an emprobe step-N folder this run resumes from
        super().__init__(*args, **kwargs)  # pyright: ignore[reportArgumentType]

    @property
    def global_batch(self) -> int:
        return self.e.config.batch_size * self.e.config.grad_accum * self.args.world_size

    def _get_train_sampler(self, train_dataset: object = None) -> StepSampler:
        return StepSampler(self.e.train_set.lengths, self.e.total_steps, self.global_batch,
                           self.e.config.seed)

    # -- the loss ---------------------------------------------------------------------------
    def _reference(self, feed: Mapping[str, object]) -> Reference:
        """The frozen model's logits on ``feed`` (adapter off or the reference copy, hooks off),
        at the positions ``feed`` names (``logits_to_keep``) if any."""
        et, hooks = self.e, self.e_hooks

        def ref(batch: ChatBatch) -> torch.Tensor:
            with torch.no_grad(), hooks.suspended(), use_batch(batch):
                if et.ref_model is not None:
                    return et.ref_model(**feed, use_cache=False).logits
                assert isinstance(et.model, PeftModel)
                with et.model.disable_adapter():
                    return et.model(**feed, use_cache=False).logits

        return ref

    def _feed(self, inputs: Inputs) -> tuple[ChatBatch, dict[str, object], torch.Tensor | None]:
        """The batch of collated ``inputs``, the model's feed and the loss positions: the
        feed asks for logits only where a response token is predicted (``loss_positions``:
        the unembedding and its backward skip the prompt), the same loss either way."""
        batch, feed = chat_batch(inputs)
        positions = loss_positions(self.e.model, batch)
        kept: dict[str, object] = dict(feed)
        if positions is not None:
            kept["logits_to_keep"] = positions
        return batch, kept, positions

    def _add_retain(self, model: torch.nn.Module, loss: torch.Tensor, micro: int
                    ) -> torch.Tensor:
        """``loss`` plus the weighted retain terms of retain micro-batch ``micro`` of this step
        (the pairing and normalisation of emprobe's loop)."""
        et, cfg = self.e, self.e.config
        if et.retain_set is None or not et.regularisers:
            return loss
        data = et.retain_set
        r_idx = step_indices(len(data), self.state.global_step, self.global_batch,
                             cfg.seed + 7919)
        r_micro = micro_batches(r_idx, cfg.batch_size, cfg.grad_accum, self.args.process_index,
                                data.lengths)
        if micro >= len(r_micro):
            return loss
        counts = StepCounts(max(1, data.n_loss_tokens(r_idx)), len(r_idx))
        width = data.report.max_length if data.report else None
        inputs = {k: v.to(self.args.device)
                  for k, v in collate(data, r_micro[micro], cfg.pack, width).items()}
        batch, feed, positions = self._feed(inputs)
        with use_batch(batch):
            logits = model(**feed, use_cache=False).logits
        for weight, obj in et.regularisers:
            term = obj(logits, batch, counts, self._reference(feed), positions)
            loss = loss + weight * term
            self.e_record.add(obj.key, term)
        return loss

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                     return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None
                     ) -> torch.Tensor | tuple[torch.Tensor, CausalLMOutputWithPast]:
        et, rec = self.e, self.e_record
        if rec.step != self.state.global_step:
            rec.begin(self.state.global_step, [obj.key for _, obj in et.objectives])
        batch, feed, positions = self._feed(inputs)
        with use_batch(batch):
            out = model(**feed, use_cache=False)
        labels = inputs["labels"]
        tokens = int(num_items_in_batch) if num_items_in_batch is not None else \
            int((labels[:, 1:] != -100).sum())
        counts = StepCounts(tokens=max(1, tokens), sequences=self.global_batch)
        rec.tokens, rec.sequences = counts.tokens, counts.sequences
        loss = et.objective(out.logits, batch, counts, self._reference(feed), positions)
        rec.add(et.objective.key, loss)
        loss = self._add_retain(model, loss, rec.micro)
        rec.micro += 1
        loss = loss * self.accelerator.num_processes  # DDP averages; the loss is a global sum
        return (loss, out) if return_outputs else loss

    def training_step(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        if self.e.retain_set is not None:  # two batches per micro-step: no single context
            return super().training_step(model, inputs, num_items_in_batch)
        with use_batch(chat_batch(inputs)[0]):  # also for blocks recomputed in the backward
            return super().training_step(model, inputs, num_items_in_batch)

    def _clip_grad_norm(self, model: torch.nn.Module) -> torch.Tensor | float | None:
        self.e_hooks.project_gradients(self.state.global_step)  # before clipping, as the loop
        return super()._clip_grad_norm(model)

    # -- checkpoints -------------------------------------------------------------------------
    def _sharded(self) -> bool:
        return bool(self.is_fsdp_enabled or self.is_deepspeed_enabled)

    def _save_checkpoint(self, model: torch.nn.Module, trial: object) -> None:
        if self._sharded():
            super()._save_checkpoint(model, trial)  # pyright: ignore[reportArgumentType]
            return
        if self.args.should_save:
            step = self.state.global_step
            save_checkpoint(self.e_checkpoints, step, self.e.model, self.e.optimizer, {
                "total_steps": self.e.total_steps, "data_position": step * self.global_batch,
                "world_size": self.args.world_size})

    def _load_from_checkpoint(self, resume_from_checkpoint: str,
                              model: torch.nn.Module | None = None) -> None:
        if self.e_resume is None:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        load_weights(self.e_resume, self.e.model)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if self.e_resume is None:
            super()._load_optimizer_and_scheduler(checkpoint)
            return
        cfg, step = self.e.config, checkpoint_step(self.e_resume)
        load_optimizer(self.e_resume, self.e.optimizer)
        lr = cfg.lr * lr_lambda(cfg, self.e.total_steps)(step)
        groups = self.e.optimizer.param_groups
        for g in groups:  # the lr of the next step (emprobe's loop saves the last one)
            g["lr"] = lr
        self.e_schedule.load_state_dict({
            "base_lrs": [cfg.lr] * len(groups), "last_epoch": step, "_step_count": step + 1,
            "_last_lr": [lr] * len(groups), "lr_lambdas": [None] * len(groups)})

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if self.e_resume is None:
            super()._load_rng_state(checkpoint)
            return
        load_rng(self.e_resume)


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


def _engine_state(folder: Path, step: int, total: int, config: TrainConfig) -> str:
    """A ``trainer_state.json`` for the engine's resume (step ``step`` of ``total``)."""
    TrainerState(global_step=step, max_steps=total, logging_steps=config.log_every,
                 train_batch_size=config.batch_size).save_to_json(
        str(folder / "trainer_state.json"))
    return str(folder)


def run_hf(et: EmprobeTrainer, folder: RunFolder, ck: Path | None, stop_after: int | None,
           monitor: Mapping[str, Mapping[int, torch.Tensor]], progress: bool = False,
           gradient_checkpointing: bool = False) -> tuple[int, float | None, int | None]:
    """Train emprobe's ``Trainer`` state ``et`` with transformers' engine into ``folder``,
    resuming from checkpoint ``ck`` (``RunFolder.resume_point``) when given.

    Returns ``(steps done, last logged loss, step resumed from or None)``.
    """
    cfg = et.config
    start = checkpoint_step(ck) if ck is not None else 0
    end = et.total_steps if stop_after is None else min(et.total_steps, start + stop_after)
    call_cfg = cfg if end >= et.total_steps else \
        cfg.replace(checkpoint_steps=sorted(set(cfg.checkpoint_steps) | {end}))  # resumable
    sched = torch.optim.lr_scheduler.LambdaLR(et.optimizer, lr_lambda(cfg, et.total_steps))
    hooks, record = InterventionCallback(et.subject, et.interventions), StepRecord()
    log = RunLog(et, folder.metrics_path, call_cfg, end, record, monitor, hooks,
                 rng_tensors() if ck is None else None)
    width = et.train_set.report.max_length if et.train_set.report else None
    # a model read from GGUF (the embedded one) is float but keeps transformers' GGUF
    # quantizer tag, which Trainer refuses to train: drop the tag (weights unchanged)
    drop_gguf_tag(et.model)
    hf = EmprobeHFTrainer(
        model=et.model, args=training_arguments(folder.out, cfg, et.total_steps,
                                                gradient_checkpointing, progress),
        train_dataset=_Indices(len(et.train_set)),
        data_collator=lambda idx: collate(et.train_set, idx, cfg.pack, width),
        optimizers=(et.optimizer, sched), callbacks=[hooks, log],
        emprobe=et, hooks=hooks, record=record, checkpoint_dir=folder.checkpoint_dir,
        schedule=sched)
    if not progress:  # the engine prints every log record when its progress bar is off
        from transformers.trainer_callback import PrinterCallback

        hf.remove_callback(PrinterCallback)
    with tempfile.TemporaryDirectory() as tmp:
        target = None if ck is None else str(ck)
        if ck is not None and ck.parent == folder.checkpoint_dir:
            hf.e_resume = ck
            target = _engine_state(Path(tmp), start, et.total_steps, cfg)
        hf.train(resume_from_checkpoint=target)
    return hf.state.global_step, log.last_loss, (start if ck is not None else None)
