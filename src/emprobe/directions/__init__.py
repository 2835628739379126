"""Directions: extraction methods, the Direction artifact and converters to other tools' formats."""

from emprobe.directions.apply import (
    coefficient_sweep,
    misalignment_effect,
    random_like,
    steered_generate,
)
from emprobe.directions.direction import Direction, ModelMismatchError, data_provenance
from emprobe.directions.extract import (
    concept_vectors,
    cosine_matrix,
    factor_svd,
    finetuning_shift,
    fit_logistic,
    lora_direction,
    mean_difference,
    model_mean_difference,
    pca_difference,
    persona_vector,
    probe_direction,
    projection,
    random_components,
    sae_direction,
    screen_dataset,
    top_components,
)

__all__ = [
    "Direction",
    "ModelMismatchError",
    "coefficient_sweep",
    "concept_vectors",
    "cosine_matrix",
    "data_provenance",
    "factor_svd",
    "finetuning_shift",
    "fit_logistic",
    "lora_direction",
    "mean_difference",
    "model_mean_difference",
    "misalignment_effect",
    "pca_difference",
    "persona_vector",
    "probe_direction",
    "projection",
    "random_components",
    "random_like",
    "sae_direction",
    "screen_dataset",
    "steered_generate",
    "top_components",
]
