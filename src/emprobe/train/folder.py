"""A fine-tuning run's output folder: setup records, metrics, checkpoints, resume, results.

Layout (both engines)::

    adapter/            PEFT adapter (LoRA runs): PeftModel.from_pretrained / load_model(adapter=)
    model/              full model + tokenizer (full fine-tuning runs, instead of adapter/)
    train_config.json   the TrainConfig (TrainConfig.load reads it back)
    run.json            model spec, data counts, interventions, world size, emprobe version
    metrics.jsonl       one line per logged step (loss terms, lr, step time, tokens, monitoring)
    checkpoints/step-000010/ ...   resumable checkpoints (``emprobe.train.checkpoint``)
    result.json         summary written when the run ends

Under FSDP / DeepSpeed the transformers engine keeps its own ``checkpoint-N/`` folders (the
sharded optimizer state is the engine's to write); they are listed and resumed too.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from emprobe.errors import DataError
from emprobe.io import append_jsonl, atomic_dir, read_json, read_jsonl, write_json, write_jsonl
from emprobe.train.checkpoint import (
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from emprobe.train.config import TrainConfig

__all__ = ["RunFolder", "engine_checkpoints"]

# config fields that may change between an interrupted run and its resumption
_RESUME_FREE = {"log_every", "checkpoint_every", "checkpoint_steps"}
_ENGINE_DIR = re.compile(r"^checkpoint-(\d+)$")


def engine_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """The transformers engine's complete ``checkpoint-N`` folders in ``out``, ascending."""
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        m = _ENGINE_DIR.match(p.name)
        if m and (p / "trainer_state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


class RunFolder:
    """A run's output folder (layout in the module docstring): resume, metrics, checkpoints.

    Only rank 0 writes; every method is safe to call on every rank.
    """

    def __init__(self, out: str | os.PathLike[str], rank: int = 0) -> None:
        self.out = Path(out)
        self.rank = rank
        self.checkpoint_dir = self.out / "checkpoints"
        self.metrics_path = self.out / "metrics.jsonl"

    def check_resumable(self, config: TrainConfig) -> None:
        """Refuse to resume a run whose saved config differs (beyond logging cadence)."""
        old_path = self.out / "train_config.json"
        if not old_path.is_file():
            return
        # a field added after the run was saved had its default value then
        old = {**TrainConfig().to_dict(), **read_json(old_path)}
        new = config.to_dict()
        diff = sorted(k for k in set(old) | set(new)
                      if k not in _RESUME_FREE and old.get(k) != new.get(k))
        if diff:
            raise DataError(f"{self.out}: holds a run with a different config ({', '.join(diff)});"
                            " use another output folder or resume=False")

    def newest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint of either layout (``step-N`` wins a tie)."""
        ours = latest_checkpoint(self.checkpoint_dir)
        engine = engine_checkpoints(self.out)
        theirs = engine[-1][1] if engine else None
        if ours is None or theirs is None:
            return ours or theirs
        return theirs if checkpoint_step(theirs) > checkpoint_step(ours) else ours

    def resume_point(self, config: TrainConfig, resume: bool) -> Path | None:
        """The checkpoint to resume from (metrics after it dropped), or ``None`` after clearing
        an earlier run's checkpoints and metrics."""
        ck = self.newest_checkpoint() if resume else None
        if ck is not None:
            self.check_resumable(config)
            if self.rank == 0:  # drop log lines written after the checkpoint
                step = checkpoint_step(ck)
                kept = [r for r in read_jsonl(self.metrics_path) if int(r.get("step", 0)) <= step]
                write_jsonl(self.metrics_path, kept)
            return ck
        if self.rank == 0:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
            for _, p in engine_checkpoints(self.out):
                shutil.rmtree(p, ignore_errors=True)
            if self.metrics_path.exists():
                self.metrics_path.unlink()
        return None

    def load(self, ck: Path | None, model: torch.nn.Module, optimizer: torch.optim.Optimizer
             ) -> int | None:
        """emprobe's loop: load checkpoint ``ck`` (from ``resume_point``); returns its step."""
        if ck is None:
            return None
        if _ENGINE_DIR.match(ck.name):
            raise DataError(f"{ck}: written by the transformers engine under FSDP / DeepSpeed; "
                            "resume it with engine='hf'")
        return int(load_checkpoint(ck, model, optimizer)["step"])

    def write_setup(self, config: TrainConfig, run_info: Mapping[str, object]) -> None:
        if self.rank == 0:
            config.save(self.out / "train_config.json")
            write_json(self.out / "run.json", dict(run_info))

    def log(self, record: Mapping[str, object]) -> None:
        if self.rank == 0:
            append_jsonl(self.metrics_path, dict(record))

    def checkpoint(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   state: Mapping[str, object]) -> None:
        if self.rank == 0:
            save_checkpoint(self.checkpoint_dir, step, model, optimizer, state)

    def checkpoints(self) -> list[Path]:
        """emprobe's ``checkpoints/step-N`` folders, then the engine's ``checkpoint-N``."""
        found = [p for _, p in list_checkpoints(self.checkpoint_dir)]
        return found + [p for _, p in engine_checkpoints(self.out)]

    def save_model(self, model: PeftModel | PreTrainedModel,
                   tokenizer: PreTrainedTokenizerBase | None = None, full: bool = False) -> Path:
        """The adapter (``adapter/``) or, for full fine-tuning, model + tokenizer (``model/``)."""
        target = self.out / ("model" if full else "adapter")
        if self.rank == 0:
            with atomic_dir(target) as tmp:
                model.save_pretrained(str(tmp))
                if full and tokenizer is not None:
                    tokenizer.save_pretrained(str(tmp))
        return target

    def write_result(self, record: Mapping[str, object]) -> None:
        if self.rank == 0:
            write_json(self.out / "result.json", dict(record))
