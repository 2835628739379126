"""Types of emprobe's front door (the module imports these names lazily)."""

from emprobe._version import __version__ as __version__
from emprobe.directions.direction import Direction as Direction
from emprobe.errors import EmprobeError as EmprobeError
from emprobe.evaluate.controls import versus_controls as versus_controls
from emprobe.evaluate.local import compare as compare_scores
from emprobe.evaluate.local import local_score as local_score
from emprobe.evaluate.stats import Estimate as Estimate
from emprobe.geometry.compare import compare_adapters as compare_adapters
from emprobe.hooks.capture import capture as capture
from emprobe.hooks.capture import collect as collect
from emprobe.hooks.patch import Ablate as Ablate
from emprobe.hooks.patch import Project as Project
from emprobe.hooks.patch import Steer as Steer
from emprobe.hooks.patch import ablate as ablate
from emprobe.hooks.patch import record_projections as record_projections
from emprobe.hooks.patch import steer as steer
from emprobe.models.adapter import read_adapter as read_adapter
from emprobe.models.subject import Subject as Subject
from emprobe.models.subject import load_model as load_model
from emprobe.sae.causal import steering_check as steering_check
from emprobe.sae.crosscoder import train_crosscoder as train_crosscoder
from emprobe.sae.diff import diff_latents as diff_latents
from emprobe.sae.folder import load_sae as load_sae
from emprobe.sae.training import train_sae as train_sae
from emprobe.train.config import TrainConfig as TrainConfig
from emprobe.train.trainer import finetune as finetune

__all__ = [
    "Ablate",
    "Direction",
    "EmprobeError",
    "Estimate",
    "Project",
    "Steer",
    "Subject",
    "TrainConfig",
    "__version__",
    "ablate",
    "capture",
    "collect",
    "compare_adapters",
    "compare_scores",
    "diff_latents",
    "finetune",
    "load_model",
    "load_sae",
    "local_score",
    "read_adapter",
    "record_projections",
    "steer",
    "steering_check",
    "train_crosscoder",
    "train_sae",
    "versus_controls",
]
