"""Training: LoRA / full fine-tuning with training-time interventions (CAFT, steering, GRASP),
regularisers, refusal unlearning and monitoring.

May import ``emprobe.models``, ``emprobe.hooks`` and ``emprobe.data``.
"""

from emprobe.train.config import PRESETS, TrainConfig, preset
from emprobe.train.interventions import (
    CAFT,
    GRASP,
    Intervention,
    PreventativeSteering,
    factor_svd,
    load_layer_tensors,
)
from emprobe.train.realign import emprobe_realign_fn
from emprobe.train.trainer import Trainer, TrainResult, finetune, validate_setup

__all__ = [
    "CAFT",
    "GRASP",
    "PRESETS",
    "Intervention",
    "PreventativeSteering",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "emprobe_realign_fn",
    "factor_svd",
    "finetune",
    "load_layer_tensors",
    "preset",
    "validate_setup",
]
