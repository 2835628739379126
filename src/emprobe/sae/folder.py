"""SAELens-format SAE folders in and out of SAELens: ``load_sae`` and the site an SAE reads.

Every folder is read once by ``emprobe.saelens_format.read_sae_folder`` (types, finiteness,
shapes against the config, architecture against the tensors, site names); SAELens then
builds its SAE from exactly what was checked (a ``converter`` hands it the checked config
and weights), so SAELens never parses a file emprobe has not validated.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from emprobe.errors import FormatError
from emprobe.sae.normalise import UNFOLDED_KEY
from emprobe.saelens_format import (
    hook_site,
    read_sae_config,
    read_sae_folder,
    site_of_metadata,
)
from emprobe.validate import excerpt, one_line

if TYPE_CHECKING:
    from sae_lens import SAE, SAEConfig

__all__ = ["load_sae", "sae_site", "site_from_hook_name"]


def load_sae(path: str | os.PathLike[str], device: str = "cpu") -> SAE[SAEConfig]:
    """Load a SAELens-format folder (``cfg.json`` + ``sae_weights.safetensors``) as SAELens'
    inference SAE, after :func:`emprobe.saelens_format.read_sae_folder` has checked it.

    A ``cfg.json`` that says ``normalize_activations: "expected_average_only_in"`` holds
    weights that expect scaled inputs: its metadata's ``norm_scaling_factor`` is folded in
    (SAELens' ``fold_activation_norm_scaling_factor``, as its ``from_pretrained`` does), so
    the SAE reads raw activations; without one a warning says the inputs are not scaled
    (SAELens' ``load_from_disk`` ignores the setting). See ``emprobe.sae.normalise``.

    Raises:
        FormatError / ShapeError: naming the file and field, for any folder that is not a
            consistent SAE (see ``emprobe.saelens_format``).
    """
    import sae_lens

    folder = read_sae_folder(path)

    def converter(path: str | Path, device: str = "cpu",  # noqa: ARG001 - SAELens' signature
                  cfg_overrides: dict[str, object] | None = None,  # noqa: ARG001
                  ) -> tuple[dict[str, object], dict[str, torch.Tensor]]:
        dev = device
        cfg = {**folder.cfg, "device": str(dev), "metadata": dict(folder.cfg["metadata"]),
               "sae_lens_version": sae_lens.__version__}  # already in SAELens 6's layout
        assert folder.tensors is not None
        return cfg, {k: v.to(dev) for k, v in folder.tensors.items()}

    try:
        sae = sae_lens.SAE.load_from_disk(str(folder.path), device=device, converter=converter)
    except (KeyError, ValueError, RuntimeError, TypeError, AttributeError) as exc:
        raise FormatError(f"{folder.path}: SAELens could not build the SAE "
                          f"({type(exc).__name__}: {one_line(exc, 160)})") from None
    _fold_pending_scale(sae, folder.cfg["normalize_activations"], folder.cfg["metadata"],
                        folder.path / "cfg.json")
    return sae


def _fold_pending_scale(sae: SAE[SAEConfig], normalize: str, metadata: Mapping[str, object],
                        where: Path) -> None:
    """Fold a recorded ``norm_scaling_factor`` into an SAE whose config still asks for
    ``expected_average_only_in``; warn when the factor is missing."""
    if normalize != "expected_average_only_in":
        return
    factor = metadata.get(UNFOLDED_KEY)
    if not isinstance(factor, (int, float)):  # absent (the reader checked its type)
        warnings.warn(f"{where}: normalize_activations is 'expected_average_only_in' but the "
                      f"metadata has no {UNFOLDED_KEY}: the SAE reads unscaled activations",
                      stacklevel=3)
        return
    sae.fold_activation_norm_scaling_factor(float(factor))


def sae_site(sae: object, folder: str | os.PathLike[str] | None = None) -> tuple[str, int]:
    """The emprobe ``(site, layer)`` an SAE reads: from the folder (``emprobe.json``, the cfg
    metadata or the hook name, checked to agree), else from the loaded SAE's metadata.

    Raises:
        FormatError: the folder or metadata names no site emprobe knows (one line naming it).
    """
    if folder is not None:
        info = read_sae_config(folder)
        if info.site is None or info.layer is None:
            raise FormatError(f"{info.path}: cannot tell the site: hook name "
                              f"{excerpt(info.hook_name, 60)} maps to no emprobe (site, layer)")
        return info.site, info.layer
    md = getattr(getattr(sae, "cfg", None), "metadata", None)
    to_dict = getattr(md, "to_dict", None)
    raw = to_dict() if callable(to_dict) else md
    if not isinstance(raw, dict):
        raise FormatError(f"SAE metadata: expected a mapping, got {type(raw).__name__}")
    site, layer = site_of_metadata(raw, "SAE metadata")
    if site is None or layer is None:
        return site_from_hook_name(raw.get("hook_name") or "")
    return site, layer


def site_from_hook_name(hook: object) -> tuple[str, int]:
    """TransformerLens hook names (HookedTransformer or bridge) -> emprobe ``(site, layer)``."""
    found = hook_site(hook) if isinstance(hook, str) else None
    if found is None:
        raise FormatError(f"cannot map hook name {excerpt(hook, 60)} to an emprobe "
                          "(site, layer)")
    return found

