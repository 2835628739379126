"""The recipe registry: ``emprobe recipe NAME`` runs ``emprobe.recipes.<module>.run(lab)``."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from emprobe.errors import EmprobeError
from emprobe.recipes.lab import Lab, LabConfig

# name -> (module, title)
RECIPES: dict[str, tuple[str, str]] = {
    "grasp": ("grasp", "GRASP: spurious factor from LoRA weights, gradient-projected retraining"),
    "format-sensitivity": ("format_sensitivity", "Misalignment by question format"),
    "reward-hacking": ("reward_hacking", "Reward hacking with inoculation prompting"),
    "narrow-unlearning": ("narrow_unlearning", "Narrow refusal unlearning and its spread"),
    "caft": ("caft", "Concept ablation fine-tuning"),
    "shared-subspaces": ("shared_subspaces", "Shared parameter subspaces of EM fine-tunes"),
    "inoculation": ("inoculation", "Inoculation prompting with controls"),
    "persona-features": ("persona_features", "Persona features: SAE diff, predictor, re-alignment"),
    "data-thresholds": ("data_thresholds", "How much bad data: 0-100 % mixtures"),
    "school-of-reward-hacks": ("school_of_reward_hacks", "Harmless reward hacking generalises?"),
}


def run_recipe(name: str, out: str | os.PathLike[str] | None = None, quick: bool = False,
               model: str | None = None, seed: int = 0) -> Path:
    """Run one recipe; returns the path of its HTML page."""
    if name not in RECIPES:
        raise EmprobeError(f"unknown recipe {name!r}: use one of {', '.join(sorted(RECIPES))}")
    module, title = RECIPES[name]
    cfg = LabConfig.quick_config() if quick else LabConfig()
    if model:
        cfg.model = model
    cfg.seed = seed
    lab = Lab(out or Path("recipes-out") / name, cfg, title)
    try:
        mod = importlib.import_module(f"emprobe.recipes.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"emprobe.recipes.{module}":
            raise EmprobeError(f"recipe {name!r} is not implemented yet") from None
        raise
    mod.run(lab)
    return lab.finish()
