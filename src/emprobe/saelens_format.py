"""The SAELens folder format: one validated reader shared by ``emprobe.sae`` and
``emprobe.directions`` (a folder other tools wrote is external input like any file).

A SAELens inference folder holds ``cfg.json`` and ``sae_weights.safetensors`` (and, when
emprobe trained it, ``emprobe.json``). :func:`read_sae_config` checks the config and the
site it names; :func:`read_sae_folder` also reads the weights and checks them against the
config. Every error is one ``FormatError`` (``ShapeError`` for shapes) line that names the
file and the field.

``cfg.json`` (SAELens 6 layout; the pre-6 layout's ``hook_point``, ``activation_fn`` /
``activation_fn_kwargs.k`` and boolean ``normalize_activations`` are read the way SAELens
reads them):

- ``architecture``: one of :data:`ARCHITECTURES` (default ``standard``);
- ``d_in``, ``d_sae``: integers in ``1..MAX_SAE_WIDTH`` (floats, bools, strings refused);
- ``k`` (``topk`` / ``abstopk``, required there): an integer in ``1..d_sae``;
- ``apply_b_dec_to_input``, ``rescale_acts_by_decoder_norm``: JSON booleans;
- ``dtype``: a real floating type; ``normalize_activations``, ``reshape_activations``: one of
  SAELens' values;
- ``metadata`` (an object): ``hook_name`` / ``model_name`` strings, ``emprobe_site`` a known
  site, ``emprobe_layer`` a layer index, ``sae_lens_version`` a version string,
  ``norm_scaling_factor`` / ``emprobe_folded_norm_scaling_factor`` positive numbers (an input
  scale still to apply / already folded: ``emprobe.sae.normalise``); the site and
  layer from ``emprobe_*``, from the hook name and from ``emprobe.json`` must agree.

Weights: real floating tensors, all finite (also after the cast to ``dtype``), exactly the
tensors the architecture has (``threshold`` only for JumpReLU, ``b_gate`` / ``b_mag`` /
``r_mag`` only for gated), each of the shape ``d_in`` / ``d_sae`` give.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from emprobe.errors import FormatError, ShapeError
from emprobe.hooks.convention import SITES
from emprobe.io import load_tensors, read_json_object
from emprobe.validate import (
    FLOAT_DTYPES,
    MAX_LAYER,
    check_bool,
    check_int,
    check_mapping,
    check_number,
    check_str,
    excerpt,
)

__all__ = ["ARCHITECTURES", "MAX_SAE_WIDTH", "SAEConfigInfo", "SAEFolder", "hook_site",
           "read_sae_config", "read_sae_folder", "site_of_metadata"]

MAX_SAE_WIDTH = 1 << 24
"""Largest ``d_in`` / ``d_sae`` accepted (16 M latents)."""
CFG_FILE, WEIGHTS_FILE, EMPROBE_FILE = "cfg.json", "sae_weights.safetensors", "emprobe.json"

# tensor -> dims in units of (d_in, d_sae); the tensors each inference architecture has
_SHAPES = {"W_enc": ("d_in", "d_sae"), "W_dec": ("d_sae", "d_in"), "b_enc": ("d_sae",),
           "b_dec": ("d_in",), "threshold": ("d_sae",), "b_gate": ("d_sae",),
           "b_mag": ("d_sae",), "r_mag": ("d_sae",)}
_BASE = ("W_enc", "W_dec", "b_enc", "b_dec")
ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "standard": _BASE, "topk": _BASE, "abstopk": _BASE, "jumprelu": (*_BASE, "threshold"),
    "gated": ("W_enc", "W_dec", "b_dec", "b_gate", "b_mag", "r_mag"),
}
TOPK = ("topk", "abstopk")
NORMALIZE = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm",
             "covariance_whitening")
RESHAPE = ("none", "hook_z")
# SAELens' pre-6 layout keeps these at the top level; 6.x keeps them under "metadata"
_LEGACY_META = ("model_name", "hook_name", "model_class_name", "hook_head_index",
                "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens",
                "neuronpedia_id", "context_size", "seqpos_slice", "dataset_path",
                "sae_lens_version", "sae_lens_training_version")
_META_STR = ("model_name", "hook_name", "model_class_name", "neuronpedia_id", "dataset_path",
             "emprobe_hook_name_bridge", "emprobe_layer_convention", "emprobe_positions",
             "sae_lens_version", "sae_lens_training_version")
# input scales (emprobe.sae.normalise): still to apply / already folded into the weights
_META_SCALE = ("norm_scaling_factor", "emprobe_folded_norm_scaling_factor")

_HOOK = re.compile(
    r"^(?:.*\.)?(?:blocks|layers)\.(0|[1-9][0-9]{0,3})\.(hook_resid_post|hook_resid_pre|"
    r"hook_attn_out|hook_mlp_out|hook_out|hook_in|attn\.hook_out|mlp\.hook_out|resid_post|"
    r"resid_pre|attn_out|mlp_out|out|in)$")
_HOOK_SITES = {"hook_resid_post": "resid_post", "hook_out": "resid_post", "out": "resid_post",
               "hook_resid_pre": "resid_pre", "hook_in": "resid_pre", "in": "resid_pre",
               "hook_attn_out": "attn_out", "attn.hook_out": "attn_out",
               "hook_mlp_out": "mlp_out", "mlp.hook_out": "mlp_out"}


def hook_site(hook: str) -> tuple[str, int] | None:
    """TransformerLens / SAELens hook name -> emprobe ``(site, layer)``, or None when the name
    is no block-output hook emprobe knows (``blocks.4.hook_resid_post``,
    ``blocks.4.mlp.hook_out``, ``model.layers.4.resid_post``, ...)."""
    m = _HOOK.match(hook)
    if m is None:
        return None
    tail = m.group(2)
    return _HOOK_SITES.get(tail, tail), int(m.group(1))


@dataclass(frozen=True)
class SAEConfigInfo:
    """A checked ``cfg.json`` (normalised to SAELens 6's inference layout) and the site it reads.

    Attributes:
        path: the folder.
        cfg: ``architecture``, ``d_in``, ``d_sae``, ``dtype``, ``apply_b_dec_to_input``,
            ``normalize_activations``, ``reshape_activations``, ``metadata`` (+ ``k``,
            ``rescale_acts_by_decoder_norm`` for TopK), every value checked.
        site, layer: the emprobe site and block it reads (None when the folder does not say).
    """

    path: Path
    cfg: dict[str, Any]
    site: str | None
    layer: int | None

    @property
    def architecture(self) -> str:
        return str(self.cfg["architecture"])

    @property
    def d_in(self) -> int:
        return int(self.cfg["d_in"])

    @property
    def d_sae(self) -> int:
        return int(self.cfg["d_sae"])

    @property
    def k(self) -> int | None:
        return self.cfg.get("k")

    @property
    def hook_name(self) -> str | None:
        return self.cfg["metadata"].get("hook_name")

    @property
    def model_name(self) -> str | None:
        return self.cfg["metadata"].get("model_name")


@dataclass(frozen=True)
class SAEFolder(SAEConfigInfo):
    """``SAEConfigInfo`` plus the weights: ``tensors`` maps the architecture's tensor names to
    finite tensors of ``cfg["dtype"]``: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``,
    ``b_enc`` / ``threshold`` / ``b_gate`` / ``b_mag`` / ``r_mag`` ``[d_sae]``, ``b_dec [d_in]``."""

    tensors: dict[str, torch.Tensor] | None = None

    @property
    def W_dec(self) -> torch.Tensor:  # noqa: N802 - SAELens' name
        assert self.tensors is not None
        return self.tensors["W_dec"]


def read_sae_config(path: str | os.PathLike[str]) -> SAEConfigInfo:
    """Check ``cfg.json`` (and ``emprobe.json`` when present) of a SAELens folder.

    Raises:
        FormatError: a missing file, a wrong type, an unknown value or a site that disagrees.
    """
    folder = Path(path)
    for name in (CFG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FormatError(f"{folder}: not an SAELens folder (no {name})")
    cfg_path = folder / CFG_FILE
    raw = read_json_object(cfg_path)
    cfg = _normalise(raw, str(cfg_path))
    site, layer = site_of_metadata(cfg["metadata"], f"{cfg_path}: metadata")
    side = folder / EMPROBE_FILE
    if side.is_file():
        rec = read_json_object(side)
        if "site" in rec or "layer" in rec:
            rec_site = check_str(rec.get("site"), f"{side}: 'site'", choices=SITES)
            rec_layer = check_int(rec.get("layer"), f"{side}: 'layer'", min_value=0,
                                  max_value=MAX_LAYER)
            if site is not None and (site, layer) != (rec_site, rec_layer):
                raise FormatError(f"{side}: site {rec_site} layer {rec_layer} disagrees with "
                                  f"{CFG_FILE} ({site} layer {layer})")
            site, layer = rec_site, rec_layer
    return SAEConfigInfo(path=folder, cfg=cfg, site=site, layer=layer)


def read_sae_folder(path: str | os.PathLike[str]) -> SAEFolder:
    """:func:`read_sae_config` plus the weights, checked against it (see the module docstring).

    Raises:
        FormatError: a bad config, a missing or extra tensor, a non-real or non-finite weight.
        ShapeError: a tensor whose shape disagrees with ``d_in`` / ``d_sae``.
    """
    info = read_sae_config(path)
    weights = info.path / WEIGHTS_FILE
    tensors = _check_weights(load_tensors(weights), info.cfg, str(weights))
    return SAEFolder(path=info.path, cfg=info.cfg, site=info.site, layer=info.layer,
                     tensors=tensors)


def _version(raw: Mapping[str, object], where: str) -> tuple[int, ...] | None:
    """SAELens' version of a config (top level, then metadata), as numbers; None when absent."""
    meta = raw.get("metadata")
    value = raw.get("sae_lens_version")
    if not value and isinstance(meta, Mapping):
        value = meta.get("sae_lens_version")
    if not value:
        return None
    text = check_str(value, f"{where}: 'sae_lens_version'")
    m = re.match(r"^v?([0-9]{1,6})(?:\.([0-9]{1,6}))?(?:\.([0-9]{1,6}))?", text)
    if m is None:
        raise FormatError(f"{where}: 'sae_lens_version' {excerpt(text, 30)} is not a version")
    from packaging.version import InvalidVersion, Version

    try:
        Version(text)
    except InvalidVersion:
        raise FormatError(f"{where}: 'sae_lens_version' {excerpt(text, 30)} is not a "
                          "version") from None
    return tuple(int(g) for g in m.groups() if g is not None)


def _legacy(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """A pre-6 SAELens config in the 6.x layout (renamed keys, metadata gathered)."""
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
               "activation_fn_str": "activation_fn"}
    cfg = {renames.get(k, k): v for k, v in raw.items()}
    kwargs = cfg.get("activation_fn_kwargs")
    if cfg.get("activation_fn") == "topk" and kwargs is not None:
        kwargs = check_mapping(kwargs, f"{where}: 'activation_fn_kwargs'")
        if kwargs.get("k") is not None:
            cfg["architecture"], cfg["k"] = "topk", kwargs["k"]
    meta = cfg.get("metadata")
    meta = {} if meta is None else check_mapping(meta, f"{where}: 'metadata'")
    cfg["metadata"] = {**{k: cfg[k] for k in _LEGACY_META if k in cfg}, **meta}
    hook = cfg["metadata"].get("hook_name")
    if "reshape_activations" not in cfg and isinstance(hook, str) and "hook_z" in hook:
        cfg["reshape_activations"] = "hook_z"
    return cfg


def _normalise(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """The checked inference config (see the module docstring) of a parsed ``cfg.json``."""
    version = _version(raw, where)
    src = _legacy(raw, where) if version is None or version < (6,) else dict(raw)
    arch = check_str(src.get("architecture", "standard"), f"{where}: 'architecture'")
    if arch not in ARCHITECTURES:
        raise FormatError(f"{where}: 'architecture' {excerpt(arch, 40)} is not an SAE emprobe "
                          f"reads (use one of {', '.join(ARCHITECTURES)})")
    for key in ("d_in", "d_sae"):
        if key not in src:
            raise FormatError(f"{where}: missing {key!r}")
    d_in = check_int(src["d_in"], f"{where}: 'd_in'", min_value=1, max_value=MAX_SAE_WIDTH)
    d_sae = check_int(src["d_sae"], f"{where}: 'd_sae'", min_value=1, max_value=MAX_SAE_WIDTH)
    dtype = src.get("dtype") if src.get("dtype") is not None else "float32"
    dtype = check_str(dtype, f"{where}: 'dtype'").removeprefix("torch.")
    if dtype not in FLOAT_DTYPES:
        raise FormatError(f"{where}: 'dtype' {excerpt(src.get('dtype'), 30)} is not one of "
                          f"{', '.join(FLOAT_DTYPES)}")
    norm = src.get("normalize_activations")
    if isinstance(norm, bool):  # SAELens' pre-6 spelling
        norm = "expected_average_only_in" if norm else "none"
    norm = check_str("none" if norm is None else norm, f"{where}: 'normalize_activations'",
                     choices=NORMALIZE)
    cfg: dict[str, Any] = {
        "architecture": arch, "d_in": d_in, "d_sae": d_sae, "dtype": dtype,
        "apply_b_dec_to_input": check_bool(src.get("apply_b_dec_to_input", True),
                                           f"{where}: 'apply_b_dec_to_input'"),
        "normalize_activations": norm,
        "reshape_activations": check_str(src.get("reshape_activations", "none"),
                                         f"{where}: 'reshape_activations'", choices=RESHAPE),
    }
    if src.get("k") is not None or arch in TOPK:
        if src.get("k") is None:
            raise FormatError(f"{where}: architecture {arch} needs 'k'")
        k = check_int(src["k"], f"{where}: 'k'", min_value=1, max_value=d_sae,
                      integral_float=True)
        if arch in TOPK:
            cfg["k"] = k
    if src.get("rescale_acts_by_decoder_norm") is not None or arch in TOPK:
        rescale = check_bool(src.get("rescale_acts_by_decoder_norm", False),
                             f"{where}: 'rescale_acts_by_decoder_norm'")
        if arch in TOPK:
            cfg["rescale_acts_by_decoder_norm"] = rescale
    meta = src.get("metadata")
    cfg["metadata"] = _check_metadata({} if meta is None else meta, f"{where}: metadata")
    return cfg


def _check_metadata(meta: object, where: str) -> dict[str, Any]:
    """Types of the metadata fields emprobe or SAELens read (others pass through unread)."""
    out = check_mapping(meta, where)
    for key in _META_STR:
        if out.get(key) is not None:
            check_str(out[key], f"{where}.{key}")
    if out.get("prepend_bos") is not None:
        check_bool(out["prepend_bos"], f"{where}.prepend_bos")
    for key in ("hook_head_index", "context_size"):
        if out.get(key) is not None:
            check_int(out[key], f"{where}.{key}", min_value=0)
    for key in _META_SCALE:
        if out.get(key) is not None:
            check_number(out[key], f"{where}.{key}", positive=True)
    if out.get("model_from_pretrained_kwargs") is not None:
        check_mapping(out["model_from_pretrained_kwargs"], f"{where}.model_from_pretrained_kwargs")
    return out


def site_of_metadata(meta: Mapping[str, object], where: str) -> tuple[str | None, int | None]:
    """The ``(site, layer)`` SAE metadata names: ``emprobe_site`` / ``emprobe_layer`` (both or
    neither), else the hook name; ``(None, None)`` when it names none. Each source is checked
    and they must agree (one-line ``FormatError`` naming ``where`` otherwise)."""
    has_site = meta.get("emprobe_site") is not None
    if has_site != (meta.get("emprobe_layer") is not None):
        raise FormatError(f"{where}: emprobe_site and emprobe_layer must be given together")
    ours: tuple[str, int] | None = None
    if has_site:
        ours = (check_str(meta["emprobe_site"], f"{where}.emprobe_site", choices=SITES),
                check_int(meta["emprobe_layer"], f"{where}.emprobe_layer", min_value=0,
                          max_value=MAX_LAYER))
    theirs: tuple[str, int] | None = None
    for key in ("hook_name", "emprobe_hook_name_bridge"):
        if meta.get(key) is None:
            continue
        found = hook_site(check_str(meta[key], f"{where}.{key}"))
        if found is None:
            continue  # a hook emprobe has no site for (e.g. hook_z): it names no site
        if (theirs is not None and found != theirs) or (ours is not None and found != ours):
            raise FormatError(f"{where}.{key} {excerpt(meta[key], 60)} is {found[0]} layer "
                              f"{found[1]}, which disagrees with {ours or theirs}")
        theirs = theirs or found
    site_layer = ours or theirs
    return (None, None) if site_layer is None else site_layer


def _check_weights(tensors: dict[str, torch.Tensor], cfg: dict[str, Any],
                   where: str) -> dict[str, torch.Tensor]:
    """The architecture's tensors, shape-checked against the config, finite in ``dtype``."""
    arch = cfg["architecture"]
    want = ARCHITECTURES[arch]
    tensors = dict(tensors)
    if arch == "jumprelu" and "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = _real(tensors.pop("log_threshold"), where, "log_threshold").exp()
    scale = tensors.pop("scaling_factor", None)
    if scale is not None and not (_real(scale, where, "scaling_factor") == 1).all():
        raise FormatError(f"{where}: scaling_factor is not all ones (a fine-tuning scaling "
                          "factor, which emprobe does not read)")
    missing = [k for k in want if k not in tensors]
    if missing:
        raise FormatError(f"{where}: architecture {arch} needs tensor {missing[0]!r} "
                          f"(has {excerpt(sorted(tensors), 100)})")
    extra = sorted(k for k in tensors if k not in want)
    if extra:
        raise FormatError(f"{where}: tensor {excerpt(extra[0], 60)} does not belong to a "
                          f"{arch} SAE (cfg.json 'architecture')")
    dims = {"d_in": cfg["d_in"], "d_sae": cfg["d_sae"]}
    dtype = getattr(torch, cfg["dtype"])
    out: dict[str, torch.Tensor] = {}
    for key in want:
        t = _real(tensors[key], where, key)
        shape = [dims[d] for d in _SHAPES[key]]
        if list(t.shape) != shape:
            raise ShapeError(f"{where}: {key} has shape {list(t.shape)} but cfg.json says "
                             f"{shape} (d_in={cfg['d_in']}, d_sae={cfg['d_sae']})")
        t = t.to(dtype)
        if not bool(torch.isfinite(t).all()):
            raise FormatError(f"{where}: {key} holds NaN or inf (in {cfg['dtype']})")
        out[key] = t
    return out


def _real(t: object, where: str, key: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or str(t.dtype).replace("torch.", "") not in FLOAT_DTYPES:
        raise FormatError(f"{where}: {excerpt(key, 60)} has dtype "
                          f"{getattr(t, 'dtype', type(t).__name__)}; want a real floating type")
    return t
