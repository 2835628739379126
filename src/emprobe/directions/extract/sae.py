"""Directions from SAE latents: decoder rows of chosen latents, orthonormalised by QR."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from emprobe.directions.direction import Direction
from emprobe.errors import FormatError, ShapeError
from emprobe.io import load_tensors, read_json

_HOOK_RE = re.compile(r"(?:blocks|layers)\.(\d+)\.(?:hook_)?(resid_post|resid_pre|mlp_out|attn_out|out|in)")
_SITE_ALIASES = {"out": "resid_post", "in": "resid_pre"}


def read_saelens(folder: str | os.PathLike[str]) -> tuple[torch.Tensor, dict]:
    """``W_dec [n_latents, d]`` and ``cfg.json`` of a SAELens folder (``sae_weights.safetensors``)."""
    p = Path(folder)
    cfg = read_json(p / "cfg.json")
    tensors = load_tensors(p / "sae_weights.safetensors")
    if "W_dec" not in tensors:
        raise FormatError(f"{p / 'sae_weights.safetensors'}: no W_dec tensor")
    return tensors["W_dec"].float(), cfg


def sae_direction(
    decoder: torch.Tensor | str | os.PathLike[str],
    latents: Sequence[int],
    layer: int | None = None,
    site: str | None = None,
    model: str | None = None,
    orthonormalise: bool = True,
) -> Direction:
    """Decoder rows of ``latents`` as a ``[d, k]`` basis at one layer.

    ``decoder`` is a ``[n_latents, d]`` tensor or a SAELens folder; from a folder the
    layer, site and model come from ``cfg.json`` (hook ``blocks.{l}.hook_resid_post``
    = emprobe resid_post ``l``) unless given.
    """
    cfg: dict = {}
    if isinstance(decoder, torch.Tensor):
        w_dec = decoder.float()
    else:
        w_dec, cfg = read_saelens(decoder)
    if w_dec.dim() != 2:
        raise ShapeError(f"decoder must be [n_latents, d]; got {tuple(w_dec.shape)}")
    if not latents:
        raise ShapeError("sae_direction: no latents chosen")
    bad = [i for i in latents if not 0 <= int(i) < w_dec.shape[0]]
    if bad:
        raise ShapeError(f"latents {bad} out of range 0..{w_dec.shape[0] - 1}")
    meta = {**cfg.get("metadata", {}), **cfg}
    hook = str(meta.get("hook_name", ""))
    m = _HOOK_RE.search(hook)
    if layer is None:
        if m is None:
            raise FormatError(f"cannot tell the layer from hook {hook!r}; pass layer=")
        layer = int(m.group(1))
    if site is None:
        site = _SITE_ALIASES.get(m.group(2), m.group(2)) if m else "resid_post"
    rows = w_dec[list(int(i) for i in latents)].T  # [d, k]
    if orthonormalise:
        q, r = torch.linalg.qr(rows)
        sign = torch.sign(torch.diagonal(r))
        sign[sign == 0] = 1
        basis = q * sign  # column i keeps the sense of latent i's decoder row
    else:
        basis = rows
    return Direction(
        vectors={int(layer): basis}, model=str(model or meta.get("model_name") or "unknown"),
        d_model=int(w_dec.shape[1]), site=site, positions="all",
        normalisation="orthonormal" if orthonormalise else "none",
        sign="QR basis of the decoder rows (column signs follow QR)", method="sae_latents",
        params={"latents": [int(i) for i in latents], "hook_name": hook or None,
                "source": None if isinstance(decoder, torch.Tensor) else str(decoder)},
    )
