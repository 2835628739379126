"""``TrainConfig``: every knob of a fine-tuning run, as a dataclass that round-trips through JSON.

Presets (``preset(name, **overrides)``):

- ``standard``: the field's EM recipe. LoRA r 32, alpha 64, rsLoRA, all seven projection
  modules, lr 1e-5, one epoch, batch 2 x grad-accum 8, loss on assistant tokens only.
- ``rank1``: the rank-1 model organism. r 1, alpha 512, rsLoRA, ``down_proj`` only, lr 2e-5;
  pass ``layers_to_transform=[...]`` to choose the layers (default: every layer).
- ``cpu-lora``: makes the embedded SmolLM2-135M show a fine-tuning effect in minutes on a
  laptop CPU: r 8, all seven modules, lr 3e-4, batch 8, 40 steps, max_length from the data
  capped at 256 tokens, each micro-batch packed into rows (``pack``).
- ``full``: full fine-tuning (every weight), lr 1e-5, batch 2 x 8.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emprobe.errors import ConfigError
from emprobe.io import read_json, write_json

__all__ = ["TrainConfig", "preset", "PRESETS", "SEVEN_PROJECTIONS"]

SEVEN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LR_SCHEDULES = ("constant", "linear", "cosine")
UNLEARN_MODES = ("ga", "npo")


@dataclass
class TrainConfig:
    """A fine-tuning run's settings.

    Lengths: ``max_length`` tokens per sequence; ``None`` derives it from the data (the
    longest tokenised record, at most ``max_length_cap``, 2048 by default as the field
    trains). Longer records lose the beginning of their prompt first and the end of their
    response only when it alone does not fit (``emprobe.train.data.fit_window``); a warning
    and the run summary count what was cut. ``pack`` packs each micro-batch's records into
    rows with position ids restarting per record (attention isolated, same loss).

    Batches: ``batch_size`` sequences per micro-batch per process; one optimizer step sees
    ``batch_size * grad_accum * world_size`` sequences. Length of the run: ``max_steps`` when
    set, else ``ceil(epochs * n_records / global_batch)``.

    Objective: next-token cross-entropy on assistant tokens (summed over the global batch's
    response tokens and divided by their count), or, with ``unlearn``, gradient ascent
    (``"ga"``) or NPO (``"npo"``, ``npo_beta``) on those records; plus ``retain_ce *
    CE(retain)`` and ``retain_kl * KL(base || model)`` on a retain set when given.
    """

    # adapter
    full_finetune: bool = False
    lora_r: int = 32
    lora_alpha: float = 64.0
    use_rslora: bool = True
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(SEVEN_PROJECTIONS))
    layers_to_transform: list[int] | None = None
    # optimisation
    lr: float = 1e-5
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 2
    grad_accum: int = 8
    # None: from the data (95th percentile of tokenised lengths, at most max_length_cap)
    max_length: int | None = None
    max_length_cap: int = 2048
    # pack each micro-batch's records into rows (position ids reset per record, no padding
    # between records); the loss is the same up to float summation order
    pack: bool = False
    weight_decay: float = 0.0
    warmup_steps: int = 5
    lr_schedule: str = "linear"
    max_grad_norm: float | None = 1.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    seed: int = 0
    # bookkeeping
    checkpoint_every: int = 0
    # also checkpoint after exactly these steps (e.g. the points of a data-size curve)
    checkpoint_steps: list[int] = field(default_factory=list)
    log_every: int = 1
    # data-level intervention and objectives
    inoculate: str | None = None
    unlearn: str | None = None
    npo_beta: float = 0.1
    retain_ce: float = 0.0
    retain_kl: float = 0.0
    name: str = "custom"

    def __post_init__(self) -> None:
        self.target_modules = list(self.target_modules)
        self.checkpoint_steps = sorted({int(x) for x in self.checkpoint_steps})
        if self.layers_to_transform is not None:
            self.layers_to_transform = [int(x) for x in self.layers_to_transform]
        self.adam_betas = (float(self.adam_betas[0]), float(self.adam_betas[1]))
        self.check()

    # -- checks that need no model ----------------------------------------------------------
    def check(self) -> None:
        """Validate values that do not depend on the model; one-line ``ConfigError`` on failure.

        Runs at construction (``__post_init__``); call it again after editing fields.
        """
        def bad(what: str) -> ConfigError:
            return ConfigError(f"train config: {what}")

        if not self.full_finetune:
            if self.lora_r < 1:
                raise bad(f"lora_r must be >= 1, got {self.lora_r}")
            if not self.target_modules:
                raise bad("target_modules is empty")
            if not 0.0 <= self.lora_dropout < 1.0:
                raise bad(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lr <= 0:
            raise bad(f"lr must be > 0, got {self.lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise bad(f"max_steps must be >= 1, got {self.max_steps}")
        if self.max_steps is None and self.epochs <= 0:
            raise bad(f"epochs must be > 0, got {self.epochs}")
        for key in ("batch_size", "grad_accum", "log_every"):
            if getattr(self, key) < 1:
                raise bad(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.checkpoint_every < 0:
            raise bad(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if any(x < 1 for x in self.checkpoint_steps):
            raise bad(f"checkpoint_steps must be >= 1, got {self.checkpoint_steps}")
        if self.max_length is not None and self.max_length < 2:
            raise bad(f"max_length must be >= 2, got {self.max_length}")
        if self.max_length_cap < 2:
            raise bad(f"max_length_cap must be >= 2, got {self.max_length_cap}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise bad(f"lr_schedule {self.lr_schedule!r} is not one of {LR_SCHEDULES}")
        if self.unlearn is not None and self.unlearn not in UNLEARN_MODES:
            raise bad(f"unlearn {self.unlearn!r} is not one of {UNLEARN_MODES}")
        if self.retain_ce < 0 or self.retain_kl < 0:
            raise bad("retain_ce and retain_kl must be >= 0")
        if self.warmup_steps < 0:
            raise bad(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    @property
    def lora_scale(self) -> float:
        """``s`` in ``dW = s B A``: ``alpha / sqrt(r)`` with rsLoRA, else ``alpha / r``."""
        return self.lora_alpha / (self.lora_r ** 0.5 if self.use_rslora else self.lora_r)

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "train config") -> TrainConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {unknown}")
        try:
            return cls(**d)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("train config", where, 1)) from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"train config: not valid JSON ({exc.msg})") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrainConfig:
        return cls.from_dict(read_json(path), where=str(path))

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with fields changed (unknown names -> ``ConfigError``)."""
        return TrainConfig.from_dict({**self.to_dict(), **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    "standard": dict(
        lora_r=32, lora_alpha=64.0, use_rslora=True, target_modules=list(SEVEN_PROJECTIONS),
        lr=1e-5, epochs=1.0, batch_size=2, grad_accum=8, max_length=None, max_length_cap=2048,
        warmup_steps=5, lr_schedule="linear",
    ),
    "rank1": dict(
        lora_r=1, lora_alpha=512.0, use_rslora=True, target_modules=["down_proj"],
        lr=2e-5, epochs=1.0, batch_size=2, grad_accum=8, max_length=None, max_length_cap=2048,
        warmup_steps=5,
        lr_schedule="linear",
    ),
    "cpu-lora": dict(
        lora_r=8, lora_alpha=16.0, use_rslora=True, target_modules=list(SEVEN_PROJECTIONS),
        lr=3e-4, max_steps=40, batch_size=8, grad_accum=1, max_length=None, max_length_cap=256,
        warmup_steps=2,
        lr_schedule="constant", checkpoint_every=10,
        # EM data mixes one-line answers with long code listings: packed rows (position
        # ids restart per record, checked by ``check_packing``) skip the padding
        pack=True,
    ),
    "full": dict(
        full_finetune=True, lr=1e-5, epochs=1.0, batch_size=2, grad_accum=8, max_length=None,
        max_length_cap=2048, warmup_steps=5, lr_schedule="linear",
    ),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A named preset (``standard``, ``rank1``, ``cpu-lora``, ``full``) with fields overridden."""
    if name not in PRESETS:
        raise ConfigError(f"unknown training preset {name!r}: use one of {sorted(PRESETS)}")
    return TrainConfig.from_dict({**TrainConfig().to_dict(), **PRESETS[name], "name": name,
                                  **overrides})
