"""Training-time interventions: small composable objects the trainer switches on while it trains.

Each intervention has ``validate(subject)`` (called before any training, raises a one-line
error), ``attach(subject)`` / ``detach()`` (also a context manager: ``with
iv.attach(subject): ...``) and optional ``after_backward(model)`` / ``after_step(model)``
called by the trainer around each optimizer step. Hooks are gone after ``detach``, so the
saved adapter is a plain adapter.

- ``CAFT``: ablate subspaces ``Q`` ``[d_model, k]`` of the residual stream (zero or mean).
- ``PreventativeSteering``: add ``coeff * v`` at chosen layers.
- ``GRASP``: keep LoRA updates orthogonal to directions read off a naive adapter.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from emprobe.errors import DataError, FormatError, ShapeError
from emprobe.hooks import ablate, steer
from emprobe.io import load_tensors, read_json
from emprobe.models.lora import factor_svd

__all__ = [
    "Intervention",
    "CAFT",
    "PreventativeSteering",
    "GRASP",
    "lora_modules",
    "factor_svd",
    "load_layer_tensors",
    "site_of",
]


class Intervention:
    """Base class: context-manager semantics over ``attach`` / ``detach``."""

    name = "intervention"

    def __init__(self) -> None:
        self._stack: contextlib.ExitStack | None = None

    def validate(self, subject: Any) -> None:
        """Raise a one-line error if this intervention cannot apply to ``subject``."""

    def _enter(self, subject: Any, stack: contextlib.ExitStack) -> None:
        """Register hooks on ``subject`` into ``stack`` (subclasses)."""

    def attach(self, subject: Any) -> Intervention:
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

    @property
    def attached(self) -> bool:
        return self._stack is not None

    def __enter__(self) -> Intervention:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def after_backward(self, model: Any) -> None:
        """Edit gradients before the optimizer step (after gradients are all-reduced)."""

    def after_step(self, model: Any) -> None:
        """Edit parameters after the optimizer step."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def _as_layer_table(value: torch.Tensor | Mapping[int, torch.Tensor],
                    layers: Sequence[int] | int | None, what: str) -> dict[int, torch.Tensor]:
    if isinstance(value, Mapping):
        table = {int(k): v for k, v in value.items()}
        if layers is not None:
            wanted = [layers] if isinstance(layers, int) else list(layers)
            missing = [la for la in wanted if la not in table]
            if missing:
                raise DataError(f"{what}: no tensor for layer(s) {missing}; have {sorted(table)}")
            table = {la: table[la] for la in wanted}
        return table
    if layers is None:
        raise DataError(f"{what}: give layers=[...] with a single tensor")
    wanted = [layers] if isinstance(layers, int) else list(layers)
    return {int(la): value for la in wanted}


def _check_layers_and_width(subject: Any, table: Mapping[int, torch.Tensor], what: str,
                            width_dim: int) -> None:
    for layer, t in table.items():
        subject.layers.check_layer(layer)
        if t.dim() <= width_dim or t.shape[width_dim] != subject.d_model:
            got = tuple(t.shape)
            raise ShapeError(f"{what} at layer {layer} has shape {got}; the model's d_model is "
                             f"{subject.d_model}")


class CAFT(Intervention):
    """Concept-ablation fine-tuning: project subspaces out of ``resid_post`` while training.

    Args:
        bases: ``{layer: Q [d_model, k]}`` (or ``[d_model]``); columns are orthonormalised.
        mode: ``"zero"`` (``h <- h - (h Q) Q^T``) or ``"mean"`` (``h <- h - ((h - mu) Q) Q^T``).
        means: ``{layer: mu [d_model]}`` for mean ablation; ``None`` lets the trainer estimate
            them on the base model over (a sample of) the training data (``fit_means``).
        positions: ``"all"`` or ``"response"`` tokens (also ``"prompt"``).
        site: hook site (``resid_post`` by default, as in CAFT's code).
    """

    name = "caft"

    def __init__(self, bases: Mapping[int, torch.Tensor], mode: str = "zero",
                 means: Mapping[int, torch.Tensor] | None = None, positions: str = "all",
                 site: str = "resid_post") -> None:
        super().__init__()
        if mode not in ("zero", "mean"):
            raise DataError(f"CAFT mode must be 'zero' or 'mean', not {mode!r}")
        if positions not in ("all", "prompt", "response"):
            raise DataError(f"CAFT positions must be all, prompt or response, not {positions!r}")
        if not bases:
            raise DataError("CAFT: no subspaces given")
        self.bases = {int(k): (v.unsqueeze(-1) if v.dim() == 1 else v).detach().float()
                      for k, v in bases.items()}
        self.mode = mode
        self.means = None if means is None else {int(k): v.detach().float()
                                                 for k, v in means.items()}
        self.positions = positions
        self.site = site

    def validate(self, subject: Any) -> None:
        _check_layers_and_width(subject, self.bases, "CAFT basis", 0)
        if self.means is not None:
            _check_layers_and_width(subject, self.means, "CAFT mean", -1)
            missing = sorted(set(self.bases) - set(self.means))
            if missing:
                raise DataError(f"CAFT mean ablation: no mean for layer(s) {missing}")

    @torch.no_grad()
    def fit_means(self, subject: Any, convs: Sequence[Any], batch_size: int = 8) -> None:
        """Estimate ``mu`` per layer: mean activation over the chosen tokens of ``convs``."""
        from emprobe.hooks import collect

        got = collect(subject, list(convs), layers=sorted(self.bases), site=self.site,
                      positions=self.positions if self.positions != "all" else "all",
                      reduce="tokens", batch_size=batch_size)
        self.means = {la: acts.float().mean(0) for la, acts in got.acts.items()}

    def _enter(self, subject: Any, stack: contextlib.ExitStack) -> None:
        if self.mode == "mean" and self.means is None:
            raise DataError("CAFT mean ablation needs means=... (or call fit_means first)")
        stack.enter_context(ablate(subject, self.bases, mode=self.mode, mean=self.means,
                                   site=self.site, positions=self.positions))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "positions": self.positions,
                "site": self.site, "layers": sorted(self.bases),
                "k": {str(la): int(q.shape[1]) for la, q in sorted(self.bases.items())}}


class PreventativeSteering(Intervention):
    """Add ``coeff * v`` to ``resid_post`` at chosen layers during training (vectors raw).

    Args:
        vectors: ``[d_model]`` (with ``layers``) or ``{layer: [d_model]}``.
        coeff: multiplier ``c``. layers: which layers (default: every key of ``vectors``).
        positions: ``all`` (as in the persona-vector code), ``prompt`` or ``response``.
    """

    name = "steer"

    def __init__(self, vectors: torch.Tensor | Mapping[int, torch.Tensor], coeff: float = 1.0,
                 layers: Sequence[int] | int | None = None, positions: str = "all",
                 site: str = "resid_post") -> None:
        super().__init__()
        table = _as_layer_table(vectors, layers, "steering vectors")
        self.vectors = {la: v.detach().float() for la, v in table.items()}
        for la, v in self.vectors.items():
            if v.dim() != 1:
                raise ShapeError(f"steering vector at layer {la} must be [d_model], got "
                                 f"{tuple(v.shape)}")
        self.coeff = float(coeff)
        self.positions = positions
        self.site = site

    def validate(self, subject: Any) -> None:
        _check_layers_and_width(subject, self.vectors, "steering vector", 0)

    def _enter(self, subject: Any, stack: contextlib.ExitStack) -> None:
        stack.enter_context(steer(subject, self.vectors, coeff=self.coeff, site=self.site,
                                  positions=self.positions))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "coeff": self.coeff, "layers": sorted(self.vectors),
                "positions": self.positions, "site": self.site,
                "norms": {str(la): float(v.norm()) for la, v in sorted(self.vectors.items())}}


# -- GRASP ---------------------------------------------------------------------------------

_ADAPTER_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<mod>.+?)\.lora_(?P<ab>[AB])"
                          r"(?:\.[^.]+)?\.weight$")


def _module_key(name: str) -> str:
    """PEFT names -> the base model's module name (``model.layers.3.mlp.down_proj``)."""
    return name[len("base_model.model."):] if name.startswith("base_model.model.") else name


def lora_modules(model: Any) -> dict[str, Any]:
    """``{base-model module name: peft LoRA layer}`` of a PEFT model (active adapter)."""
    out: dict[str, Any] = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and hasattr(mod, "lora_B") and len(mod.lora_A) > 0:
            out[_module_key(name)] = mod
    return out


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
            raise DataError(f"GRASP side must be write, read or both, not {side!r}")
        folder = Path(adapter_dir)
        if (folder / "adapter" / "adapter_config.json").is_file():
            folder = folder / "adapter"  # an emprobe run folder
        cfg_path = folder / "adapter_config.json"
        weights = folder / "adapter_model.safetensors"
        if not cfg_path.is_file() or not weights.is_file():
            raise FormatError(f"{adapter_dir}: not a PEFT adapter folder (need adapter_config.json "
                              "and adapter_model.safetensors)")
        cfg = read_json(cfg_path)
        r = int(cfg.get("r", 1))
        alpha = float(cfg.get("lora_alpha", r))
        scale = alpha / (r ** 0.5 if cfg.get("use_rslora") else r)
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, t in load_tensors(weights).items():
            m = _ADAPTER_KEY.match(key)
            if m is None:
                continue
            pairs.setdefault(m.group("mod"), {})[m.group("ab")] = t
        if k < 1:
            raise DataError(f"GRASP k must be >= 1, got {k}")
        write, read = {}, {}
        for mod, ab in sorted(pairs.items()):
            if not any(mod.endswith(sfx) for sfx in modules) or set(ab) != {"A", "B"}:
                continue
            if k > ab["B"].shape[1]:
                raise DataError(f"GRASP k={k} exceeds the naive adapter's rank {ab['B'].shape[1]}")
            u, _, v = factor_svd(ab["B"], ab["A"], scale)
            if side in ("write", "both"):
                write[mod] = u[:, :k]
            if side in ("read", "both"):
                read[mod] = v[:, :k]
        if not write and not read:
            raise DataError(f"{adapter_dir}: no LoRA module ending in {list(modules)}")
        return cls(blocked=write, read_blocked=read, source=str(adapter_dir))

    def _resolve(self, model: Any) -> list[tuple[torch.nn.Parameter, torch.Tensor, str]]:
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

    def validate(self, subject: Any) -> None:
        self._resolve(subject.model)

    def _enter(self, subject: Any, stack: contextlib.ExitStack) -> None:
        self._targets = self._resolve(subject.model)
        self.after_step(subject.model)  # start inside the allowed subspace
        stack.callback(self._targets.clear)

    @torch.no_grad()
    def after_backward(self, model: Any) -> None:
        for param, basis, side in self._targets:
            if param.grad is None:
                continue
            if side == "B":
                param.grad.copy_(_projector_apply_left(basis, param.grad))
            else:
                param.grad.copy_(_projector_apply_right(param.grad, basis))

    @torch.no_grad()
    def after_step(self, model: Any) -> None:
        for param, basis, side in self._targets:
            if side == "B":
                param.copy_(_projector_apply_left(basis, param))
            else:
                param.copy_(_projector_apply_right(param, basis))

    def describe(self) -> dict[str, Any]:
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
