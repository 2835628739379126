"""Training-time interventions as ``transformers.TrainerCallback`` objects, for any ``Trainer``.

transformers' callbacks cannot change the forward pass or the loss, so each intervention uses
the hook point that fits it:

==========================  ==========================  =======================================
callback                    mechanism                   when
==========================  ==========================  =======================================
``CAFTCallback``            forward hook (ablation)     opened ``on_train_begin``, closed
                                                        ``on_train_end``
``SteeringCallback``        forward hook (addition)     same
``PersonaMonitorCallback``  observing forward hooks     same; logged every ``every`` steps
``GRASPCallback``           gradient projection         ``on_pre_optimizer_step`` (gradients),
                                                        ``on_optimizer_step`` (parameters)
``RegularisedLossMixin``    a ``compute_loss`` mixin    KL to the adapter-free model
==========================  ==========================  =======================================

Hooks sit on the decoder blocks of the model the trainer holds (``subject_for_model``
removes DDP / FSDP / DeepSpeed wrappers; a PEFT model keeps its LoRA layers), so they run
whatever wraps the model. Under gradient checkpointing the hooked block is re-run in the
backward pass with its hooks (``nn.Module.__call__`` inside the checkpoint), so the
recomputed activations equal the forward ones. Directions come from ``read_direction``
(a Direction, ``{layer: tensor}``, a SteeringVector or any file emprobe reads).

Metrics (``caft/max_rel_proj``, ``grasp/max_rel_grad``, ``proj/<name>/L<layer>``) are added to
the trainer's log records and to ``state.log_history``; ``install(trainer, *callbacks)`` puts
the callbacks first so the reporting integrations (wandb, TensorBoard ...) see them too.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from emprobe.errors import ConfigError, DataError, EmprobeError
from emprobe.hooks import ablate, as_layer_table, patch, steer
from emprobe.hooks.layer_table import default_site
from emprobe.hooks.types import check_site
from emprobe.train.interventions import GRASP, lora_modules
from emprobe.train.sources import (
    DirectionSource,
    check_layers,
    check_number,
    read_direction,
    subject_for_model,
    unwrap_model,
)

if TYPE_CHECKING:
    from emprobe.models.subject import Subject

__all__ = [
    "CAFTCallback",
    "ablation_checker",
    "per_rank",
    "refuse_sharded",
    "GRASPCallback",
    "HookCallback",
    "PersonaMonitorCallback",
    "SteeringCallback",
    "install",
]

Layers = int | Sequence[int] | None


def install(trainer: Trainer, *callbacks: TrainerCallback) -> None:
    """Add ``callbacks`` ahead of the trainer's own, so loggers receive their metrics."""
    for cb in reversed(callbacks):
        trainer.callback_handler.callbacks.insert(0, cb)


def _merge_logs(state: TrainerState, logs: dict[str, float] | None, values: Mapping[str, float]) -> None:
    if not values:
        return
    if logs is not None:
        logs.update(values)
    if state.log_history:
        state.log_history[-1].update(values)


def _comm_device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        on = t.to(_comm_device())
        torch.distributed.all_reduce(
            on, op=torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM)
        return on.cpu()
    return t


def ablation_checker(basis: torch.Tensor, mu: torch.Tensor | None,
                     report: Callable[[float], None]) -> Callable[[torch.Tensor], None]:
    """A site hook measuring, after an ablation, ``max |(h - mu) Q| / |h - mu|`` over the
    tokens of a forward pass (``mu`` = 0 for zero ablation) and passing it to ``report``."""
    q2 = basis.unsqueeze(-1) if basis.dim() == 1 else basis
    q, _ = torch.linalg.qr(q2.detach().float())

    def fn(hidden: torch.Tensor) -> None:
        with torch.no_grad():
            h = hidden.detach().float()
            if mu is not None:
                h = h - mu.to(h.device, h.dtype)
            rel = (h @ q.to(h.device)).norm(dim=-1) / h.norm(dim=-1).clamp_min(1e-12)
            if rel.numel():
                report(float(rel.max()))

    return fn


def per_rank(value: float) -> list[float]:
    """``value`` of every data-parallel rank (``[value]`` in one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        dev = _comm_device()
        out = [torch.zeros(1, dtype=torch.float64, device=dev)
               for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(out, torch.tensor([value], dtype=torch.float64, device=dev))
        return [float(t[0]) for t in out]
    return [value]


def _located(exc: EmprobeError, where: str) -> EmprobeError:
    """The same error type, its message prefixed with the callback's input (file or class)."""
    message = str(exc)
    if message.startswith(where):
        return exc
    try:
        return type(exc)(f"{where}: {message}")
    except TypeError:  # an error class with another constructor: keep it as it is
        return exc


def _where(callback: object, source: object) -> str:
    """How errors name a callback's input: the file it read, else the callback's class."""
    name = type(callback).__name__
    if isinstance(source, (str, os.PathLike)):
        return f"{source} ({name})"
    return name


def sharded_engine(args: TrainingArguments | None = None) -> str | None:
    """``"FSDP"`` / ``"DeepSpeed"`` when the run shards parameters or gradients, else None."""
    if getattr(args, "deepspeed", None) or os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
        return "DeepSpeed"
    if getattr(args, "fsdp", None) or os.environ.get("ACCELERATE_USE_FSDP") == "true":
        return "FSDP"
    return None


def refuse_sharded(what: str, args: TrainingArguments | None = None) -> None:
    """GRASP projects whole LoRA factors and their gradients: refuse sharded engines."""
    engine = sharded_engine(args)
    if engine is not None:
        raise ConfigError(f"{what} projects whole LoRA factors, which {engine} shards; train "
                          "with DDP (or one process), or keep the LoRA parameters unsharded")


class HookCallback(TrainerCallback):
    """Base: forward hooks on the trained model from ``on_train_begin`` to ``on_train_end``.

    ``open(model)`` / ``close()`` also work outside a trainer; ``suspended()`` switches the
    hooks off for a block (a reference forward pass).
    """

    def __init__(self, direction: DirectionSource, layers: Layers = None, site: str | None = None,
                 allow_other_model: bool = True, model_name: str | None = None) -> None:
        self.direction = read_direction(direction, model=model_name)
        self.where = _where(self, direction)
        self.layers = check_layers(layers, self.where)
        self.site = check_site(site or default_site(self.direction))
        self.allow_other_model = allow_other_model
        self._stack: contextlib.ExitStack | None = None
        self._model: torch.nn.Module | None = None

    def table(self, subject: Subject, what: str, width_dim: int) -> dict[int, torch.Tensor]:
        return as_layer_table(self.direction, subject, self.layers, what,
                              allow_other_model=self.allow_other_model, width_dim=width_dim)

    def _enter(self, subject: Subject, stack: contextlib.ExitStack) -> None:
        raise NotImplementedError

    @property
    def is_open(self) -> bool:
        return self._stack is not None

    def open(self, model: torch.nn.Module) -> None:
        """Install the hooks on ``model`` (any engine wrapper is removed first)."""
        self.close()
        subject = subject_for_model(model)
        stack = contextlib.ExitStack()
        try:
            self._enter(subject, stack)
        except EmprobeError as exc:
            stack.close()
            raise _located(exc, self.where) from None
        except BaseException:
            stack.close()
            raise
        self._stack, self._model = stack, model

    def close(self) -> None:
        """Remove every hook this callback installed."""
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Hooks off inside the block (e.g. the reference model's forward), back on after."""
        model = self._model
        if self._stack is None or model is None:
            yield
            return
        self.close()
        try:
            yield
        finally:
            self.open(model)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, model: torch.nn.Module | None = None,
                       **kwargs: object) -> None:
        if model is None:
            raise ConfigError(f"{type(self).__name__}: the trainer passed no model")
        self.open(model)

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: object) -> None:
        self.close()


class CAFTCallback(HookCallback):
    """Concept-ablation fine-tuning: remove a subspace from an activation site while training.

    ``h <- h - (h Q) Q^T`` (``mode="zero"``) or ``h - ((h - mu) Q) Q^T`` (``"mean"``, needs
    ``means={layer: mu [d_model]}``), on every token, ``Q`` ``[d_model, k]`` orthonormalised
    from the direction's vectors at each layer (``layers`` narrows them). ``verify=True``
    measures, after the edit, ``max |h Q| / |h|`` over the tokens of every forward pass and
    logs it as ``caft/max_rel_proj`` (reduced with max over data-parallel ranks).
    """

    def __init__(self, direction: DirectionSource, layers: Layers = None, mode: str = "zero",
                 means: Mapping[int, torch.Tensor] | None = None, site: str | None = None,
                 verify: bool = False, allow_other_model: bool = True,
                 model_name: str | None = None) -> None:
        super().__init__(direction, layers, site, allow_other_model, model_name)
        if mode == "mean" and means is None:
            raise ConfigError("CAFTCallback mode='mean' needs means={layer: mu}")
        self.mode, self.means, self.verify = mode, means, verify
        self.max_rel_proj: float | None = None

    def _enter(self, subject: Subject, stack: contextlib.ExitStack) -> None:
        table = self.table(subject, "CAFT basis", 0)
        stack.enter_context(ablate(subject, table, mode=self.mode, mean=self.means,
                                   site=self.site))
        if self.verify:
            means = self.means or {}
            stack.enter_context(patch(subject, self.site, {
                la: self._checker(q, means.get(la)) for la, q in table.items()}))

    def _checker(self, basis: torch.Tensor, mu: torch.Tensor | None
                 ) -> Callable[[torch.Tensor], None]:
        return ablation_checker(basis, mu, self._seen_rel)

    def _seen_rel(self, value: float) -> None:
        self.max_rel_proj = max(self.max_rel_proj or 0.0, value)

    def on_log(self, args: TrainingArguments, state: TrainerState,
               control: TrainerControl, logs: dict[str, float] | None = None,
               **kwargs: object) -> None:
        if self.verify and self.max_rel_proj is not None:
            val = _all_reduce_(torch.tensor([self.max_rel_proj], dtype=torch.float64), "max")
            _merge_logs(state, logs, {"caft/max_rel_proj": float(val[0])})
            self.max_rel_proj = None


class SteeringCallback(HookCallback):
    """Preventative steering: add ``coeff * v`` at the site on every token while training.

    Vectors are used raw (persona-vector coefficients assume unnormalised vectors).
    """

    def __init__(self, direction: DirectionSource, coeff: float = 1.0, layers: Layers = None,
                 site: str | None = None, allow_other_model: bool = True,
                 model_name: str | None = None) -> None:
        super().__init__(direction, layers, site, allow_other_model, model_name)
        self.coeff = check_number(coeff, self.where, "coeff")

    def _enter(self, subject: Subject, stack: contextlib.ExitStack) -> None:
        table = self.table(subject, "steering vector", -1)
        stack.enter_context(steer(subject, table, coeff=self.coeff, site=self.site))


def _named_sources(directions: DirectionSource) -> dict[str, DirectionSource]:
    if isinstance(directions, Mapping) and directions and not isinstance(
            next(iter(directions.values())), torch.Tensor) and \
            "layer_activations" not in directions:
        return {str(k): v for k, v in directions.items()}
    return {"dir": directions}


class PersonaMonitorCallback(HookCallback):
    """Log the mean projection ``h . v / |v|`` of the training batches on chosen directions.

    ``directions``: one source (named ``dir``) or ``{name: source}``. Every ``every``
    optimizer steps the trainer is told to log, and the mean over the forward passes since
    the last log (response tokens: ``labels != -100``; ``positions="all"``: every attended
    token) is added as ``proj/<name>/L<layer>``, averaged over data-parallel ranks. Values are
    those the training forward computes: a monitor opened before a steering or ablation
    callback at the same site sees the activations before that edit. A gradient-checkpointing
    recomputation is not counted twice.
    """

    def __init__(self, directions: DirectionSource, layers: Layers = None, every: int = 10,
                 site: str | None = None, positions: str = "response",
                 allow_other_model: bool = True, model_name: str | None = None) -> None:
        named = {n: read_direction(s, model=model_name)
                 for n, s in _named_sources(directions).items()}
        check_layers(layers, _where(self, directions))
        first = next(iter(named.values()))
        super().__init__(first, layers, site, allow_other_model, model_name)
        self.where = _where(self, directions)
        if type(every) is not int or every < 1:
            raise ConfigError(f"{self.where}: every must be an integer >= 1, got {every!r}")
        if positions not in ("response", "all"):
            raise ConfigError(f"PersonaMonitorCallback: positions must be response or all, "
                              f"not {positions!r}")
        self.named, self.every, self.positions = named, every, positions
        self._mask: torch.Tensor | None = None
        self._call = 0
        self._seen: dict[str, int] = {}
        self._sums: dict[str, list[float]] = {}
        self._pending: dict[str, float] = {}

    def _enter(self, subject: Subject, stack: contextlib.ExitStack) -> None:
        handle = subject.model.register_forward_pre_hook(self._capture, with_kwargs=True)
        stack.callback(handle.remove)
        for name, source in self.named.items():
            table = as_layer_table(source, subject, self.layers, f"monitor direction {name!r}",
                                   allow_other_model=self.allow_other_model, width_dim=-1)
            stack.enter_context(patch(subject, self.site, {
                la: self._recorder(f"proj/{name}/L{la}", v) for la, v in table.items()}))
            for la in table:  # the same keys on every rank, whatever each one saw
                self._sums.setdefault(f"proj/{name}/L{la}", [0.0, 0.0])

    def _capture(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self._call += 1
        labels, att = kwargs.get("labels"), kwargs.get("attention_mask")
        if self.positions == "response" and isinstance(labels, torch.Tensor):
            self._mask = labels != -100
        elif isinstance(att, torch.Tensor) and att.dim() == 2:
            self._mask = att.bool()
        else:
            self._mask = None

    def _recorder(self, key: str, vec: torch.Tensor) -> Callable[[torch.Tensor], None]:
        unit = vec.detach().float() / vec.detach().float().norm().clamp_min(1e-12)

        def fn(hidden: torch.Tensor) -> None:
            if self._seen.get(key) == self._call:  # a checkpointing recomputation
                return
            self._seen[key] = self._call
            with torch.no_grad():
                proj = hidden.detach().float() @ unit.to(hidden.device)
                mask = self._mask
                if mask is not None and mask.shape == proj.shape:
                    proj = proj[mask.to(proj.device)]
                if proj.numel():
                    acc = self._sums.setdefault(key, [0.0, 0.0])
                    acc[0] += float(proj.sum())
                    acc[1] += float(proj.numel())

        return fn

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: object) -> None:
        if state.global_step % self.every:
            return
        keys = sorted(self._sums)
        vec = torch.tensor([x for k in keys for x in self._sums[k]], dtype=torch.float64)
        vec = _all_reduce_(vec)
        self._pending = {k: float(vec[2 * i] / vec[2 * i + 1]) for i, k in enumerate(keys)
                         if vec[2 * i + 1] > 0}
        self._sums = {k: [0.0, 0.0] for k in keys}
        control.should_log = True

    def on_log(self, args: TrainingArguments, state: TrainerState,
               control: TrainerControl, logs: dict[str, float] | None = None,
               **kwargs: object) -> None:
        _merge_logs(state, logs, self._pending)
        self._pending = {}


_BLOCK_INDEX = re.compile(r"\.(\d+)\.")


class GRASPCallback(TrainerCallback):
    """Keep LoRA write-side updates off a subspace: ``B.grad <- P B.grad`` before each optimizer
    step and ``B <- P B`` after it (``P = I - U U^T``), so ``P dW = 0`` whatever Adam does.

    ``source``: a ``GRASP`` object; a naive adapter folder (blocks its top-``k`` left singular
    vectors per module, ``GRASP.from_adapter``); or any direction source, whose layer-``l``
    vectors are blocked on the write side of block ``l``'s ``modules`` (the modules writing
    into the residual stream). Runs after the trainer's gradient clipping. ``verify=True``
    logs ``grasp/max_rel_grad`` = ``max |U^T g| / |g|`` after the projection.
    """

    def __init__(self, source: DirectionSource, k: int = 1, modules: Sequence[str] = ("o_proj", "down_proj"),
                 layers: Layers = None, verify: bool = False,
                 model_name: str | None = None) -> None:
        self.modules, self.verify = tuple(modules), verify
        self.layers = check_layers(layers, _where(self, source))
        self.grasp: GRASP | None = None
        self.direction: Any = None
        if isinstance(source, GRASP):
            self.grasp = source
        elif _is_adapter(source):
            self.grasp = GRASP.from_adapter(source, k=k, modules=self.modules)
        else:
            self.direction = read_direction(source, model=model_name)
        self.max_rel_grad: float | None = None

    def _from_direction(self, model: Any) -> GRASP:
        subject = subject_for_model(model)
        table = as_layer_table(self.direction, subject, self.layers, "GRASP direction",
                               allow_other_model=True, width_dim=0)
        blocked: dict[str, torch.Tensor] = {}
        for name, mod in lora_modules(unwrap_model(model)).items():
            m = _BLOCK_INDEX.search(name)
            if m and int(m.group(1)) in table and name.endswith(self.modules):
                if mod.out_features == subject.d_model:
                    blocked[name] = table[int(m.group(1))]
        if not blocked:
            raise DataError(f"GRASP: no LoRA module ending in {list(self.modules)} at layers "
                            f"{sorted(table)} writes to the residual stream")
        return GRASP(blocked=blocked, source="direction")

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, model: torch.nn.Module | None = None,
                       **kwargs: object) -> None:
        refuse_sharded("GRASP", args)
        inner = unwrap_model(model)
        if self.direction is not None:
            self.grasp = self._from_direction(inner)
        assert self.grasp is not None
        self.grasp._targets = self.grasp._resolve(inner)
        self.grasp.after_step(inner)  # start inside the allowed subspace

    @torch.no_grad()
    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState,
                              control: TrainerControl, model: torch.nn.Module | None = None,
                              **kwargs: object) -> None:
        if self.grasp is None:
            return
        self.grasp.after_backward(model)
        if self.verify:
            for param, basis, side in self.grasp._targets:
                g = param.grad
                if g is None or side != "B":
                    continue
                rel = float((basis.T @ g).norm() / g.norm().clamp_min(1e-30))
                self.max_rel_grad = max(self.max_rel_grad or 0.0, rel)

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState,
                          control: TrainerControl, model: torch.nn.Module | None = None,
                          **kwargs: object) -> None:
        if self.grasp is not None:
            self.grasp.after_step(model)

    def on_log(self, args: TrainingArguments, state: TrainerState,
               control: TrainerControl, logs: dict[str, float] | None = None,
               **kwargs: object) -> None:
        if self.verify and self.max_rel_grad is not None:
            val = _all_reduce_(torch.tensor([self.max_rel_grad], dtype=torch.float64), "max")
            _merge_logs(state, logs, {"grasp/max_rel_grad": float(val[0])})
            self.max_rel_grad = None

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: object) -> None:
        if self.grasp is not None:
            self.grasp._targets.clear()


def _is_adapter(source: object) -> TypeGuard[str | os.PathLike[str]]:
    from pathlib import Path

    if not isinstance(source, (str, Path)):
        return False
    p = Path(source)
    return (p / "adapter_config.json").is_file() or (p / "adapter" / "adapter_config.json"
                                                     ).is_file()

