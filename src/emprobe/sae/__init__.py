"""SAEs: harvesting, training through SAELens, model diffing and crosscoders.

May import ``emprobe.models``, ``emprobe.hooks`` and (inside functions only)
``emprobe.data``, ``emprobe.evaluate`` and ``emprobe.train``. SAEs are saved in SAELens'
folder format; see ``docs/sae.md``.
"""

from emprobe.sae.causal import (
    as_interval,
    decoder_direction,
    default_scorer,
    latent_mean,
    realignment_curve,
    steering_check,
)
from emprobe.sae.corpus import context_corpus, eval_question_chats, generic_chats
from emprobe.sae.crosscoder import (
    Crosscoder,
    CrosscoderConfig,
    classify_latents,
    harvest_pair,
    load_crosscoder,
    train_crosscoder,
)
from emprobe.sae.diff import (
    DiffResult,
    answer_attribution,
    diff_latents,
    pick_candidates,
    top_contexts,
    write_diff,
)
from emprobe.sae.harvest import Harvest, HarvestConfig, harvest, load_harvest
from emprobe.sae.metrics import (
    check_quality,
    evaluate_sae,
    reconstruction_metrics,
    spliced_metrics,
)
from emprobe.sae.predict import auroc, pearson, predictor_stats, spearman
from emprobe.sae.training import (
    ARCHITECTURES,
    SAETrainConfig,
    TrainedSAE,
    load_sae,
    memory_provider,
    sae_hook_name,
    sae_site,
    train_sae,
    train_saes,
)

__all__ = [
    "ARCHITECTURES",
    "Crosscoder",
    "CrosscoderConfig",
    "DiffResult",
    "Harvest",
    "HarvestConfig",
    "SAETrainConfig",
    "TrainedSAE",
    "answer_attribution",
    "as_interval",
    "auroc",
    "check_quality",
    "classify_latents",
    "context_corpus",
    "decoder_direction",
    "default_scorer",
    "diff_latents",
    "eval_question_chats",
    "evaluate_sae",
    "generic_chats",
    "harvest",
    "harvest_pair",
    "latent_mean",
    "load_crosscoder",
    "load_harvest",
    "load_sae",
    "memory_provider",
    "pearson",
    "pick_candidates",
    "predictor_stats",
    "realignment_curve",
    "reconstruction_metrics",
    "sae_hook_name",
    "sae_site",
    "spearman",
    "spliced_metrics",
    "steering_check",
    "top_contexts",
    "train_crosscoder",
    "train_sae",
    "train_saes",
    "write_diff",
]
