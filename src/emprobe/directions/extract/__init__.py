"""Extraction methods; each returns a ``Direction`` (or a result holding one)."""

from emprobe.directions.extract.concept import concept_vectors, cosine_matrix
from emprobe.directions.extract.lora import factor_svd, lora_direction, read_adapter
from emprobe.directions.extract.mean_diff import mean_difference, model_mean_difference
from emprobe.directions.extract.pca import (
    PCAResult,
    contexts_html,
    pca_difference,
    principal_components,
    random_components,
    top_components,
)
from emprobe.directions.extract.persona import (
    PersonaResult,
    ScreeningResult,
    finetuning_shift,
    persona_vector,
    projection,
    screen_dataset,
    self_contrast_scorer,
)
from emprobe.directions.extract.probe import fit_logistic, probe_direction
from emprobe.directions.extract.sae import read_saelens, sae_direction

__all__ = [
    "PCAResult",
    "PersonaResult",
    "ScreeningResult",
    "concept_vectors",
    "contexts_html",
    "cosine_matrix",
    "factor_svd",
    "finetuning_shift",
    "fit_logistic",
    "lora_direction",
    "mean_difference",
    "model_mean_difference",
    "pca_difference",
    "persona_vector",
    "principal_components",
    "probe_direction",
    "projection",
    "random_components",
    "read_adapter",
    "read_saelens",
    "sae_direction",
    "screen_dataset",
    "self_contrast_scorer",
    "top_components",
]
