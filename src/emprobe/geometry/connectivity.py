"""Linear mode connectivity between LoRA fine-tunes, by editing base weights in place.

Paths are parameterised on the update ``dW = s B A`` (not on the factors):

* base to adapter: ``W(t) = W0 + t dW``, t in [0, 2];
* adapter to adapter: ``W(t) = W0 + (1 - t) dW_A + t dW_B``, t in [0, 1];
* three adapters: ``W(c) = W0 + c_1 dW_1 + c_2 dW_2 + c_3 dW_3`` on a simplex grid.

(Scaling both ``A`` and ``B`` by ``t``, as some public notebooks do, scales ``dW``
by ``t^2``; we do not.) A point is set by writing ``W0 + sum_i c_i dW_i`` into the
base Linear weights (never accumulating), and the original weights are copied
back bit-exactly on exit and checked with ``torch.equal``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from emprobe.errors import ConfigError, DataError, EmprobeError, ShapeError, SiteError
from emprobe.evaluate.local import answer_logprobs
from emprobe.evaluate.stats import Estimate, bootstrap_stat
from emprobe.models.adapter import LoraAdapter, LoraModule, read_adapter

if TYPE_CHECKING:
    from emprobe.models.subject import Subject

__all__ = [
    "WeightPath",
    "PathPoint",
    "base_path",
    "pair_path",
    "simplex_grid",
    "ResponseLosses",
    "response_losses",
    "response_loss",
    "loss_evaluator",
    "local_score_evaluator",
    "barrier_height",
    "ConnectivityResult",
    "run_connectivity",
]

Evaluator = Callable[["Subject"], "float | Mapping[str, float]"]
"""A measurement at one path point: ``subject -> value`` or ``{"mean", "lo", "hi"}``."""
HeldOut = Sequence["Mapping[str, object] | Sequence[Mapping[str, str]]"]
"""Held-out chat records (``{"messages": [...]}``) or bare conversations."""


@dataclass(frozen=True)
class PathPoint:
    """One point of a path: ``t`` (position for curves) and ``coeffs`` (one per adapter)."""

    t: float
    coeffs: tuple[float, ...]


def base_path(points: int = 11, t_max: float = 2.0) -> list[PathPoint]:
    """``W0 + t dW`` for ``points`` values of t evenly in ``[0, t_max]``."""
    if points < 2:
        raise ConfigError(f"a path needs at least 2 points, got {points}")
    return [PathPoint(t=float(t), coeffs=(float(t),))
            for t in torch.linspace(0.0, t_max, points, dtype=torch.float64)]


def pair_path(points: int = 11) -> list[PathPoint]:
    """``W0 + (1 - t) dW_A + t dW_B`` for t evenly in ``[0, 1]``."""
    if points < 2:
        raise ConfigError(f"a path needs at least 2 points, got {points}")
    return [PathPoint(t=float(t), coeffs=(float(1 - t), float(t)))
            for t in torch.linspace(0.0, 1.0, points, dtype=torch.float64)]


def simplex_grid(points_per_edge: int = 5) -> list[PathPoint]:
    """Barycentric grid ``(c_1, c_2, c_3)``, ``c_i = n_i / (p - 1)``, ``sum n_i = p - 1``.

    ``t`` is the point's index in the grid (the coefficients carry the position).
    """
    if points_per_edge < 2:
        raise ConfigError(f"a simplex grid needs at least 2 points per edge, got {points_per_edge}")
    n = points_per_edge - 1
    out = []
    for i in range(n, -1, -1):
        for j in range(n - i, -1, -1):
            out.append(PathPoint(t=float(len(out)), coeffs=(i / n, j / n, (n - i - j) / n)))
    return out


def _model_of(subject_or_model: Subject | torch.nn.Module) -> torch.nn.Module:
    model = getattr(subject_or_model, "model", subject_or_model)
    if hasattr(model, "peft_config"):
        raise EmprobeError(
            "connectivity edits base weights: load the base model without an adapter "
            "(load_model(spec)), not a PeftModel")
    if not isinstance(model, torch.nn.Module):
        raise EmprobeError(f"connectivity needs a Subject or a torch model, got "
                           f"{type(subject_or_model).__name__}")
    return model


class WeightPath:
    """Context manager that moves a model along a path of LoRA updates, then restores it.

    Example::

        with WeightPath(subject, [adapter_a, adapter_b]) as wp:
            for point in pair_path(11):
                wp.set(point.coeffs)
                loss = response_loss(subject, held_out)
        # weights are bit-identical to before here
    """

    def __init__(self, subject_or_model: Subject | torch.nn.Module, adapters: Sequence[LoraAdapter | str | Path]):
        self.model = _model_of(subject_or_model)
        self.adapters = [a if isinstance(a, LoraAdapter) else read_adapter(a) for a in adapters]
        if not self.adapters:
            raise DataError("WeightPath needs at least one adapter")
        named = dict(self.model.named_modules())
        self._weights: dict[str, torch.Tensor] = {}
        self._originals: dict[str, torch.Tensor] = {}
        self._updates: dict[str, list[tuple[int, LoraModule]]] = {}
        for ai, ad in enumerate(self.adapters):
            for mo in ad:
                module = named.get(mo.name)
                weight = getattr(module, "weight", None)
                if module is None or not isinstance(weight, torch.Tensor):
                    raise SiteError(f"adapter {ad.label}: module {mo.name} is not in the model")
                want = (mo.d_in, mo.d_out) if mo.fan_in_fan_out else (mo.d_out, mo.d_in)
                if tuple(weight.shape) != want:
                    raise ShapeError(f"adapter {ad.label}: {mo.name} weight {tuple(weight.shape)}, "
                                     f"update wants {want}")
                self._weights[mo.name] = weight
                self._updates.setdefault(mo.name, []).append((ai, mo))
        self._active = False
        self.coeffs: tuple[float, ...] = (0.0,) * len(self.adapters)

    def __enter__(self) -> WeightPath:
        self._originals = {name: w.detach().clone() for name, w in self._weights.items()}
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    @torch.no_grad()
    def set(self, coeffs: Sequence[float]) -> None:
        """Write ``W0 + sum_i coeffs[i] dW_i`` into every adapted weight (in float64, then cast)."""
        if not self._active:
            raise EmprobeError("WeightPath.set outside its `with` block")
        if len(coeffs) != len(self.adapters):
            raise ConfigError(f"{len(coeffs)} coefficients for {len(self.adapters)} adapters")
        for name, updates in self._updates.items():
            w0 = self._originals[name]
            new = w0.to(torch.float64)
            for ai, mo in updates:
                c = float(coeffs[ai])
                if c == 0.0:
                    continue
                delta = (c * mo.scale) * (mo.B.to(torch.float64) @ mo.A.to(torch.float64))
                new = new + (delta.mT if mo.fan_in_fan_out else delta)
            self._weights[name].copy_(new.to(w0.dtype))
        self.coeffs = tuple(float(c) for c in coeffs)

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the original weights back and check they are bit-identical."""
        if not self._active:
            return
        for name, w in self._weights.items():
            w.copy_(self._originals[name])
            if not torch.equal(w, self._originals[name]):
                raise EmprobeError(f"could not restore {name} exactly")
        self._active = False
        self._originals = {}
        self.coeffs = (0.0,) * len(self.adapters)


# ---------- evaluations along a path ----------

def _conversations(records: HeldOut, where: str) -> list[list[dict[str, str]]]:
    from emprobe.models.chat import validate_conversation

    convs = []
    for i, rec in enumerate(records):
        conv = rec.get("messages") if isinstance(rec, Mapping) else rec
        convs.append(validate_conversation(conv, f"{where}[{i}]"))
    if not convs:
        raise DataError(f"{where}: no conversations")
    return convs


@dataclass(frozen=True)
class ResponseLosses:
    """Held-out response losses, per record (in the records' order).

    Attributes:
        nll: ``[n_records]`` float64, summed negative log-likelihood of the record's
            response (assistant) tokens, nats.
        tokens: ``[n_records]`` float64, the number of response tokens.
    """

    nll: np.ndarray
    tokens: np.ndarray

    @property
    def mean(self) -> float:
        """Token-weighted mean loss over all records (nats / token)."""
        return float(self.nll.sum() / self.tokens.sum())

    def bootstrap(self, n_boot: int = 200, seed: int = 0) -> Estimate:
        """The token-weighted mean with a percentile bootstrap 95 % interval that resamples
        whole records (``n_boot=0``: no interval)."""
        nll, tokens = self.nll, self.tokens
        return bootstrap_stat(lambda idx: float(nll[idx].sum() / tokens[idx].sum()),
                              len(nll), n_boot=n_boot, seed=seed)


@torch.no_grad()
def response_losses(subject: Subject, records: HeldOut, batch_size: int = 8,
                    where: str = "held-out data") -> ResponseLosses:
    """Per-record response loss of ``subject`` on held-out chats: the one held-out
    task-loss computation (connectivity curves, mitigation task costs).

    Args:
        subject: an emprobe ``Subject``.
        records: chat records (``{"messages": [...]}``) or conversations; checked first
            (a one-line ``DataError`` naming ``where`` and the record).
        batch_size: conversations per forward pass.

    Scored by ``emprobe.evaluate.local.answer_logprobs`` (the local score's engine:
    logits only at response positions, shared prompts run once), so a record with no
    response token after tokenisation is a ``DataError``.
    """
    convs = _conversations(records, where)
    got = answer_logprobs(subject, convs, batch_size=batch_size)
    return ResponseLosses(np.array([-lp for lp, _ in got]), np.array([n for _, n in got], float))


def response_loss(
    subject: Subject, records: HeldOut, batch_size: int = 8, n_boot: int = 200, seed: int = 0,
    where: str = "held-out data",
) -> dict[str, float]:
    """Mean cross-entropy (nats) over response tokens, with a bootstrap 95 % interval.

    Args:
        subject: an emprobe ``Subject``.
        records: chat records (``{"messages": [...]}``) or conversations.
        n_boot: bootstrap resamples of conversations for the interval (0: no interval).

    Returns:
        ``{"mean", "lo", "hi", "n_tokens", "n_seq"}``; ``mean`` is token-weighted
        (see :class:`ResponseLosses`).
    """
    losses = response_losses(subject, records, batch_size=batch_size, where=where)
    est = losses.bootstrap(n_boot=n_boot, seed=seed)
    return {"mean": est.mean, "lo": est.lo, "hi": est.hi,
            "n_tokens": float(losses.tokens.sum()), "n_seq": float(len(losses.nll))}


def loss_evaluator(records: HeldOut, batch_size: int = 8, n_boot: int = 200,
                   where: str = "held-out data") -> Evaluator:
    """An evaluator ``subject -> response_loss(subject, records)`` (conversations checked now)."""
    convs = _conversations(records, where)
    return lambda subject: response_loss(subject, convs, batch_size=batch_size, n_boot=n_boot,
                                         where=where)


def local_score_evaluator(**kwargs: Any) -> Evaluator:
    """An evaluator from ``emprobe.evaluate.local.local_score`` (per-answer margin, nats)."""
    from emprobe.evaluate.local import local_score

    def run(subject: Subject) -> dict[str, float]:
        return local_score(subject, **kwargs).per_answer.to_record()

    return run


def barrier_height(ts: Sequence[float], values: Sequence[float],
                   start: float | None = None, end: float | None = None) -> float:
    """Largest rise of ``values`` above the straight line between the end points.

    The end points are the values at ``start`` and ``end`` (default: first and last t);
    only points with t between them count. 0 when the curve never rises above the line.
    """
    if len(ts) != len(values) or len(ts) < 2:
        raise DataError(f"barrier needs matching t and values (>= 2), got {len(ts)}, {len(values)}")
    t0 = ts[0] if start is None else start
    t1 = ts[-1] if end is None else end
    v = dict(zip(ts, values, strict=True))
    if t0 not in v or t1 not in v:
        raise ConfigError(f"barrier end points t={t0}, t={t1} are not path points")
    v0, v1 = v[t0], v[t1]
    best = 0.0
    for t, val in zip(ts, values, strict=True):
        if min(t0, t1) <= t <= max(t0, t1) and t1 != t0:
            line = v0 + (t - t0) / (t1 - t0) * (v1 - v0)
            best = max(best, val - line)
    return float(best)


@dataclass
class ConnectivityResult:
    """Evaluations along a path.

    Attributes:
        mode: ``base``, ``pair`` or ``simplex``.
        labels: adapter labels. metrics: evaluator names.
        records: one per point: ``t``, ``coeffs`` and, per metric, ``<m>`` (mean) and
            ``<m>_lo`` / ``<m>_hi`` when the evaluator gives an interval.
        barriers: metric -> barrier height (between t=0 and t=1; not for simplex grids).
    """

    mode: str
    labels: list[str]
    metrics: list[str]
    records: list[dict[str, Any]]
    barriers: dict[str, float] = field(default_factory=dict)

    def curve(self, metric: str) -> tuple[list[float], list[float]]:
        return [r["t"] for r in self.records], [r[metric] for r in self.records]

    def summary(self) -> dict[str, object]:
        """JSON-ready: everything but the per-point records."""
        return {k: v for k, v in asdict(self).items() if k != "records"}

    def save(self, out_dir: str | Path, figures: bool = True) -> dict[str, Path]:
        """Write ``curves.jsonl``, ``summary.json`` and (optionally) ``connectivity.html``."""
        from emprobe.io import write_json, write_jsonl

        out = Path(out_dir)
        paths = {"curves": write_jsonl(out / "curves.jsonl", self.records),
                 "summary": write_json(out / "summary.json", self.summary())}
        if figures and self.mode != "simplex":
            from emprobe.geometry.figures import connectivity_figure, write_html

            paths["figure"] = write_html(connectivity_figure(self), out / "connectivity.html")
        return paths


def run_connectivity(
    subject: Subject,
    adapters: Sequence[LoraAdapter | str | Path],
    evaluators: Mapping[str, Evaluator],
    mode: str | None = None,
    points: int = 11,
    labels: Sequence[str] | None = None,
    progress: bool = True,
) -> ConnectivityResult:
    """Evaluate a model along a weight-space path between its base and LoRA adapters.

    Args:
        subject: a ``Subject`` (or HF model) loaded WITHOUT an adapter; restored on return.
        adapters: 1 (base path), 2 (pair path) or 3 (simplex grid) adapters.
        evaluators: name -> callable(subject) returning a float or ``{"mean", "lo", "hi"}``.
        mode: ``base`` | ``pair`` | ``simplex`` (default from the number of adapters).
        points: points on the path (per edge for the simplex).
    """
    from tqdm.auto import tqdm

    n = len(adapters)
    mode = mode or {1: "base", 2: "pair", 3: "simplex"}.get(n, "")
    want = {"base": 1, "pair": 2, "simplex": 3}
    if mode not in want or want[mode] != n:
        raise ConfigError(f"connectivity mode {mode!r} with {n} adapters: use base (1), pair (2) "
                         "or simplex (3)")
    grid = {"base": base_path, "pair": pair_path, "simplex": simplex_grid}[mode](points)
    records: list[dict[str, Any]] = []
    with WeightPath(subject, adapters) as wp:
        labels = list(labels) if labels is not None else [a.label for a in wp.adapters]
        for point in tqdm(grid, desc=f"connectivity ({mode})", disable=not progress, leave=False):
            wp.set(point.coeffs)
            rec: dict[str, Any] = {"t": point.t, "coeffs": list(point.coeffs)}
            for name, fn in evaluators.items():
                got = fn(subject)
                if isinstance(got, Mapping):
                    rec[name] = float(got["mean"])
                    for extra in ("lo", "hi"):
                        if extra in got:
                            rec[f"{name}_{extra}"] = float(got[extra])
                else:
                    rec[name] = float(got)
            records.append(rec)
    barriers: dict[str, float] = {}
    if mode != "simplex":
        ts = [r["t"] for r in records]
        if any(math.isclose(t, 1.0) for t in ts):
            t1 = min(ts, key=lambda t: abs(t - 1.0))
            for name in evaluators:
                barriers[name] = barrier_height(ts, [r[name] for r in records], ts[0], t1)
    return ConnectivityResult(mode=mode, labels=labels, metrics=list(evaluators),
                              records=records, barriers=barriers)

