"""``finetune``: LoRA or full fine-tuning on chat records, with training-time interventions.

Output folder (``out_dir``)::

    adapter/            PEFT adapter (LoRA runs): PeftModel.from_pretrained / load_model(adapter=)
    model/              full model + tokenizer (full fine-tuning runs, instead of adapter/)
    train_config.json   the TrainConfig (TrainConfig.load reads it back)
    run.json            model spec, data counts, interventions, world size, emprobe version
    metrics.jsonl       one line per logged step (loss terms, lr, step time, tokens, monitoring)
    checkpoints/step-000010/ ...   resumable checkpoints (see emprobe.train.checkpoint)
    result.json         summary written when the run ends

Engines: ``engine="hf"`` (default) runs the data order, objectives (retain sets included),
schedule, checkpoints (``checkpoints/step-N/``) and log on transformers' ``Trainer``
(``emprobe.train.engine``); ``engine="emprobe"`` runs the same on the loop in this module
(deprecated, kept for one release). Each resumes the other's checkpoints.

Data parallelism: under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE > 1``) the model is
wrapped for DDP by accelerate (gloo on CPU, nccl on GPU); each optimizer step's
global batch is split across ranks, and the loss is normalised by the global batch's token
count, so a data-parallel run computes the same update as one process with the same global
batch (up to float summation order).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from emprobe._version import __version__
from emprobe.data.chat_io import ChatLike
from emprobe.errors import ConfigError, DataError, SiteError
from emprobe.io import read_jsonl
from emprobe.models.chat import ChatBatch
from emprobe.models.context import use_batch
from emprobe.train import monitor as mon
from emprobe.train.config import SEVEN_PROJECTIONS, TrainConfig
from emprobe.train.data import (
    TokenizedSet,
    apply_inoculation,
    check_packing,
    conversations,
    micro_batches,
    step_indices,
    tokenize,
)
from emprobe.train.folder import RunFolder
from emprobe.train.interventions import Intervention
from emprobe.train.objectives import Objective, StepCounts, loss_positions, objectives_for

if TYPE_CHECKING:
    from emprobe.models.chat import Conversation
    from emprobe.models.subject import Subject

__all__ = ["RunFolder", "TrainResult", "finetune", "Trainer", "linear_module_names",
           "validate_setup"]

@dataclass
class TrainResult:
    """What a run produced. ``adapter_dir`` is ``out_dir/adapter`` (LoRA) or ``out_dir/model``."""

    out_dir: Path
    adapter_dir: Path
    metrics_path: Path
    config: TrainConfig
    steps: int
    final_loss: float | None
    checkpoints: list[Path] = field(default_factory=list)
    resumed_from: int | None = None
    train_time_s: float = 0.0
    finished: bool = True
    subject: Subject | None = None
    rank: int = 0

    def metrics(self) -> list[dict[str, object]]:
        return read_jsonl(self.metrics_path)

    def to_record(self) -> dict[str, object]:
        return {"out_dir": str(self.out_dir), "adapter_dir": str(self.adapter_dir),
                "metrics_path": str(self.metrics_path), "steps": self.steps,
                "final_loss": self.final_loss, "checkpoints": [str(c) for c in self.checkpoints],
                "resumed_from": self.resumed_from, "train_time_s": self.train_time_s,
                "finished": self.finished, "config": self.config.to_dict()}


# -- validation -------------------------------------------------------------------------------

def linear_module_names(subject: Subject) -> list[str]:
    """Leaf names of the linear layers inside the decoder blocks (``q_proj``, ``c_attn``...)."""
    names = set()
    for blk in subject.layers.blocks:
        for name, mod in blk.named_modules():
            if isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D":
                names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def lora_targets(subject: Subject, targets: Sequence[str]) -> list[str]:
    """LoRA target modules for ``subject``: the default seven projections resolve to the
    family's own linear modules where the blocks lack them (GPT-2, Phi, GPT-NeoX, ...);
    an explicit list is used as given (and checked by ``validate_setup``)."""
    if list(targets) != list(SEVEN_PROJECTIONS):
        return list(targets)
    from emprobe.models.targets import lora_target_modules

    return lora_target_modules(subject.model, None, subject.layers)


def validate_setup(subject: Subject, config: TrainConfig,
                   interventions: Sequence[Intervention] = ()) -> None:
    """Every check that can fail before training: config values, module names, layers, widths."""
    config.check()
    if hasattr(subject.model, "peft_config"):
        raise DataError("the subject already carries a PEFT adapter: train from a base model "
                        "(or load it with merge_adapter=True)")
    if not config.full_finetune:
        have = linear_module_names(subject)
        targets = lora_targets(subject, config.target_modules)
        if targets != ["all-linear"]:
            unknown = [t for t in targets if t not in have]
            if unknown:
                raise DataError(f"target_modules {unknown} not found in {subject.name}; its "
                                f"linear modules are {have}")
        for la in config.layers_to_transform or []:
            try:
                subject.layers.check_layer(la)
            except SiteError as exc:
                raise SiteError(f"layers_to_transform: {exc}") from None
            if la < 0:
                raise SiteError(f"layers_to_transform: use non-negative layers, got {la}")
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise DataError(f"interventions: {type(iv).__name__} is not an emprobe Intervention")
        if iv.needs_lora and config.full_finetune:
            raise DataError(f"{type(iv).__name__} edits LoRA factors: it cannot be used with "
                            "full fine-tuning")
        iv.validate(subject)


# -- distributed --------------------------------------------------------------------------

def _dist_setup(device: torch.device) -> tuple[int, int]:
    """``(rank, world_size)``; initialises the process group under torchrun / accelerate."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not torch.distributed.is_available():
        return 0, 1
    dist = torch.distributed
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


# -- the trainer ----------------------------------------------------------------------------

class Trainer:
    """One fine-tuning run's state: the (PEFT) model, optimizer, data, objectives, interventions.

    Args:
        subject: the ``Subject`` to train (its ``.model`` becomes the trainable model).
        train: chat records (``{"messages": [...]}`` or conversations), or a tokenised set.
        config: the ``TrainConfig`` (its objectives come from ``objectives_for``).
        interventions: ``Intervention`` objects (protocol in ``emprobe.train.interventions``).
        retain: retain-set records (or a tokenised set) for ``retain_ce`` / ``retain_kl``.
        rank, world: data-parallel position (``finetune`` sets them under torchrun).
        data_parallel: with ``world > 1``, wrap the model for data parallelism (accelerate's
            DDP); ``False`` when another engine does it (``engine="hf"``).

    ``finetune`` drives it; ``run_step(step)`` performs one optimizer step and returns its
    metrics (used by the benchmarks to time steps).
    """

    def __init__(self, subject: Subject, train: TokenizedSet | Sequence[ChatLike],
                 config: TrainConfig,
                 interventions: Sequence[Intervention] = (),
                 retain: TokenizedSet | Sequence[ChatLike] | None = None,
                 rank: int = 0, world: int = 1, data_parallel: bool = True) -> None:
        self.subject = subject
        self.train_set = self._tokenized(train, config, "training data")
        self.retain_set = None if retain is None else self._tokenized(retain, config,
                                                                      "retain data")
        self.config = config
        self.interventions = list(interventions)
        self.objective, self.regularisers = objectives_for(config)
        self.rank, self.world = rank, world
        self.global_batch = config.batch_size * config.grad_accum * world
        n = len(self.train_set)
        self.total_steps = config.max_steps or max(
            1, math.ceil(config.epochs * n / self.global_batch))
        self.ref_model: torch.nn.Module | None = None
        self._wrap()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=config.lr, betas=config.adam_betas, eps=config.adam_eps,
            weight_decay=config.weight_decay)
        self.fwd_model: torch.nn.Module = self.model
        if world > 1 and data_parallel:  # DDP through accelerate (gloo on CPU, nccl on GPU)
            from accelerate import Accelerator

            acc = Accelerator(cpu=subject.device.type == "cpu")
            self.fwd_model = acc.prepare_model(self.model)
            if self.fwd_model is self.model:
                raise DataError(f"WORLD_SIZE={world} but accelerate set up no data parallelism "
                                f"({acc.state.distributed_type})")

    def _tokenized(self, data: TokenizedSet | Sequence[ChatLike], config: TrainConfig,
                   what: str) -> TokenizedSet:
        if isinstance(data, TokenizedSet):
            return data
        return tokenize(self.subject, list(data), config.max_length, what,
                        cap=config.max_length_cap)

    @property
    def objectives(self) -> list[tuple[float, Objective]]:
        """``[(1, task objective), (weight, retain term), ...]``."""
        return [(1.0, self.objective), *self.regularisers]

    # model preparation
    def _wrap(self) -> None:
        cfg, subject = self.config, self.subject
        needs_ref = any(obj.needs_reference for _, obj in self.objectives)
        torch.manual_seed(cfg.seed)
        if cfg.full_finetune:
            if needs_ref:
                self.ref_model = copy.deepcopy(subject.model).eval().requires_grad_(False)
            for p in subject.model.parameters():
                p.requires_grad_(True)
            self.model = subject.model
        else:
            from peft import LoraConfig, get_peft_model

            targets: list[str] | str = lora_targets(subject, cfg.target_modules)
            if targets == ["all-linear"]:
                targets = "all-linear"
            lcfg = LoraConfig(
                r=cfg.lora_r, lora_alpha=cfg.lora_alpha,  # pyright: ignore[reportArgumentType]
                use_rslora=cfg.use_rslora,
                lora_dropout=cfg.lora_dropout, target_modules=targets, bias="none",
                layers_to_transform=cfg.layers_to_transform,
                layers_pattern=(subject.layers.blocks_path.rsplit(".", 1)[-1]
                                if cfg.layers_to_transform is not None else None),
                task_type="CAUSAL_LM",
            )
            with warnings.catch_warnings():  # a deprecation notice from inside peft/transformers
                warnings.simplefilter("ignore", FutureWarning)
                self.model = get_peft_model(subject.model, lcfg)
            # the spec, not a cache path, so the adapter folder works on another machine
            self.model.peft_config["default"].base_model_name_or_path = str(subject.name)
            subject.model = self.model
        self.model.train()
        torch.manual_seed(cfg.seed + 1)

    def unwrap(self) -> None:
        """Undo the PEFT wrapping (restore the subject's base model without LoRA layers)."""
        if not self.config.full_finetune and self.subject.model is self.model:
            self.subject.model = self.model.unload()
        self.subject.model.eval()

    # interventions
    def prepare(self, data: Sequence[Conversation]) -> None:
        """``prepare`` every intervention on the trainable model (still equal to the base)."""
        for iv in self.interventions:
            iv.prepare(self.subject, data)

    def attach(self) -> None:
        for iv in self.interventions:
            if not iv.attached:
                iv.attach(self.subject)

    def detach(self) -> None:
        for iv in self.interventions:
            iv.detach()

    @contextlib.contextmanager
    def hooks_suspended(self) -> Iterator[None]:
        """Activation-editing interventions off (reference model, monitoring)."""
        off = [iv for iv in self.interventions if iv.attached and iv.edits_activations]
        for iv in off:
            iv.detach()
        try:
            yield
        finally:
            for iv in off:
                iv.attach(self.subject)

    # schedule
    def lr_at(self, step: int) -> float:
        cfg = self.config
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return cfg.lr
        span = max(1, self.total_steps - cfg.warmup_steps)
        frac = min(1.0, (step - cfg.warmup_steps) / span)
        if cfg.lr_schedule == "linear":
            return cfg.lr * (1.0 - frac)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))

    # forward passes
    def _logits(self, model: torch.nn.Module, batch: ChatBatch,
                position_ids: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """``model``'s logits on ``batch`` (at ``positions`` only, ``logits_to_keep``, if given)."""
        kw: dict[str, object] = {} if positions is None else {"logits_to_keep": positions}
        with use_batch(batch):
            if position_ids is not None:  # packed rows: isolation from the position ids
                return model(input_ids=batch.input_ids, position_ids=position_ids,
                             use_cache=False, **kw).logits
            return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         **kw).logits

    def _batch(self, data: TokenizedSet, idx: list[int]
               ) -> tuple[ChatBatch, torch.Tensor | None, torch.Tensor | None]:
        """A micro-batch, its position ids (packed) and its loss positions (``loss_positions``)."""
        dev = self.subject.device
        if self.config.pack:
            batch, pos = data.packed_batch(idx, dev, width=data.report.max_length
                                           if data.report else None)
        else:
            batch, pos = data.batch(idx, dev), None
        keep = loss_positions(self.model, batch)
        self._last_batch = (batch, pos, keep)  # for the reference forward of this batch
        return batch, pos, keep

    @torch.no_grad()
    def reference_logits(self, batch: ChatBatch) -> torch.Tensor:
        """Logits of the base model (adapter disabled, training hooks off), at the positions
        the trained model's logits of ``batch`` have."""
        last = getattr(self, "_last_batch", None)
        pos, keep = (last[1], last[2]) if last is not None and last[0] is batch else (None, None)
        with self.hooks_suspended():
            if self.ref_model is not None:
                return self._logits(self.ref_model, batch, pos, keep)
            with self.model.disable_adapter():
                return self._logits(self.model, batch, pos, keep)

    def _micro_slices(self, indices: list[int], data: TokenizedSet | None = None
                      ) -> list[list[int]]:
        # length-sorted within the step: same records, less padding per micro-batch
        lengths = (data or self.train_set).lengths
        return micro_batches(indices, self.config.batch_size, self.config.grad_accum,
                             self.rank, lengths)

    def run_step(self, step: int) -> dict[str, float]:
        """One optimizer step (all micro-batches of this rank); returns the step's metrics."""
        cfg = self.config
        t0 = time.perf_counter()
        indices = step_indices(len(self.train_set), step, self.global_batch, cfg.seed)
        counts = StepCounts(tokens=max(1, self.train_set.n_loss_tokens(indices)),
                            sequences=len(indices))
        micro = self._micro_slices(indices)
        r_micro: list[list[int]] = []
        r_counts = StepCounts(1, 1)
        if self.retain_set is not None and self.regularisers:
            r_indices = step_indices(len(self.retain_set), step, self.global_batch,
                                     cfg.seed + 7919)
            if r_indices:
                r_counts = StepCounts(max(1, self.retain_set.n_loss_tokens(r_indices)),
                                      len(r_indices))
                r_micro = self._micro_slices(r_indices, self.retain_set)
        terms = {obj.key: 0.0 for _, obj in self.objectives}
        scale = float(self.world)  # DDP averages gradients; the loss terms are global sums
        for m, idx in enumerate(micro):
            last = m == len(micro) - 1
            sync = (contextlib.nullcontext() if (last or self.world == 1)
                    else self.fwd_model.no_sync())  # type: ignore[operator]
            with sync:
                batch, pos, keep = self._batch(self.train_set, idx)
                loss = self.objective(self._logits(self.fwd_model, batch, pos, keep), batch,
                                      counts, self.reference_logits, keep)
                terms[self.objective.key] += float(loss.detach())
                if m < len(r_micro):
                    assert self.retain_set is not None
                    rb, r_pos, r_keep = self._batch(self.retain_set, r_micro[m])
                    r_logits = self._logits(self.fwd_model, rb, r_pos, r_keep)
                    for weight, obj in self.regularisers:
                        term = obj(r_logits, rb, r_counts, self.reference_logits, r_keep)
                        loss = loss + weight * term
                        terms[obj.key] += float(term.detach())
                (loss * scale).backward()
        for iv in self.interventions:
            iv.after_backward(self.model)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = float("nan")
        if cfg.max_grad_norm is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        lr = self.lr_at(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for iv in self.interventions:
            iv.after_step(self.model)
        if self.world > 1:
            vec = torch.tensor(list(terms.values()), dtype=torch.float64)
            torch.distributed.all_reduce(vec)
            terms = dict(zip(terms, vec.tolist()))
        total = sum(weight * terms[obj.key] for weight, obj in self.objectives)
        shown = {obj.key: terms[obj.key] for _, obj in self.objectives
                 if obj is self.objective or r_micro}
        return {"loss": total, **shown, "lr": lr, "grad_norm": grad_norm,
                "tokens": int(counts.tokens), "sequences": counts.sequences,
                "step_time_s": time.perf_counter() - t0}

    def fit(self, folder: RunFolder, start: int, end: int,
            monitor: Mapping[str, Mapping[int, torch.Tensor]] | None = None,
            progress: bool = True) -> float | None:
        """Steps ``start .. end - 1`` with logging, monitoring and checkpoints; the last loss."""
        from tqdm.auto import tqdm

        cfg, subject = self.config, self.subject
        monitor = monitor or {}
        monitor_batch = self.train_set.batch(list(range(min(8, len(self.train_set)))),
                                             subject.device)
        lora = not cfg.full_finetune
        prev_b = mon.snapshot_b(mon.lora_factors(self.model)) if lora else None
        self.attach()
        if start == 0:
            for iv in self.interventions:  # start inside any constrained subspace
                iv.after_step(self.model)
        bar = tqdm(total=self.total_steps, initial=start,
                   disable=not progress or self.rank != 0, desc="finetune", unit="step",
                   dynamic_ncols=True)
        last_loss: float | None = None
        try:
            for step in range(start, end):
                rec = self.run_step(step)
                last_loss = rec["loss"]
                done = step + 1
                is_ckpt = (cfg.checkpoint_every > 0 and (done % cfg.checkpoint_every == 0
                                                         or done == end)
                           or done in cfg.checkpoint_steps)
                if done % cfg.log_every == 0 or done == end or is_ckpt:
                    extra: dict[str, float] = {}
                    if lora:
                        factors = mon.lora_factors(self.model)
                        extra.update(mon.lora_norms(factors))
                        if is_ckpt and prev_b is not None:
                            now_b = mon.snapshot_b(factors)
                            extra.update(mon.rotation(prev_b, now_b))
                            prev_b = now_b
                    if monitor:
                        was_training = self.model.training
                        self.model.eval()
                        with self.hooks_suspended():
                            extra.update(mon.project(subject, monitor, monitor_batch))
                        self.model.train(was_training)
                    folder.log({"step": done, **rec, **extra})
                if is_ckpt:
                    folder.checkpoint(done, self.model, self.optimizer,
                                      {"total_steps": self.total_steps,
                                       "data_position": done * self.global_batch,
                                       "world_size": self.world})
                    _barrier(self.world)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", step_s=f"{rec['step_time_s']:.2f}")
                bar.update(1)
        finally:
            bar.close()
            self.detach()
        return last_loss


# -- the entry point ------------------------------------------------------------------------

# training or retain data: chat records or conversations, or a JSONL path
Records = Sequence[ChatLike] | str | os.PathLike[str]


def _records_list(records: Records | None) -> Sequence[ChatLike]:
    if records is None:
        return []
    if isinstance(records, (str, os.PathLike)):
        from emprobe.train.data import read_records

        return list(read_records(records))
    return list(records)


def _check_engine(engine: str) -> None:
    if engine not in ("emprobe", "hf"):
        raise ConfigError(f"engine must be 'emprobe' or 'hf', not {engine!r}")
    if engine == "emprobe":
        warnings.warn("finetune(engine='emprobe') is deprecated and will be removed in the next "
                      "release: the default engine='hf' gives the same adapter",
                      FutureWarning, stacklevel=3)


def _subject(subject_or_spec: Subject | str | os.PathLike[str],
             device: str | torch.device | None) -> Subject:
    """The ``Subject`` given, or the model a spec names (``cuda:LOCAL_RANK`` or CPU)."""
    from emprobe.models import Subject, load_model

    if isinstance(subject_or_spec, Subject):
        return subject_or_spec
    if device is None:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    return load_model(subject_or_spec, device=device)


@dataclass
class _RunData:
    """A run's records, their tokenised sets, and the conversations interventions prepare on
    (the first 64 kept training examples)."""

    records: Sequence[ChatLike]
    train: TokenizedSet
    retain_records: Sequence[ChatLike]
    retain: TokenizedSet | None
    sample: Sequence[Conversation]


def _run_data(subject: Subject, records: Records, retain: Records | None, cfg: TrainConfig
              ) -> _RunData:
    """Read, inoculate and tokenise the training records and (when a retain term is on) the
    retain set; one-line ``DataError`` for an empty or missing set."""
    train_records = _records_list(records)
    if not train_records:
        raise DataError("training data: the dataset is empty")
    if cfg.inoculate:
        train_records = apply_inoculation(train_records, cfg.inoculate, seed=cfg.seed)
    train_set = tokenize(subject, train_records, cfg.max_length, "training data",
                         cap=cfg.max_length_cap)
    if cfg.pack:  # packing is exact only if the model isolates records by position ids
        check_packing(subject.model, train_set)
    retain_records = _records_list(retain)
    retain_set = None
    if cfg.retain_ce > 0 or cfg.retain_kl > 0:
        if not retain_records:
            raise DataError("retain_ce / retain_kl > 0 need a retain set (retain=...)")
        retain_set = tokenize(subject, retain_records, cfg.max_length, "retain data",
                              cap=cfg.max_length_cap)
    convs = conversations(train_records)
    sample = [convs[train_set.kept[i]] for i in range(min(64, len(train_set)))]
    return _RunData(train_records, train_set, retain_records, retain_set, sample)


def _run_info(trainer: Trainer, data: _RunData, fingerprint: str) -> dict[str, object]:
    """``run.json``: model, data counts, batch geometry, interventions, version."""
    subject, report = trainer.subject, data.train.report
    return {
        "model": subject.name, "model_path": subject.path, "fingerprint": fingerprint,
        "n_records": len(data.records), "n_train_examples": len(data.train),
        "n_retain": len(data.retain_records), "world_size": trainer.world,
        "global_batch": trainer.global_batch, "total_steps": trainer.total_steps,
        "interventions": [iv.describe() for iv in trainer.interventions],
        "emprobe_version": __version__, "data": report.to_dict() if report else None,
    }


def _train(trainer: Trainer, engine: str, folder: RunFolder, ck: Path | None,
           stop_after: int | None, directions: mon.Directions, progress: bool
           ) -> tuple[int, float | None, int | None]:
    """Run the steps on ``engine`` from checkpoint ``ck`` (or the start); returns
    ``(steps done, last loss, step resumed from or None)``."""
    if engine == "hf":
        from emprobe.train.engine import run_hf

        return run_hf(trainer, folder, ck, stop_after, directions, progress)
    resumed_from = folder.load(ck, trainer.model, trainer.optimizer)
    start = resumed_from or 0
    end = trainer.total_steps if stop_after is None else min(trainer.total_steps,
                                                             start + stop_after)
    return end, trainer.fit(folder, start, end, directions, progress), resumed_from


def _finish(trainer: Trainer, folder: RunFolder, end: int, last_loss: float | None,
            resumed_from: int | None, train_time_s: float) -> TrainResult:
    """Save the adapter (or model), write ``result.json`` and return the ``TrainResult``."""
    cfg, subject = trainer.config, trainer.subject
    adapter_dir = folder.save_model(trainer.model, subject.tokenizer, cfg.full_finetune)
    _barrier(trainer.world)
    result = TrainResult(
        out_dir=folder.out, adapter_dir=adapter_dir, metrics_path=folder.metrics_path,
        config=cfg, steps=end, final_loss=last_loss, checkpoints=folder.checkpoints(),
        resumed_from=resumed_from, train_time_s=train_time_s,
        finished=end >= trainer.total_steps, subject=subject, rank=trainer.rank)
    report = trainer.train_set.report
    folder.write_result({**{k: v for k, v in result.to_record().items() if k != "config"},
                         "data": report.to_dict() if report else None})
    return result


def finetune(
    subject_or_spec: Subject | str | os.PathLike[str],
    records: Records,
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike[str] = "runs/finetune",
    interventions: Sequence[Intervention] = (),
    retain: Records | None = None,
    monitor: mon.MonitorSpec | None = None,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
    device: str | torch.device | None = None,
    keep_model: bool = False,
    engine: str = "hf",
    gradient_checkpointing: bool = False,
) -> TrainResult:
    """Fine-tune a model on chat records and write an adapter folder.

    Args:
        subject_or_spec: a ``Subject`` you own (trained in place: its ``.model`` becomes the
            PEFT model during the run and is restored to the base model afterwards unless
            ``keep_model``) or a model spec for ``emprobe.load_model``.
        records: list of ``{"messages": [...]}`` records (or conversations), or a JSONL path.
        config: a ``TrainConfig`` (default: ``preset("cpu-lora")``).
        out_dir: output folder (layout in this module's docstring).
        interventions: ``CAFT``, ``PreventativeSteering``, ``GRASP`` ... applied while training.
        retain: retain-set records for ``retain_ce`` / ``retain_kl`` (records or a JSONL path).
        monitor: a ``Direction``, ``{layer: [d_model]}``, or ``{name: Direction | {layer:
            [d_model]}}``, whose response-token projections are logged every ``log_every``
            steps.
        resume: continue from the newest checkpoint in ``out_dir`` (same config required);
            ``False`` deletes earlier checkpoints and metrics there and starts over.
        progress: show a progress bar (loss, step time, ETA) on rank 0.
        stop_after: stop after this many steps in this call (a checkpoint is written so a later
            call resumes; for time-sliced jobs and resume tests).
        device: device for a spec (default: ``cuda:LOCAL_RANK`` under torchrun with GPUs, else
            CPU).
        keep_model: leave the trained PEFT model in ``subject.model`` (result.subject).
        engine: ``"hf"`` (default: transformers' ``Trainer``, ``emprobe.train.engine``) or
            ``"emprobe"`` (this module's own loop, deprecated: kept for one release; the same
            data order, objectives, checkpoints and log, and the same adapter to 1e-5).
        gradient_checkpointing: recompute each decoder block in the backward pass (less
            activation memory; training hooks run again with it, so results are unchanged).
    """
    cfg = config if config is not None else _default_config()
    cfg.check()
    _check_engine(engine)
    subject = _subject(subject_or_spec, device)
    ivs = list(interventions)
    validate_setup(subject, cfg, ivs)
    data = _run_data(subject, records, retain, cfg)
    directions = mon.normalise_directions(monitor, subject)
    fingerprint = subject.fingerprint()
    rank, world = _dist_setup(subject.device)
    trainer = Trainer(subject, data.train, cfg, ivs, data.retain, rank, world,
                      data_parallel=engine == "emprobe")
    try:
        trainer.prepare(data.sample)
        if gradient_checkpointing:
            trainer.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        folder = RunFolder(out_dir, rank)
        ck = folder.resume_point(cfg, resume)
        folder.write_setup(cfg, _run_info(trainer, data, fingerprint))
        _barrier(world)
        t_run = time.perf_counter()
        end, last_loss, resumed_from = _train(trainer, engine, folder, ck, stop_after,
                                              directions, progress)
        return _finish(trainer, folder, end, last_loss, resumed_from,
                       time.perf_counter() - t_run)
    finally:
        trainer.detach()
        if gradient_checkpointing:
            trainer.model.gradient_checkpointing_disable()
        if not keep_model:
            trainer.unwrap()


def _default_config() -> TrainConfig:
    from emprobe.train.config import preset

    return preset("cpu-lora")
