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
    "score-validity": ("score_validity", "Local misalignment score: positive and negative controls"),
}


def default_out(name: str, quick: bool = False) -> Path:
    """``recipes-out/NAME`` (full) or ``recipes-out/NAME-quick``: the two never share a folder."""
    return Path("recipes-out") / (f"{name}-quick" if quick else name)


PRESETS = ("cpu", "gpu")


def recipe_config(quick: bool = False, config: str | os.PathLike[str] | LabConfig | None = None,
                  preset: str | None = None, **overrides: object) -> LabConfig:
    """The ``LabConfig`` of a run: quick, ``preset`` (``"cpu"``: the embedded-model defaults;
    ``"gpu"``: ``LabConfig.gpu_preset()``) or full defaults, then a YAML / JSON file (or a
    ``LabConfig``), then ``overrides`` (``None`` values skipped), checked field by field."""
    from emprobe.recipes.config import config_from_dict, load_config

    if preset is not None and preset not in PRESETS:
        raise EmprobeError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
    if quick and preset is not None:
        raise EmprobeError("--quick and --preset exclude each other")
    base = (LabConfig.quick_config() if quick else
            LabConfig.gpu_preset() if preset == "gpu" else LabConfig())
    if isinstance(config, LabConfig):
        base = config
        config = None
    cfg = load_config(LabConfig, config, base=base)
    return config_from_dict(LabConfig, {k: v for k, v in overrides.items() if v is not None},
                            where="recipe options", base=cfg)


def run_recipe(name: str, out: str | os.PathLike[str] | None = None, quick: bool = False,
               model: str | None = None, seed: int | None = None,
               config: str | os.PathLike[str] | LabConfig | None = None,
               device: str | None = None, dtype: str | None = None,
               preset: str | None = None) -> Path:
    """Run one recipe; returns the path of its HTML page (``results.json`` beside it).

    ``config``: a YAML / JSON file of ``LabConfig`` fields (or a ``LabConfig``); ``model``,
    ``seed``, ``device`` and ``dtype`` override it when given; ``preset="gpu"`` starts from
    ``LabConfig.gpu_preset()`` instead of the CPU defaults.
    """
    if name not in RECIPES:
        raise EmprobeError(f"unknown recipe {name!r}: use one of {', '.join(sorted(RECIPES))}")
    module, title = RECIPES[name]
    cfg = recipe_config(quick, config, preset, model=model, seed=seed, device=device,
                        dtype=dtype)
    try:
        mod = importlib.import_module(f"emprobe.recipes.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"emprobe.recipes.{module}":
            raise EmprobeError(f"recipe {name!r} is not implemented yet") from None
        raise
    lab = Lab(out or default_out(name, cfg.quick), cfg, title)
    mod.run(lab)
    return lab.finish()
