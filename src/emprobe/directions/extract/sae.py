"""Directions from SAE latents: decoder rows of chosen latents, orthonormalised by QR."""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence

import torch

from emprobe.directions.direction import Direction
from emprobe.errors import EmprobeError, FormatError, ShapeError
from emprobe.hooks.convention import SITES
from emprobe.saelens_format import read_sae_folder
from emprobe.validate import MAX_LAYER, check_int, check_str, check_tensor, excerpt


def read_saelens(folder: str | os.PathLike[str]) -> tuple[torch.Tensor, dict[str, object]]:
    """``W_dec [n_latents, d]`` (float32) and the checked ``cfg.json`` of a SAELens folder.

    The folder is read by ``emprobe.saelens_format.read_sae_folder``: types, finite weights,
    shapes against ``d_in`` / ``d_sae`` and the architecture's tensors are all checked.
    """
    sae = read_sae_folder(folder)
    return sae.W_dec.float(), sae.cfg


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
    layer, site and model come from its ``cfg.json`` / ``emprobe.json`` (hook
    ``blocks.{l}.hook_resid_post`` = emprobe resid_post ``l``) unless given.
    Every error is one line naming the folder (or "decoder" for a tensor) and the field.
    """
    where = "decoder" if isinstance(decoder, torch.Tensor) else str(decoder)
    hook: str | None = None
    meta_model: str | None = None
    if isinstance(decoder, torch.Tensor):
        w_dec = check_tensor(decoder, "decoder", ndims=(2,), error=ShapeError).float()
    else:
        sae = read_sae_folder(decoder)
        w_dec, hook, meta_model = sae.W_dec.float(), sae.hook_name, sae.model_name
        site = sae.site if site is None else site
        layer = sae.layer if layer is None else layer
    idx = _latents(latents, int(w_dec.shape[0]), where)
    if layer is None:
        raise FormatError(f"{where}: cannot tell the layer from hook {excerpt(hook, 60)}; "
                          "pass layer=")
    layer = check_int(layer, f"{where}: layer", min_value=0, max_value=MAX_LAYER)
    site = check_str("resid_post" if site is None else site, f"{where}: site", choices=SITES)
    rows = w_dec[idx].T  # [d, k]
    if orthonormalise:
        if torch.linalg.matrix_rank(rows) < rows.shape[1]:
            raise ShapeError(f"{where}: decoder rows of latents {excerpt(idx, 60)} are linearly "
                             "dependent (no orthonormal basis of that size)")
        q, r = torch.linalg.qr(rows)
        sign = torch.sign(torch.diagonal(r))
        sign[sign == 0] = 1
        basis = q * sign  # column i keeps the sense of latent i's decoder row
    else:
        basis = rows
    try:
        return Direction(
            vectors={layer: basis}, model=str(model or meta_model or "unknown"),
            d_model=int(w_dec.shape[1]), site=site, positions="all",
            normalisation="orthonormal" if orthonormalise else "none",
            sign="QR basis of the decoder rows (column signs follow QR)", method="sae_latents",
            params={"latents": idx, "hook_name": hook,
                    "source": None if isinstance(decoder, torch.Tensor) else str(decoder)},
        )
    except EmprobeError as exc:
        raise type(exc)(f"{where}: {exc}") from None


def _latents(latents: Sequence[int], n: int, where: str) -> list[int]:
    """Integer latent ids in ``0..n-1`` (bools, floats and strings refused)."""
    if isinstance(latents, (str, bytes)) or not isinstance(latents, Sequence) or not latents:
        raise ShapeError(f"{where}: latents must be a non-empty list of latent ids, got "
                         f"{excerpt(latents, 60)}")
    idx = [check_int(int(i) if isinstance(i, numbers.Integral) and not isinstance(i, bool)
                     else i, f"{where}: latent", error=ShapeError) for i in latents]
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise ShapeError(f"{where}: latents {excerpt(bad, 60)} out of range 0..{n - 1}")
    return idx
