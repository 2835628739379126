"""Training-time interventions: small composable objects the trainer switches on while it trains.

The protocol (the trainer never asks which kind it holds):

- ``validate(subject)``: called before any training on the base model; raises a one-line
  error;
- ``prepare(subject, data)``: called once the trainable model is in place (LoRA-wrapped,
  adapter still zero), with a sample of training conversations: fit statistics (CAFT's
  means), resolve parameters (GRASP's targets);
- ``attach(subject)`` / ``detach()`` (also ``with iv.hooks(subject): ...``): switch it on
  and off; ``edits_activations`` says whether it hooks activations (those hooks are
  suspended for the reference model and for monitoring);
- ``after_backward(model)`` / ``after_step(model)``: around each optimizer step.
- ``needs_lora``: it edits LoRA factors, so full fine-tuning refuses it.

Hooks are gone after ``detach``, so the saved adapter is a plain adapter.

- ``CAFT``: ablate subspaces ``Q`` ``[d_model, k]`` of the residual stream (zero or mean).
- ``PreventativeSteering``: add ``coeff * v`` at chosen layers.
- ``GRASP``: keep LoRA updates orthogonal to directions read off a naive adapter.

CAFT and preventative steering take a ``Direction``, a tensor with ``layers=`` or
``{layer: tensor}`` (``emprobe.hooks.as_layer_table``); a Direction gives its site and is
checked against the model being trained.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from emprobe.errors import ConfigError, DataError, FormatError, ShapeError
from emprobe.hooks import ablate, as_layer_table, steer
from emprobe.hooks.layer_table import LayerInput, default_site
from emprobe.hooks.types import check_mode, check_positions, check_site
from emprobe.io import load_tensors, read_json
from emprobe.models.lora import factor_svd

if TYPE_CHECKING:
    from emprobe.models.chat import Conversation
    from emprobe.models.subject import Subject

__all__ = [
    "Intervention",
    "CAFT",
    "PreventativeSteering",
    "GRASP",
    "lora_modules",
    "lora_weight",
    "factor_svd",
    "load_layer_tensors",
    "site_of",
]


class Intervention:
    """Base class of training-time interventions (protocol in the module docstring)."""

    name = "intervention"
    needs_lora = False
    edits_activations = True

    def __init__(self) -> None:
        self._stack: contextlib.ExitStack | None = None

    def validate(self, subject: Subject) -> None:
        """Raise a one-line error if this intervention cannot apply to ``subject``."""

    def prepare(self, subject: Subject, data: Sequence[Conversation]) -> None:
        """Fit or resolve what needs the trainable model and the data (default: nothing)."""

    def _enter(self, subject: Subject, stack: contextlib.ExitStack) -> None:
        """Register hooks on ``subject`` into ``stack`` (subclasses)."""

    def attach(self, subject: Subject) -> Intervention:
        if self._stack is not None:
            raise RuntimeError(f"{self.name} is already attached")
        stack = contextlib.ExitStack()
        try:
            self._enter(subject, stack)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def detach(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()

    @contextlib.contextmanager
    def hooks(self, subject: Subject) -> Iterator[Intervention]:
        """``attach`` for the ``with`` block, ``detach`` after it."""
        self.attach(subject)
        try:
            yield self
        finally:
            self.detach()

    @property
    def attached(self) -> bool:
        return self._stack is not None

    def __enter__(self) -> Intervention:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def after_backward(self, model: torch.nn.Module) -> None:
        """Edit gradients before the optimizer step (after gradients are all-reduced)."""

    def after_step(self, model: torch.nn.Module) -> None:
        """Edit parameters after the optimizer step."""

    def describe(self) -> dict[str, object]:
        return {"name": self.name}


class CAFT(Intervention):
    """Concept-ablation fine-tuning: project subspaces out of ``resid_post`` while training.

    Args:
        bases: a ``Direction``, ``{layer: Q [d_model, k]}`` (or ``[d_model]``), or one tensor
            with ``layers``; columns are orthonormalised.
        mode: ``"zero"`` (``h <- h - (h Q) Q^T``) or ``"mean"`` (``h <- h - ((h - mu) Q) Q^T``).
        means: ``{layer: mu [d_model]}`` for mean ablation; ``None`` lets the trainer estimate
            them on the base model over (a sample of) the training data (``prepare``).
        positions: ``"all"`` or ``"response"`` tokens (also ``"prompt"``).
        site: hook site (default: the Direction's, else ``resid_post`` as in CAFT's code).
        layers: which layers of ``bases`` to use (default: all of them).
    """

    name = "caft"

    def __init__(self, bases: LayerInput, mode: str = "zero",
                 means: Mapping[int, torch.Tensor] | None = None, positions: str = "all",
                 site: str | None = None, layers: int | Sequence[int] | None = None,
                 allow_other_model: bool = False) -> None:
        super().__init__()
        self.mode = check_mode(mode, "CAFT")
        self.positions = check_positions(positions, ("all", "prompt", "response"), "CAFT")
        self.site = check_site(site or default_site(bases))
        self.source = bases
        self.allow_other_model = allow_other_model
        table = as_layer_table(bases, None, layers, "CAFT basis")
        if not table:
            raise ConfigError("CAFT: no subspaces given")
        self.bases = {la: (v.unsqueeze(-1) if v.dim() == 1 else v).detach().float()
                      for la, v in table.items()}
        self.means = None if means is None else {int(k): v.detach().float()
                                                 for k, v in means.items()}

    def validate(self, subject: Subject) -> None:
        as_layer_table(self.source, subject, sorted(self.bases), "CAFT basis",
                       allow_other_model=self.allow_other_model)
        if self.means is not None:
            as_layer_table(self.means, subject, None, "CAFT mean", width_dim=-1)
            missing = sorted(set(self.bases) - set(self.means))
            if missing:
                raise DataError(f"CAFT mean ablation: no mean for layer(s) {missing}")

    def prepare(self, subject: Subject, data: Sequence[Conversation]) -> None:
        """Mean ablation without ``means``: estimate them on the base model over ``data``."""
        if self.mode == "mean" and self.means is None:
            model = subject.model
            off = getattr(model, "disable_adapter", None)
            was_training = model.training
            model.eval()
            try:
                with off() if off is not None else contextlib.nullcontext():
                    self.fit_means(subject, data)
            finally:
                model.train(was_training)

    @torch.no_grad()
    def fit_means(self, subject: Subject, convs: Sequence[Conversation], batch_size: int = 8) -> None:
        """Estimate ``mu`` per layer: mean activation over the chosen tokens of ``convs``."""
        from emprobe.hooks import collect

        got = collect(subject, list(convs), layers=sorted(self.bases), site=self.site,
                      positions=self.positions, reduce="tokens", batch_size=batch_size)
        self.means = {la: acts.float().mean(0) for la, acts in got.acts.items()}

    def _enter(self, subject: Subject, stack: contextlib.ExitStack) -> None:
        if self.mode == "mean" and self.means is None:
            raise DataError("CAFT mean ablation needs means=... (or call fit_means first)")
        stack.enter_context(ablate(subject, self.bases, mode=self.mode, mean=self.means,
                                   site=self.site, positions=self.positions))

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "mode": self.mode, "positions": self.positions,
                "site": self.site, "layers": sorted(self.bases),
                "k": {str(la): int(q.shape[1]) for la, q in sorted(self.bases.items())}}


class PreventativeSteering(Intervention):
    """Add ``coeff * v`` at chosen layers during training (vectors raw).

    Args:
        vectors: a ``Direction``, ``[d_model]`` (with ``layers``) or ``{layer: [d_model]}``.
        coeff: multiplier ``c``. layers: which layers (default: every layer of ``vectors``).
        positions: ``all`` (as in the persona-vector code), ``prompt`` or ``response``.
        site: hook site (default: the Direction's, else ``resid_post``).
    """

    name = "steer"

    def __init__(self, vectors: LayerInput, coeff: float = 1.0,
                 layers: int | Sequence[int] | None = None, positions: str = "all",
                 site: str | None = None, allow_other_model: bool = False) -> None:
        super().__init__()
        table = as_layer_table(vectors, None, layers, "steering vectors")
        self.vectors = {la: v.detach().float() for la, v in table.items()}
        for la, v in self.vectors.items():
            if v.dim() != 1:
                raise ShapeError(f"steering vector at layer {la} must be [d_model], got "
                                 f"{tuple(v.shape)}")
        self.source = vectors
        self.allow_other_model = allow_other_model
        self.coeff = float(coeff)
        self.positions = check_positions(positions, where="preventative steering")
        self.site = check_site(site or default_site(vectors))

    def validate(self, subject: Subject) -> None:
        as_layer_table(self.source, subject, sorted(self.vectors), "steering vector",
                       allow_other_model=self.allow_other_model)

    def _enter(self, subject: Subject, stack: contextlib.ExitStack) -> None:
        stack.enter_context(steer(subject, self.vectors, coeff=self.coeff, site=self.site,
                                  positions=self.positions))

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "coeff": self.coeff, "layers": sorted(self.vectors),
                "positions": self.positions, "site": self.site,
                "norms": {str(la): float(v.norm()) for la, v in sorted(self.vectors.items())}}


# -- GRASP ---------------------------------------------------------------------------------

def _module_key(name: str) -> str:
    """PEFT names -> the base model's module name (``model.layers.3.mlp.down_proj``)."""
    return name[len("base_model.model."):] if name.startswith("base_model.model.") else name


def lora_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``{base-model module name: peft LoRA layer}`` of a PEFT model (active adapter)."""
    out: dict[str, torch.nn.Module] = {}
    for name, mod in model.named_modules():
        lora_a = getattr(mod, "lora_A", None)
        if isinstance(lora_a, torch.nn.ModuleDict) and hasattr(mod, "lora_B") and len(lora_a) > 0:
            out[_module_key(name)] = mod
    return out


def lora_weight(layer: torch.nn.Module, side: str) -> torch.Tensor:
    """Weight of ``lora_{side}`` (``side`` "A": ``[r, d_in]``, "B": ``[d_out, r]``) of the
    active adapter of one PEFT LoRA layer."""
    active = layer.active_adapter
    key = active[0] if isinstance(active, list) else active
    return getattr(layer, f"lora_{side}")[key].weight


def _projector_apply_left(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``P x`` with ``P = I - U U^T``; ``U`` ``[d_out, k]``, ``x`` ``[d_out, r]``."""
    return x - u @ (u.T @ x)


def _projector_apply_right(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``x P`` with ``P = I - V V^T``; ``x`` ``[r, d_in]``, ``V`` ``[d_in, k]``."""
    return x - (x @ v) @ v.T


class GRASP(Intervention):
    """Gradient projection that keeps new LoRA updates off blocked directions.

    ``blocked={module: U [d_out, k]}`` (write side): ``B.grad <- P B.grad`` before each
    optimizer step and ``B <- P B`` after it, ``P = I - U U^T``, so ``P dW = 0`` whatever
    Adam's per-coordinate scaling does. ``read_blocked={module: V [d_in, k]}`` (read side):
    ``A.grad <- A.grad P`` and ``A <- A P``. Module names are the base model's
    (``model.layers.3.mlp.down_proj``). Build from a naive adapter with ``from_adapter``.
    """

    name = "grasp"
    needs_lora = True
    edits_activations = False

    def __init__(self, blocked: Mapping[str, torch.Tensor] | None = None,
                 read_blocked: Mapping[str, torch.Tensor] | None = None,
                 source: str | None = None) -> None:
        super().__init__()
        self.blocked = {k: _orthonormal(v) for k, v in (blocked or {}).items()}
        self.read_blocked = {k: _orthonormal(v) for k, v in (read_blocked or {}).items()}
        if not self.blocked and not self.read_blocked:
            raise DataError("GRASP: no blocked directions given")
        self.source = source
        self._targets: list[tuple[torch.nn.Parameter, torch.Tensor, str]] = []

    @classmethod
    def from_adapter(cls, adapter_dir: str | os.PathLike[str], k: int = 1,
                     modules: Sequence[str] = ("o_proj", "down_proj"), side: str = "write",
                     ) -> GRASP:
        """Top-``k`` singular vectors of a naive adapter's updates, per module, from the factors.

        ``modules`` are name suffixes (default: the write-side ``o_proj`` and ``down_proj``).
        ``side="write"`` blocks the left singular vectors on ``B``; ``"read"`` the right ones
        on ``A``; ``"both"`` does both.
        """
        if side not in ("write", "read", "both"):
            raise ConfigError(f"GRASP side must be write, read or both, not {side!r}")
        if k < 1:
            raise ConfigError(f"GRASP k must be >= 1, got {k}")
        # the one adapter reader (a leaf module: safetensors + config, no model)
        from emprobe.models.adapter import read_adapter

        folder = Path(adapter_dir)
        if (folder / "adapter" / "adapter_config.json").is_file():
            folder = folder / "adapter"  # an emprobe run folder
        write, read = {}, {}
        for mod in read_adapter(folder):
            if not any(mod.name.endswith(sfx) for sfx in modules):
                continue
            if k > mod.rank:
                raise DataError(f"GRASP k={k} exceeds the naive adapter's rank {mod.rank}")
            u, _, v = factor_svd(mod.B, mod.A, mod.scale)
            if side in ("write", "both"):
                write[mod.name] = u[:, :k]
            if side in ("read", "both"):
                read[mod.name] = v[:, :k]
        if not write and not read:
            raise DataError(f"{adapter_dir}: no LoRA module ending in {list(modules)}")
        return cls(blocked=write, read_blocked=read, source=str(adapter_dir))

    def _resolve(self, model: torch.nn.Module) -> list[tuple[torch.nn.Parameter, torch.Tensor, str]]:
        mods = lora_modules(model)
        if not mods:
            raise DataError("GRASP needs a LoRA model (not full fine-tuning)")
        targets = []
        for side, table in (("B", self.blocked), ("A", self.read_blocked)):
            for name, basis in table.items():
                if name not in mods:
                    have = ", ".join(sorted(mods)[:4])
                    raise DataError(f"GRASP: module {name!r} is not a LoRA target of this run "
                                    f"(targets include {have}, ...)")
                layer = mods[name]
                key = layer.active_adapter[0] if isinstance(layer.active_adapter, list) \
                    else layer.active_adapter
                lin = getattr(layer, f"lora_{side}")[key]
                param = lin.weight
                dim = param.shape[0] if side == "B" else param.shape[1]
                if basis.shape[0] != dim:
                    raise ShapeError(f"GRASP basis for {name} has {basis.shape[0]} rows but the "
                                     f"module's {'output' if side == 'B' else 'input'} width is "
                                     f"{dim}")
                targets.append((param, basis.to(param.device, param.dtype), side))
        return targets

    def prepare(self, subject: Subject, data: Sequence[Conversation]) -> None:
        """Check every blocked module against the LoRA model being trained."""
        self._resolve(subject.model)

    def _enter(self, subject: Subject, stack: contextlib.ExitStack) -> None:
        self._targets = self._resolve(subject.model)
        self.after_step(subject.model)  # start inside the allowed subspace
        stack.callback(self._targets.clear)

    @torch.no_grad()
    def after_backward(self, model: torch.nn.Module | None) -> None:
        for param, basis, side in self._targets:
            if param.grad is None:
                continue
            if side == "B":
                param.grad.copy_(_projector_apply_left(basis, param.grad))
            else:
                param.grad.copy_(_projector_apply_right(param.grad, basis))

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module | None) -> None:
        for param, basis, side in self._targets:
            if side == "B":
                param.copy_(_projector_apply_left(basis, param))
            else:
                param.copy_(_projector_apply_right(param, basis))

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "source": self.source,
                "write_modules": len(self.blocked), "read_modules": len(self.read_blocked),
                "k": max([int(u.shape[1]) for u in [*self.blocked.values(),
                                                    *self.read_blocked.values()]])}


def _orthonormal(u: torch.Tensor) -> torch.Tensor:
    u = u.unsqueeze(-1) if u.dim() == 1 else u
    q, _ = torch.linalg.qr(u.detach().double())
    return q.float()


def _direction_files(folder: Path) -> tuple[Path, Path]:
    # the Direction folder format (docs/directions.md), read from its files so that train
    # does not import the higher-level directions package
    tensors, meta = folder / "direction.safetensors", folder / "direction.json"
    if not tensors.is_file() or not meta.is_file():
        raise FormatError(f"{folder}: not a Direction folder (need direction.safetensors and "
                          "direction.json)")
    return tensors, meta


def load_layer_tensors(path: str | os.PathLike[str], what: str = "tensors"
                       ) -> dict[int, torch.Tensor]:
    """``{layer: tensor}`` from a safetensors file with keys ``layer.{l}``, or from an emprobe
    Direction folder (``direction.safetensors`` with the same keys)."""
    p = Path(path)
    if p.is_dir():
        p = _direction_files(p)[0]
    tensors = load_tensors(p)
    out: dict[int, torch.Tensor] = {}
    for key, t in tensors.items():
        m = re.fullmatch(r"layer\.(-?\d+)", key)
        if m is None:
            raise FormatError(f"{p}: {what} key {key!r} is not of the form 'layer.<l>'")
        out[int(m.group(1))] = t
    if not out:
        raise FormatError(f"{p}: no {what} in the file")
    return out


def site_of(path: str | os.PathLike[str]) -> str:
    """The hook site of a Direction folder (``resid_post`` for a plain safetensors file)."""
    p = Path(path)
    if p.is_dir():
        meta = read_json(_direction_files(p)[1])
        return str(meta.get("site", "resid_post"))
    return "resid_post"
