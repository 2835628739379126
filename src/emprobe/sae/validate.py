"""Validation of SAELens-format SAE folders before SAELens reads them.

SAELens trusts ``cfg.json`` and the weights: a NaN weight, a ``k`` of 0 or 4.5, a ``d_in``
that disagrees with ``W_enc`` or a JumpReLU folder without a ``threshold`` would load and
then fail (or silently mislead) deep inside an experiment. The checks live in
``emprobe.saelens_format`` (shared with ``emprobe.directions``); see its docstring for the
full list. :func:`validate_sae_folder` runs them and returns the checked config.
"""

from __future__ import annotations

import os

from emprobe.saelens_format import MAX_SAE_WIDTH, read_sae_folder

__all__ = ["validate_sae_folder", "MAX_SAE_WIDTH"]


def validate_sae_folder(path: str | os.PathLike[str]) -> dict[str, object]:
    """Check an SAE folder (config, weights, site); returns the checked ``cfg.json`` in
    SAELens 6's inference layout (``architecture``, ``d_in``, ``d_sae``, ``k``, ...).

    Raises:
        FormatError: a missing file, a wrong type, a non-finite weight or a bad value.
        ShapeError: weights whose shapes disagree with ``d_in`` / ``d_sae``.
    """
    return read_sae_folder(path).cfg
