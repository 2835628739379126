"""The ``Direction`` artifact: per-layer vectors or bases plus the metadata needed to reuse them.

On disk a direction is a folder::

    my_direction/
      direction.safetensors   tensors "layer.{l}", each [d_model] or [d_model, k]
      direction.json          metadata (see ``Direction`` fields), incl. each layer's shape

Layers use emprobe's convention: ``layer`` is the 0-based decoder block and
``resid_post[l]`` is Hugging Face ``hidden_states[l + 1]``. Converters to other
tools' indices live in ``emprobe.directions.formats``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sized
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import torch

from emprobe._version import __version__
from emprobe.errors import EmprobeError, FormatError, ModelMismatchError, ShapeError, SiteError
from emprobe.hooks.convention import SITES
from emprobe.io import atomic_dir, load_tensors, read_json_object, save_tensors, write_json
from emprobe.validate import (
    check_int,
    check_mapping,
    check_optional_str,
    check_str,
    check_tensor,
    excerpt,
    layer_key,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

    from emprobe.models.subject import Subject

FORMAT_NAME = "emprobe.direction"
FORMAT_VERSION = 1
LAYER_CONVENTION = "emprobe: layer = 0-based decoder block; resid_post[l] = HF hidden_states[l+1]"
POSITIONS = ("all", "prompt", "response", "last")
NORMALISATIONS = ("none", "unit", "orthonormal")
TENSORS_FILE = "direction.safetensors"
META_FILE = "direction.json"

__all__ = ["DataProvenance", "Description", "Direction", "ModelMismatchError", "data_provenance", "now_utc"]


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class DataProvenance(TypedDict):
    """``data_provenance``: sha256 of a dataset's canonical JSON, its size, a description."""

    sha256: str
    n: int | None
    description: str


def data_provenance(data: object, description: str = "") -> DataProvenance:
    """Provenance of a dataset: sha256 of its canonical JSON, its size and a description.

    ``data`` is a JSON-serialisable collection (conversations, prompts, records).
    """
    blob = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    n = len(data) if isinstance(data, Sized) else None
    return {"sha256": hashlib.sha256(blob).hexdigest(), "n": n, "description": description}


class Description(TypedDict, total=False):
    """The Direction fields that describe how it was made (keyword arguments of the
    constructors that fill the model fields themselves)."""

    site: str
    positions: str
    normalisation: str
    sign: str
    method: str
    params: dict[str, object]
    provenance: dict[str, object]
    stats: dict[str, object]
    created: str
    emprobe_version: str


@dataclass
class Direction:
    """Directions in activation space, one per layer (a vector or a k-column basis).

    Attributes:
        vectors: ``{layer: [d_model]}`` or ``{layer: [d_model, k]}`` (float32, CPU).
        model: the model id it was extracted from (emprobe spec, folder or hub id).
        d_model: residual-stream width.
        site: hook site (``resid_post`` by default; see ``emprobe.hooks.SITES``).
        fingerprint: ``Subject.fingerprint()`` of the model's weights, when known.
        revision: model revision / commit, when known.
        adapter: the PEFT adapter folder of the subject, if any.
        n_layers: the model's number of decoder blocks.
        positions: token positions the activations came from (all/prompt/response/last).
        normalisation: ``none`` (raw, e.g. a mean difference), ``unit`` or ``orthonormal``.
        sign: what the positive sense means, e.g. "misaligned minus aligned".
        method: extraction method name; ``params`` its parameters.
        provenance: ``{name: data_provenance(...)}`` for every dataset used.
        stats: method outputs worth keeping (singular values, accuracies, counts).
        created: ISO time (UTC); emprobe_version: the version that wrote it.
    """

    vectors: dict[int, torch.Tensor]
    model: str
    d_model: int
    site: str = "resid_post"
    fingerprint: str | None = None
    revision: str | None = None
    adapter: str | None = None
    n_layers: int | None = None
    positions: str = "response"
    normalisation: str = "none"
    sign: str = ""
    method: str = "custom"
    params: dict[str, object] = field(default_factory=dict)
    provenance: dict[str, object] = field(default_factory=dict)
    stats: dict[str, object] = field(default_factory=dict)
    created: str = field(default_factory=now_utc)
    emprobe_version: str = __version__

    def __post_init__(self) -> None:
        if not isinstance(self.vectors, Mapping):
            raise ShapeError(f"direction: vectors must map layer -> tensor, got "
                             f"{type(self.vectors).__name__}")
        vectors: dict[int, torch.Tensor] = {}
        for k, v in self.vectors.items():
            layer = layer_key(k, "direction", error=SiteError)
            if not isinstance(v, torch.Tensor):
                raise ShapeError(f"direction: layer {layer} is a {type(v).__name__}, not a tensor")
            if v.is_complex():  # .float() would drop the imaginary part without a word
                raise ShapeError(f"direction: layer {layer} is complex ({v.dtype}); directions "
                                 "are real")
            vectors[layer] = v.detach().float().cpu()
        self.vectors = vectors
        self.validate()

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_subject(
        cls, subject: Subject, vectors: Mapping[int, torch.Tensor], **meta: Unpack[Description]
    ) -> Direction:
        """A direction whose model metadata (id, fingerprint, width, depth) comes from ``subject``."""
        return cls(
            vectors=dict(vectors),
            model=str(subject.name),
            d_model=int(subject.d_model),
            fingerprint=subject.fingerprint(),
            adapter=str(subject.adapter) if getattr(subject, "adapter", None) else None,
            n_layers=int(subject.n_layers),
            revision=_revision(subject),
            **meta,
        )

    # -- checks -----------------------------------------------------------------------
    def validate(self, where: str = "direction") -> None:
        """Check shapes, layers and metadata values; one-line errors naming the problem."""
        if not self.vectors:
            raise ShapeError(f"{where}: no layers")
        self._validate_fields(where)
        if self.site not in SITES:
            raise SiteError(f"{where}: unknown site {self.site!r}: use one of {', '.join(SITES)}")
        if self.positions not in POSITIONS:
            raise FormatError(f"{where}: positions {self.positions!r} not one of {POSITIONS}")
        if self.normalisation not in NORMALISATIONS:
            raise FormatError(
                f"{where}: normalisation {self.normalisation!r} not one of {NORMALISATIONS}"
            )
        for layer, t in self.vectors.items():
            if layer < 0 or (self.n_layers is not None and layer >= self.n_layers):
                raise SiteError(
                    f"{where}: layer {layer} out of range 0..{(self.n_layers or 1) - 1}"
                )
            if t.dim() not in (1, 2):
                raise ShapeError(f"{where}: layer {layer} tensor has {t.dim()} dims; want 1 or 2")
            if any(s == 0 for s in t.shape):
                raise ShapeError(f"{where}: layer {layer} tensor {list(t.shape)} is empty")
            if t.shape[0] != self.d_model:
                raise ShapeError(
                    f"{where}: layer {layer} has width {t.shape[0]} but d_model is {self.d_model}"
                )
            if not torch.isfinite(t).all():
                raise ShapeError(f"{where}: layer {layer} contains NaN or inf")

    def _validate_fields(self, where: str) -> None:
        """Types of the metadata fields (a loaded JSON can hold anything)."""
        check_str(self.model, f"{where}: model", error=FormatError)
        check_int(self.d_model, f"{where}: d_model", min_value=1, error=ShapeError)
        if self.n_layers is not None:
            check_int(self.n_layers, f"{where}: n_layers", min_value=1, error=FormatError)
        for name in ("site", "positions", "normalisation", "sign", "method", "created",
                     "emprobe_version"):
            check_str(getattr(self, name), f"{where}: {name}", error=FormatError)
        for name in ("fingerprint", "revision", "adapter"):
            check_optional_str(getattr(self, name), f"{where}: {name}", error=FormatError)
        for name in ("params", "provenance", "stats"):
            check_mapping(getattr(self, name), f"{where}: {name}", error=FormatError)

    def check_compatible(self, subject: Subject, allow_other_model: bool = False) -> None:
        """Raise unless this direction may be applied to ``subject``.

        A different width is always an error. A different model (neither the same
        weights fingerprint nor the same model id) is an error unless
        ``allow_other_model``. The same base model with or without a PEFT adapter
        counts as the same model: directions routinely move between a base and its
        fine-tune.
        """
        if int(subject.d_model) != self.d_model:
            raise ShapeError(
                f"direction from {self.model!r} has width {self.d_model}, "
                f"model {subject.name!r} has d_model {subject.d_model}"
            )
        for layer in self.vectors:
            if layer >= subject.n_layers:
                raise SiteError(
                    f"direction has layer {layer}; model {subject.name!r} has layers "
                    f"0..{subject.n_layers - 1}"
                )
        if allow_other_model:
            return
        same_name = str(subject.name) == self.model
        same_weights = self.fingerprint is not None and subject.fingerprint() == self.fingerprint
        if not (same_name or same_weights):
            raise ModelMismatchError(
                f"direction was extracted from {self.model!r} (fingerprint {self.fingerprint}), "
                f"not {subject.name!r}; pass allow_other_model=True to apply it anyway"
            )

    # -- accessors --------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    @property
    def k(self) -> dict[int, int]:
        """Number of columns per layer (1 for a single vector)."""
        return {la: 1 if t.dim() == 1 else int(t.shape[1]) for la, t in self.vectors.items()}

    def _get(self, layer: int) -> torch.Tensor:
        if layer not in self.vectors:
            raise SiteError(f"direction has no layer {layer}; it has {self.layers}")
        return self.vectors[layer]

    def vector(self, layer: int, component: int = 0) -> torch.Tensor:
        """One ``[d_model]`` vector (column ``component`` of a basis)."""
        t = self._get(layer)
        if t.dim() == 1:
            if component != 0:
                raise ShapeError(f"layer {layer} holds one vector; no component {component}")
            return t
        if not 0 <= component < t.shape[1]:
            raise ShapeError(f"layer {layer} has {t.shape[1]} components; no {component}")
        return t[:, component]

    def basis(self, layer: int) -> torch.Tensor:
        """Orthonormal columns ``[d_model, k]`` spanning this layer's direction(s) (QR)."""
        t = self._get(layer)
        q, _ = torch.linalg.qr(t.unsqueeze(-1) if t.dim() == 1 else t)
        return q

    def stack(self) -> torch.Tensor:
        """``[n_layers_used, d_model]`` (single vectors only), rows in ``self.layers`` order."""
        if any(k != 1 for k in self.k.values()):
            raise ShapeError("stack() needs one vector per layer; this direction holds bases")
        return torch.stack([self.vector(la) for la in self.layers])

    def replace(self, **changes: object) -> Direction:
        """A copy with some fields changed (tensors are shared, not copied)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(changes)
        return Direction(**data)

    def unit(self) -> Direction:
        """Each vector scaled to norm 1 (bases: each column)."""
        out = {}
        for la, t in self.vectors.items():
            out[la] = t / t.norm(dim=0, keepdim=True).clamp_min(1e-12)
        return self.replace(vectors=out, normalisation="unit")

    def orthonormal(self) -> Direction:
        """Each layer's columns replaced by an orthonormal basis of their span (QR)."""
        return self.replace(
            vectors={la: self.basis(la) for la in self.vectors}, normalisation="orthonormal"
        )

    def select(self, layers: Iterable[int] | None = None,
               components: Mapping[int, list[int]] | None = None) -> Direction:
        """Keep some layers and/or some columns per layer (CAFT-style index spec)."""
        out: dict[int, torch.Tensor] = {}
        wanted = self.layers if layers is None else [int(x) for x in layers]
        if components is not None:
            wanted = [int(x) for x in components]
        for la in wanted:
            t = self._get(la)
            if components is not None:
                idx = list(components[la] if la in components else components[str(la)])  # type: ignore[index]
                t2 = t.unsqueeze(-1) if t.dim() == 1 else t
                if any(i < 0 or i >= t2.shape[1] for i in idx):
                    raise ShapeError(f"layer {la}: component index out of range 0..{t2.shape[1] - 1}")
                t = t2[:, idx]
            out[la] = t
        return self.replace(vectors=out)

    # -- IO ---------------------------------------------------------------------------
    def metadata(self) -> dict[str, object]:
        meta = {k: v for k, v in asdict(self).items() if k != "vectors"}
        meta["format"] = FORMAT_NAME
        meta["format_version"] = FORMAT_VERSION
        meta["layer_convention"] = LAYER_CONVENTION
        meta["layers"] = {str(la): list(self.vectors[la].shape) for la in self.layers}
        return meta

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the folder atomically (``direction.safetensors`` + ``direction.json``)."""
        with atomic_dir(path) as tmp:
            save_tensors(tmp / TENSORS_FILE, {f"layer.{la}": t for la, t in self.vectors.items()})
            write_json(tmp / META_FILE, self.metadata())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Direction:
        """Read and validate a direction folder; one-line errors naming the file and problem."""
        folder = Path(path)
        if not folder.is_dir():
            raise FormatError(f"{folder}: not a direction folder")
        meta_path, tens_path = folder / META_FILE, folder / TENSORS_FILE
        meta = read_json_object(meta_path)
        if meta.get("format") != FORMAT_NAME:
            raise FormatError(f"{meta_path}: not an emprobe direction (format="
                              f"{excerpt(meta.get('format'), 60)})")
        version = check_int(meta.get("format_version"), f"{meta_path}: format_version",
                            min_value=1, error=FormatError)
        if version > FORMAT_VERSION:
            raise FormatError(
                f"{meta_path}: format version {version} is newer than "
                f"this emprobe reads ({FORMAT_VERSION})"
            )
        for key in ("model", "d_model", "site", "layers", "positions", "normalisation", "method"):
            if key not in meta:
                raise FormatError(f"{meta_path}: missing key {key!r}")
        declared = meta["layers"]
        if not isinstance(declared, dict) or not declared:
            raise FormatError(f"{meta_path}: 'layers' must map layer -> shape, got "
                              f"{excerpt(declared, 60)}")
        shapes: dict[str, list[int]] = {}
        for la_s, shape in declared.items():
            layer_key(la_s, f"{meta_path}: layers", error=FormatError)
            if (not isinstance(shape, list) or len(shape) not in (1, 2)
                    or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                               for n in shape)):
                raise FormatError(f"{meta_path}: layers[{excerpt(la_s, 20)}] must be a shape "
                                  f"[d_model] or [d_model, k] of positive ints, got "
                                  f"{excerpt(shape, 60)}")
            shapes[la_s] = shape
        tensors = load_tensors(tens_path)
        vectors: dict[int, torch.Tensor] = {}
        for la_s, shape in shapes.items():
            key = f"layer.{la_s}"
            if key not in tensors:
                raise FormatError(f"{tens_path}: missing tensor {key!r} listed in {META_FILE}")
            t = check_tensor(tensors[key], f"{tens_path}: {key}")
            if list(t.shape) != list(shape):
                raise ShapeError(
                    f"{tens_path}: tensor {key} has shape {list(t.shape)}, {META_FILE} says {shape}"
                )
            vectors[int(la_s)] = t
        extra = sorted(set(tensors) - {f"layer.{la}" for la in declared})
        if extra:
            raise FormatError(f"{tens_path}: tensors not listed in {META_FILE}: "
                              f"{excerpt(extra, 120)}")
        known = {f.name for f in fields(cls)} - {"vectors"}
        kwargs = {k: v for k, v in meta.items() if k in known}
        try:
            return cls(vectors=vectors, **kwargs)
        except EmprobeError as exc:
            raise type(exc)(f"{meta_path}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise FormatError(f"{meta_path}: bad metadata ({excerpt(str(exc), 120)})") from None

    def __repr__(self) -> str:
        shapes = {la: tuple(t.shape) for la, t in sorted(self.vectors.items())}
        if len(shapes) > 4:
            first = list(shapes)[:2]
            shown = f"{len(shapes)} layers {first[0]}..{max(shapes)} of {shapes[first[0]]}"
        else:
            shown = str(shapes)
        return f"Direction({self.method}, model={self.model!r}, site={self.site}, {shown})"


def _revision(subject: Subject) -> str | None:
    cfg = getattr(subject.base_model, "config", None)
    rev = getattr(cfg, "_commit_hash", None) if cfg is not None else None
    return str(rev) if rev else None
