"""SAE input normalisation the SAELens way: ``normalize_activations="expected_average_only_in"``.

SAELens (its ``ActivationScaler``, used by ``SAETrainer``) multiplies every activation row by
one constant

    s = sqrt(d_in) / mean_i ||x_i||_2        (x_i: [d_in] rows of the first
                                              ``n_batches_for_norm_estimate`` batches)

so that the mean *norm* of the training inputs is ``sqrt(d_in)`` whatever the model's scale
(Gemma's residual norms reach tens of thousands, SmolLM2's stay near ten). The SAE trains on
``s * x``; when training ends the trainer folds ``s`` into the weights
(``SAE.fold_activation_norm_scaling_factor``: ``W_enc * s``, ``W_dec / s``, ``b_dec / s``, and
BatchTopK's threshold when activations are rescaled by decoder norms) and sets the config's
``normalize_activations`` to ``"none"``: the saved SAE reads raw activations and says so.

The estimate consumes those first batches of the data provider (as SAELens' does), so a
run that estimates here and hands the factor to the trainer trains on exactly the batches
SAELens' own estimate would leave it.

Recorded in the folders emprobe writes: ``cfg.json`` metadata
``emprobe_folded_norm_scaling_factor`` (already folded: nothing to apply) and ``emprobe.json``
``norm_scaling_factor``. A foreign folder whose ``cfg.json`` still says
``expected_average_only_in`` holds *unfolded* weights, which SAELens' ``load_from_disk`` runs
on raw activations unchanged; SAELens' pretrained directory keeps their factor as
``norm_scaling_factor``. :func:`emprobe.sae.folder.load_sae` folds a ``norm_scaling_factor``
found in the metadata and warns when there is none.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from emprobe.errors import DataError

__all__ = ["FOLDED_KEY", "NORM_MODES", "UNFOLDED_KEY", "estimate_norm_scaling_factor"]

NORM_MODES = ("none", "expected_average_only_in")
"""The ``normalize_activations`` values emprobe trains with (SAELens' names)."""
FOLDED_KEY = "emprobe_folded_norm_scaling_factor"
"""``cfg.json`` metadata key: the factor trained with, already folded into the weights."""
UNFOLDED_KEY = "norm_scaling_factor"
"""SAELens' name of a factor still to apply (``pretrained_saes.yaml``; here: metadata)."""


@torch.no_grad()
def estimate_norm_scaling_factor(batches: Iterator[torch.Tensor], d_in: int,
                                 n_batches: int) -> float:
    """``sqrt(d_in) / mean row norm`` over the next ``n_batches`` batches ``[rows, d_in]``.

    Norms are summed in float32 then as a Python float, SAELens' arithmetic, so the factor is
    the one its trainer would estimate from the same batches.

    Raises:
        DataError: no rows, or a mean norm that is zero or not finite.
    """
    if n_batches < 1:
        raise DataError(f"norm scaling estimate: n_batches must be >= 1, got {n_batches}")
    total, count = 0.0, 0
    for _ in range(n_batches):
        norms = next(batches).norm(dim=-1)
        total += norms.float().sum().item()
        count += norms.numel()
    mean = total / count if count else 0.0
    if not (math.isfinite(mean) and mean > 0):
        raise DataError(f"norm scaling estimate: mean activation norm is {mean} over {count} "
                        "rows; the activations cannot be normalised")
    return d_in**0.5 / mean
