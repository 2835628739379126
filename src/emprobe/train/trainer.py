"""``finetune``: LoRA or full fine-tuning on chat records, with training-time interventions.

Output folder (``out_dir``)::

    adapter/            PEFT adapter (LoRA runs): PeftModel.from_pretrained / load_model(adapter=)
    model/              full model + tokenizer (full fine-tuning runs, instead of adapter/)
    train_config.json   the TrainConfig (TrainConfig.load reads it back)
    run.json            model spec, data counts, interventions, world size, emprobe version
    metrics.jsonl       one line per logged step (loss terms, lr, step time, tokens, monitoring)
    checkpoints/step-000010/ ...   resumable checkpoints (see emprobe.train.checkpoint)
    result.json         summary written when the run ends

Data parallelism: under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE > 1``) the model is
wrapped in ``DistributedDataParallel`` (gloo on CPU, nccl on GPU); each optimizer step's
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
from typing import Any

import torch

from emprobe._version import __version__
from emprobe.errors import DataError, ShapeError, SiteError
from emprobe.io import append_jsonl, atomic_dir, read_json, read_jsonl, write_json, write_jsonl
from emprobe.models.context import use_batch
from emprobe.train import monitor as mon
from emprobe.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from emprobe.train.config import TrainConfig
from emprobe.train.data import (
    TokenizedSet,
    apply_inoculation,
    micro_batches,
    step_indices,
    tokenize,
)
from emprobe.train.interventions import CAFT, GRASP, Intervention
from emprobe.train.objectives import kl_to_reference, npo_loss, sequence_logprob, sum_ce

__all__ = ["TrainResult", "finetune", "Trainer", "linear_module_names", "validate_setup"]

# config fields that may change between an interrupted run and its resumption
_RESUME_FREE = {"log_every", "checkpoint_every"}


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
    subject: Any = None
    rank: int = 0

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def to_record(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "adapter_dir": str(self.adapter_dir),
                "metrics_path": str(self.metrics_path), "steps": self.steps,
                "final_loss": self.final_loss, "checkpoints": [str(c) for c in self.checkpoints],
                "resumed_from": self.resumed_from, "train_time_s": self.train_time_s,
                "finished": self.finished, "config": self.config.to_dict()}


# -- validation -------------------------------------------------------------------------------

def linear_module_names(subject: Any) -> list[str]:
    """Leaf names of the linear layers inside the decoder blocks (``q_proj``, ``c_attn``...)."""
    names = set()
    for blk in subject.layers.blocks:
        for name, mod in blk.named_modules():
            if isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D":
                names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def validate_setup(subject: Any, config: TrainConfig,
                   interventions: Sequence[Intervention] = ()) -> None:
    """Every check that can fail before training: config values, module names, layers, widths."""
    config.check()
    if hasattr(subject.model, "peft_config"):
        raise DataError("the subject already carries a PEFT adapter: train from a base model "
                        "(or load it with merge_adapter=True)")
    if not config.full_finetune:
        have = linear_module_names(subject)
        targets = config.target_modules
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
    elif any(isinstance(iv, GRASP) for iv in interventions):
        raise DataError("GRASP projects LoRA factors: it cannot be used with full fine-tuning")
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise DataError(f"interventions: {type(iv).__name__} is not an emprobe Intervention")
        if not isinstance(iv, GRASP):  # GRASP needs the LoRA model: checked after wrapping
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
    """One fine-tuning run's state: the (PEFT) model, optimizer, data and interventions.

    ``finetune`` drives it; ``run_step(step)`` performs one optimizer step and returns its
    metrics (used by the benchmarks to time steps).
    """

    def __init__(self, subject: Any, train: TokenizedSet, config: TrainConfig,
                 interventions: Sequence[Intervention] = (), retain: TokenizedSet | None = None,
                 rank: int = 0, world: int = 1) -> None:
        self.subject = subject
        self.train_set = train
        self.retain_set = retain
        self.config = config
        self.interventions = list(interventions)
        self.rank, self.world = rank, world
        self.global_batch = config.batch_size * config.grad_accum * world
        n = len(train)
        self.total_steps = config.max_steps or max(
            1, math.ceil(config.epochs * n / self.global_batch))
        self.ref_model: Any = None
        self._wrap()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=config.lr, betas=config.adam_betas, eps=config.adam_eps,
            weight_decay=config.weight_decay)
        self.fwd_model = self.model
        if world > 1:
            ids = [subject.device.index] if subject.device.type == "cuda" else None
            self.fwd_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    # model preparation
    def _wrap(self) -> None:
        cfg, subject = self.config, self.subject
        needs_ref = cfg.unlearn == "npo" or cfg.retain_kl > 0
        torch.manual_seed(cfg.seed)
        if cfg.full_finetune:
            if needs_ref:
                self.ref_model = copy.deepcopy(subject.model).eval().requires_grad_(False)
            for p in subject.model.parameters():
                p.requires_grad_(True)
            self.model = subject.model
        else:
            from peft import LoraConfig, get_peft_model

            targets: Any = cfg.target_modules
            if targets == ["all-linear"]:
                targets = "all-linear"
            lcfg = LoraConfig(
                r=cfg.lora_r, lora_alpha=cfg.lora_alpha, use_rslora=cfg.use_rslora,
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

    # intervention switching (hooks only: GRASP keeps its targets)
    def attach(self) -> None:
        for iv in self.interventions:
            if not iv.attached:
                iv.attach(self.subject)

    def detach(self) -> None:
        for iv in self.interventions:
            iv.detach()

    @contextlib.contextmanager
    def hooks_suspended(self) -> Iterator[None]:
        off = [iv for iv in self.interventions if iv.attached and not isinstance(iv, GRASP)]
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
    def _logits(self, model: Any, batch: Any) -> torch.Tensor:
        with use_batch(batch):
            return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits

    @torch.no_grad()
    def reference_logits(self, batch: Any) -> torch.Tensor:
        """Logits of the base model (adapter disabled, training hooks off)."""
        with self.hooks_suspended():
            if self.ref_model is not None:
                return self._logits(self.ref_model, batch)
            with self.model.disable_adapter():
                return self._logits(self.model, batch)

    def _micro_slices(self, indices: list[int], data: TokenizedSet | None = None
                      ) -> list[list[int]]:
        # length-sorted within the step: same records, less padding per micro-batch
        lengths = (data or self.train_set).lengths
        return micro_batches(indices, self.config.batch_size, self.config.grad_accum,
                             self.rank, lengths)

    def run_step(self, step: int) -> dict[str, float]:
        """One optimizer step (all micro-batches of this rank); returns the step's metrics."""
        cfg, dev = self.config, self.subject.device
        t0 = time.perf_counter()
        indices = step_indices(len(self.train_set), step, self.global_batch, cfg.seed)
        n_tok = max(1, self.train_set.n_loss_tokens(indices))
        n_seq = len(indices)
        r_indices: list[int] = []
        if self.retain_set is not None:
            r_indices = step_indices(len(self.retain_set), step, self.global_batch,
                                     cfg.seed + 7919)
        r_tok = max(1, self.retain_set.n_loss_tokens(r_indices)) if r_indices else 1
        micro = self._micro_slices(indices)
        r_micro = self._micro_slices(r_indices, self.retain_set) if r_indices else []
        terms = {"loss/task": 0.0, "loss/retain_ce": 0.0, "loss/retain_kl": 0.0}
        scale = float(self.world)  # DDP averages gradients; the loss terms are global sums
        for m, idx in enumerate(micro):
            last = m == len(micro) - 1
            sync = contextlib.nullcontext() if (last or self.world == 1) else self.fwd_model.no_sync()
            with sync:
                batch = self.train_set.batch(idx, dev)
                logits = self._logits(self.fwd_model, batch)
                if cfg.unlearn == "npo":
                    ref = sequence_logprob(self.reference_logits(batch), batch)
                    task = npo_loss(sequence_logprob(logits, batch), ref, cfg.npo_beta).sum() / n_seq
                elif cfg.unlearn == "ga":
                    task = -sum_ce(logits, batch) / n_tok
                else:
                    task = sum_ce(logits, batch) / n_tok
                loss = task
                terms["loss/task"] += float(task.detach())
                if r_micro and m < len(r_micro) and (cfg.retain_ce > 0 or cfg.retain_kl > 0):
                    rb = self.retain_set.batch(r_micro[m], dev)
                    r_logits = self._logits(self.fwd_model, rb)
                    if cfg.retain_ce > 0:
                        rce = sum_ce(r_logits, rb) / r_tok
                        loss = loss + cfg.retain_ce * rce
                        terms["loss/retain_ce"] += float(rce.detach())
                    if cfg.retain_kl > 0:
                        kl, _ = kl_to_reference(r_logits, self.reference_logits(rb), rb)
                        kl = kl / r_tok
                        loss = loss + cfg.retain_kl * kl
                        terms["loss/retain_kl"] += float(kl.detach())
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
        total = terms["loss/task"] + cfg.retain_ce * terms["loss/retain_ce"] \
            + cfg.retain_kl * terms["loss/retain_kl"]
        active = {"loss/task": True, "loss/retain_ce": cfg.retain_ce > 0 and bool(r_micro),
                  "loss/retain_kl": cfg.retain_kl > 0 and bool(r_micro)}
        out = {"loss": total, **{k: v for k, v in terms.items() if active[k]},
               "lr": lr, "grad_norm": grad_norm, "tokens": int(n_tok), "sequences": n_seq,
               "step_time_s": time.perf_counter() - t0}
        return out


# -- the entry point ------------------------------------------------------------------------

def _records_list(records: Any, what: str) -> list[Any]:
    if records is None:
        return []
    if isinstance(records, (str, os.PathLike)):
        from emprobe.train.data import read_records

        return read_records(records)
    return list(records)


def finetune(
    subject_or_spec: Any,
    records: Any,
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike[str] = "runs/finetune",
    interventions: Sequence[Intervention] = (),
    retain: Any = None,
    monitor: Mapping[Any, Any] | None = None,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
    device: str | torch.device | None = None,
    keep_model: bool = False,
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
        monitor: directions ``{layer: [d_model]}`` or ``{name: {layer: [d_model]}}`` whose
            response-token projections are logged every ``log_every`` steps.
        resume: continue from the newest checkpoint in ``out_dir`` (same config required);
            ``False`` deletes earlier checkpoints and metrics there and starts over.
        progress: show a progress bar (loss, step time, ETA) on rank 0.
        stop_after: stop after this many steps in this call (a checkpoint is written so a later
            call resumes; for time-sliced jobs and resume tests).
        device: device for a spec (default: ``cuda:LOCAL_RANK`` under torchrun with GPUs, else
            CPU).
        keep_model: leave the trained PEFT model in ``subject.model`` (result.subject).
    """
    from emprobe.models import Subject, load_model

    cfg = config if config is not None else _default_config()
    cfg.check()
    out = Path(out_dir)
    if isinstance(subject_or_spec, Subject):
        subject = subject_or_spec
    else:
        if device is None:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        subject = load_model(subject_or_spec, device=device)
    ivs = list(interventions)
    validate_setup(subject, cfg, ivs)
    train_records = _records_list(records, "training data")
    if not train_records:
        raise DataError("training data: the dataset is empty")
    if cfg.inoculate:
        train_records = apply_inoculation(train_records, cfg.inoculate, seed=cfg.seed)
    train_set = tokenize(subject, train_records, cfg.max_length, "training data",
                         cap=cfg.max_length_cap)
    retain_records = _records_list(retain, "retain data")
    retain_set = None
    if cfg.retain_ce > 0 or cfg.retain_kl > 0:
        if not retain_records:
            raise DataError("retain_ce / retain_kl > 0 need a retain set (retain=...)")
        retain_set = tokenize(subject, retain_records, cfg.max_length, "retain data",
                              cap=cfg.max_length_cap)
    directions = mon.normalise_directions(monitor)
    for name, table in directions.items():
        for la, v in table.items():
            subject.layers.check_layer(la)
            if v.shape[-1] != subject.d_model:
                raise ShapeError(f"monitor direction {name!r} at layer {la} has width "
                                 f"{v.shape[-1]}; d_model is {subject.d_model}")
    convs_sample = [train_set.kept[i] for i in range(min(64, len(train_set)))]
    for iv in ivs:
        if isinstance(iv, CAFT) and iv.mode == "mean" and iv.means is None:
            from emprobe.train.data import conversations

            convs = conversations(train_records)
            iv.fit_means(subject, [convs[i] for i in convs_sample])

    fingerprint = subject.fingerprint()
    rank, world = _dist_setup(subject.device)
    trainer = Trainer(subject, train_set, cfg, ivs, retain_set, rank, world)
    try:
        for iv in ivs:
            if isinstance(iv, GRASP):
                iv.validate(subject)
        return _run(trainer, subject, out, cfg, ivs, directions, train_set, resume, progress,
                    stop_after, len(train_records), len(retain_records), fingerprint)
    finally:
        trainer.detach()
        if not keep_model:
            trainer.unwrap()


def _default_config() -> TrainConfig:
    from emprobe.train.config import preset

    return preset("cpu-lora")


def _check_resumable(out: Path, cfg: TrainConfig) -> None:
    old_path = out / "train_config.json"
    if not old_path.is_file():
        return
    old = read_json(old_path)
    new = cfg.to_dict()
    diff = sorted(k for k in set(old) | set(new)
                  if k not in _RESUME_FREE and old.get(k) != new.get(k))
    if diff:
        raise DataError(f"{out}: holds a run with a different config ({', '.join(diff)}); use "
                        "another output folder or resume=False")


def _run(trainer: Trainer, subject: Any, out: Path, cfg: TrainConfig,
         ivs: list[Intervention], directions: dict[str, dict[int, torch.Tensor]],
         train_set: TokenizedSet, resume: bool, progress: bool, stop_after: int | None,
         n_records: int, n_retain: int, fingerprint: str) -> TrainResult:
    from tqdm.auto import tqdm

    rank, world = trainer.rank, trainer.world
    ckpt_dir = out / "checkpoints"
    metrics_path = out / "metrics.jsonl"
    start, resumed_from = 0, None
    if resume and latest_checkpoint(ckpt_dir) is not None:
        _check_resumable(out, cfg)
        ck = latest_checkpoint(ckpt_dir)
        state = load_checkpoint(ck, trainer.model, trainer.optimizer)
        start = resumed_from = int(state["step"])
        if rank == 0:  # drop log lines written after the checkpoint
            kept = [r for r in read_jsonl(metrics_path) if int(r.get("step", 0)) <= start]
            write_jsonl(metrics_path, kept)
    elif rank == 0:
        import shutil

        shutil.rmtree(ckpt_dir, ignore_errors=True)
        if metrics_path.exists():
            metrics_path.unlink()
    if rank == 0:
        cfg.save(out / "train_config.json")
        write_json(out / "run.json", {
            "model": subject.name, "model_path": subject.path, "fingerprint": fingerprint,
            "n_records": n_records, "n_train_examples": len(train_set), "n_retain": n_retain,
            "world_size": world, "global_batch": trainer.global_batch,
            "total_steps": trainer.total_steps, "interventions": [iv.describe() for iv in ivs],
            "emprobe_version": __version__,
            "data": train_set.report.to_dict() if train_set.report else None,
        })
    _barrier(world)

    monitor_batch = train_set.batch(list(range(min(8, len(train_set)))), subject.device)
    lora = not cfg.full_finetune
    prev_b = mon.snapshot_b(mon.lora_factors(trainer.model)) if lora else None
    trainer.attach()
    if start == 0:
        for iv in ivs:  # start inside any constrained subspace (GRASP's read side)
            iv.after_step(trainer.model)
    end = trainer.total_steps if stop_after is None else min(trainer.total_steps,
                                                             start + stop_after)
    bar = tqdm(total=trainer.total_steps, initial=start, disable=not progress or rank != 0,
               desc="finetune", unit="step", dynamic_ncols=True)
    last_loss: float | None = None
    t_run = time.perf_counter()
    try:
        for step in range(start, end):
            rec = trainer.run_step(step)
            last_loss = rec["loss"]
            done = step + 1
            is_ckpt = cfg.checkpoint_every > 0 and (done % cfg.checkpoint_every == 0
                                                    or done == end)
            if done % cfg.log_every == 0 or done == end or is_ckpt:
                extra: dict[str, float] = {}
                if lora:
                    factors = mon.lora_factors(trainer.model)
                    extra.update(mon.lora_norms(factors))
                    if is_ckpt and prev_b is not None:
                        now_b = mon.snapshot_b(factors)
                        extra.update(mon.rotation(prev_b, now_b))
                        prev_b = now_b
                if directions:
                    was_training = trainer.model.training
                    trainer.model.eval()
                    with trainer.hooks_suspended():
                        extra.update(mon.project(subject, directions, monitor_batch))
                    trainer.model.train(was_training)
                if rank == 0:
                    append_jsonl(metrics_path, {"step": done, **rec, **extra})
            if is_ckpt:
                if rank == 0:
                    save_checkpoint(ckpt_dir, done, trainer.model, trainer.optimizer,
                                    {"total_steps": trainer.total_steps, "data_position": done
                                     * trainer.global_batch, "world_size": world})
                _barrier(world)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", step_s=f"{rec['step_time_s']:.2f}")
            bar.update(1)
    finally:
        bar.close()
        trainer.detach()
    finished = end >= trainer.total_steps
    adapter_dir = out / ("model" if cfg.full_finetune else "adapter")
    if rank == 0:
        with atomic_dir(adapter_dir) as tmp:
            trainer.model.save_pretrained(str(tmp))
            if cfg.full_finetune:
                subject.tokenizer.save_pretrained(str(tmp))
    _barrier(world)
    result = TrainResult(
        out_dir=out, adapter_dir=adapter_dir, metrics_path=metrics_path, config=cfg,
        steps=end, final_loss=last_loss, checkpoints=[p for _, p in list_checkpoints(ckpt_dir)],
        resumed_from=resumed_from, train_time_s=time.perf_counter() - t_run, finished=finished,
        subject=subject, rank=rank)
    if rank == 0:
        write_json(out / "result.json", {
            **{k: v for k, v in result.to_record().items() if k != "config"},
            "data": train_set.report.to_dict() if train_set.report else None})
    return result

