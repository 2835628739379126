"""Validation of SAELens-format SAE folders before SAELens reads them.

SAELens trusts ``cfg.json`` and the weights: a NaN weight, a ``k`` of 0 or 4.5, or a
``d_in`` that disagrees with ``W_enc`` would load and then fail (or silently mislead) deep
inside an experiment. :func:`validate_sae_folder` checks, with one-line errors naming the
file and key:

- ``cfg.json``: a JSON object (no NaN / Infinity); ``d_in`` and ``d_sae`` positive ints;
  ``architecture`` a string; ``k`` (top-k SAEs) an integer in ``1..d_sae``; ``dtype`` a
  real floating type; ``metadata`` an object;
- ``sae_weights.safetensors``: readable, real floating tensors, all finite;
  ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]`` and
  (JumpReLU) ``threshold [d_sae]``;
- ``emprobe.json`` (when present): ``site`` a string and ``layer`` a non-negative int.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from emprobe.errors import FormatError, ShapeError
from emprobe.io import load_tensors, read_json_object
from emprobe.validate import (
    FLOAT_DTYPES,
    check_int,
    check_mapping,
    check_str,
    check_tensor,
    excerpt,
)

__all__ = ["validate_sae_folder", "MAX_SAE_WIDTH"]

MAX_SAE_WIDTH = 1 << 24
"""Largest ``d_in`` / ``d_sae`` accepted (16 M latents)."""
TOPK_ARCHITECTURES = ("topk", "batchtopk")


def validate_sae_folder(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check an SAE folder (see the module docstring); returns the parsed ``cfg.json``.

    Raises:
        FormatError: a missing file, a wrong type, a non-finite weight or a bad value.
        ShapeError: weights whose shapes disagree with ``d_in`` / ``d_sae``.
    """
    folder = Path(path)
    cfg_path, weights_path = folder / "cfg.json", folder / "sae_weights.safetensors"
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise FormatError(f"{folder}: not an SAELens folder (no {p.name})")
    cfg = read_json_object(cfg_path)
    where = str(cfg_path)
    for key in ("d_in", "d_sae"):
        if key not in cfg:
            raise FormatError(f"{cfg_path}: missing {key!r}")
    d_in = check_int(cfg["d_in"], f"{where}: 'd_in'", min_value=1, max_value=MAX_SAE_WIDTH)
    d_sae = check_int(cfg["d_sae"], f"{where}: 'd_sae'", min_value=1, max_value=MAX_SAE_WIDTH)
    arch = cfg.get("architecture", "standard")
    check_str(arch, f"{where}: 'architecture'", non_empty=True)
    if "k" in cfg or arch in TOPK_ARCHITECTURES:
        if "k" not in cfg:
            raise FormatError(f"{cfg_path}: architecture {excerpt(arch, 30)} needs 'k'")
        check_int(cfg["k"], f"{where}: 'k'", min_value=1, max_value=d_sae, integral_float=True)
    if cfg.get("dtype") is not None:
        dtype = check_str(cfg["dtype"], f"{where}: 'dtype'").removeprefix("torch.")
        if dtype not in FLOAT_DTYPES:
            raise FormatError(f"{cfg_path}: 'dtype' {excerpt(cfg['dtype'], 30)} is not one of "
                              f"{', '.join(FLOAT_DTYPES)}")
    if cfg.get("metadata") is not None:
        check_mapping(cfg["metadata"], f"{where}: 'metadata'")

    tensors = load_tensors(weights_path)
    for key, t in tensors.items():
        check_tensor(t, f"{weights_path}: {excerpt(key, 60)}", ndims=(0, 1, 2, 3))
    expected = {"W_enc": [d_in, d_sae], "W_dec": [d_sae, d_in], "b_enc": [d_sae],
                "b_dec": [d_in], "threshold": [d_sae]}
    for key in ("W_enc", "W_dec"):
        if key not in tensors:
            raise FormatError(f"{weights_path}: missing tensor {key!r}")
    for key, shape in expected.items():
        if key in tensors and list(tensors[key].shape) != shape:
            raise ShapeError(f"{weights_path}: {key} has shape {list(tensors[key].shape)} but "
                             f"cfg.json says {shape} (d_in={d_in}, d_sae={d_sae})")

    side = folder / "emprobe.json"
    if side.is_file():
        rec = read_json_object(side)
        if "site" in rec or "layer" in rec:
            check_str(rec.get("site"), f"{side}: 'site'", non_empty=True)
            check_int(rec.get("layer"), f"{side}: 'layer'", min_value=0)
    return cfg
