"""Causal checks of candidate latents: steer with decoder rows, and the re-alignment driver.

A *scorer* is ``scorer(subject) -> result`` (see ``emprobe.evaluate.controls``): a plain
function returning an ``Estimate``, a ``(mean, lo, hi)`` tuple or a float, or a
``PairedScorer`` such as ``default_scorer()`` (``emprobe.evaluate.local.local_score``'s
per-answer margin), whose results are also compared paired by question.

Steering vector of latent ``i``: the unit decoder row ``W_dec[i] / ||W_dec[i]||`` times
``coeff * scale`` (a relative ``Steer``); ``scale`` defaults to the mean residual norm at
that site (so a coefficient of 0.5 adds half a typical activation's length), added on all
tokens. The comparison with random controls is ``emprobe.evaluate.controls.versus_controls``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypedDict, TypeVar

import torch

from emprobe.errors import EmprobeError
from emprobe.evaluate.controls import (
    Arm,
    LocalScorer,
    ScoreEntry,
    SubjectScorer,
    scorer_estimate,
    versus_controls,
)
from emprobe.hooks.patch import Steer
from emprobe.protocols import SAELike

if TYPE_CHECKING:
    from emprobe.evaluate.questions import Question
    from emprobe.models.chat import Conversation
    from emprobe.models.subject import Subject

Scorer = SubjectScorer
M = TypeVar("M")  # what a fine-tune step returns (a Subject)


class _SAECfg(Protocol):
    d_in: int
    d_sae: int


class DecoderSAE(Protocol):
    """What the causal checks use of a SAELens SAE: ``W_dec [d_sae, d_in]`` and its sizes."""

    @property
    def W_dec(self) -> torch.Tensor: ...  # noqa: N802 (SAELens' name)

    @property
    def cfg(self) -> _SAECfg: ...


class Interval(TypedDict):
    mean: float
    lo: float
    hi: float


class _LatentRowRequired(TypedDict):
    latent: int | None
    scores: list[ScoreEntry]
    max_delta: float
    norm: float


class LatentRow(_LatentRowRequired, total=False):
    """A candidate (or control) latent's row: its id, scores, best delta and steering norm;
    ``control`` marks a control; candidates get ``control_p`` / ``beats_controls`` when
    there are controls (``emprobe.evaluate.controls.ArmRecord``)."""

    control: bool
    control_p: float
    beats_controls: bool


class SteeringCheck(TypedDict):
    """What ``steering_check`` returns (JSON-ready)."""

    baseline: Interval
    scale: float
    coeffs: list[float]
    site: str
    layer: int
    latents: list[LatentRow]
    controls: list[LatentRow]
    control_kind: str | None


def as_interval(est: object) -> Interval:
    """A scorer's estimate (see ``emprobe.evaluate.stats.as_estimate``: an object with
    mean/lo/hi, a tuple or a float) -> ``{"mean", "lo", "hi"}``."""
    from emprobe.evaluate.stats import as_estimate

    e = as_estimate(est)
    return {"mean": e.mean, "lo": e.lo, "hi": e.hi}


def default_scorer(questions: Sequence[Question] | None = None, n_boot: int = 200,
                   seed: int = 0, measure: str = "per_answer",
                   share_prefix: bool | None = None) -> LocalScorer:
    """``emprobe.evaluate.local.local_score`` as a paired scorer (its ``measure`` estimate).

    ``share_prefix=True`` reuses each prompt's key/value cache across its answers; exact
    for interventions on all token positions (as ``steering_check`` applies them)."""
    return LocalScorer(questions=questions, n_boot=n_boot, seed=seed, measure=measure,
                       share_prefix=share_prefix)


def decoder_direction(sae: DecoderSAE, latent: int) -> torch.Tensor:
    """Unit decoder row ``[d_in]`` of ``latent``."""
    row = sae.W_dec[int(latent)].detach().float().cpu()
    return row / row.norm().clamp_min(1e-12)


def _control_rows(sae: DecoderSAE, latents: Sequence[int], n: int, kind: str,
                  gen: torch.Generator) -> list[tuple[int | None, torch.Tensor]]:
    if kind not in ("latents", "gaussian"):
        raise EmprobeError(f"steering check: control_kind {kind!r}: use latents or gaussian")
    if kind == "latents":
        taken = {int(la) for la in latents}
        pool = [i for i in torch.randperm(int(sae.cfg.d_sae), generator=gen).tolist()
                if i not in taken][:n]
        return [(i, decoder_direction(sae, i)) for i in pool]
    d_in = int(sae.cfg.d_in)
    return [(None, torch.nn.functional.normalize(torch.randn(d_in, generator=gen), dim=0))
            for _ in range(n)]


def steering_check(
    subject: Subject,
    sae: DecoderSAE,
    latents: Sequence[int],
    site: str,
    layer: int,
    scorer: Scorer,
    coeffs: Sequence[float] = (0.25, 0.5, 1.0),
    scale: float | None = None,
    random_controls: int = 0,
    seed: int = 0,
    progress: bool = True,
    control_kind: str = "gaussian",
) -> SteeringCheck:
    """Steer ``subject`` with each latent's decoder row at each coefficient; score each.

    ``random_controls`` adds that many control directions steered with exactly the same
    norm (``coeff * scale``, every direction is unit before scaling), listed under
    ``"controls"``: a large push in any direction can move a log-probability score, so a
    candidate is specific only if it beats them. ``control_kind="latents"`` (what the demo and
    the CLI use) draws the unit decoder rows of random other latents of the same SAE
    (``"latent"`` set to their id, ``"control": True``); ``"gaussian"`` (default) draws random
    unit directions (``"latent": None``). The comparison is
    ``emprobe.evaluate.controls.versus_controls``: each candidate gets ``control_p`` and
    ``beats_controls``; with a paired scorer (``default_scorer``) each coefficient entry also
    gets ``delta_lo`` / ``delta_hi`` (vs the unsteered model), ``vs_controls`` (vs each control
    at the same coefficient, paired by question) and ``beats_controls_paired``.

    Returns ``{"baseline": {mean, lo, hi}, "scale", "coeffs", "site", "layer", "latents",
    "controls", "control_kind"}``; each latent entry holds per-coefficient scores, ``delta``
    (steered minus unsteered mean), ``max_delta`` and ``norm``; ``latents`` are sorted by
    ``max_delta`` (most misaligning first). Without ``scale``, the mean residual norm of
    ``subject`` on a few neutral chats is used.
    """
    if scale is None:
        scale = mean_resid_norm(subject, site, layer)
    gen = torch.Generator().manual_seed(seed)
    ctrl_rows = _control_rows(sae, latents, random_controls, control_kind, gen)

    def arm(unit: torch.Tensor) -> Steer:
        return Steer(unit, layers=layer, site=site, positions="all", relative=True,
                     norms=float(scale))

    check = versus_controls(subject, [(int(la), arm(decoder_direction(sae, la))) for la in latents],
                            [(k, arm(u)) for k, u in ctrl_rows], scorer, coeffs=coeffs,
                            progress=progress)
    top_norm = float(scale) * max(abs(float(c)) for c in coeffs)

    def row(a: Arm) -> LatentRow:
        rec = LatentRow(latent=a.key if isinstance(a.key, int) else None, scores=a.scores,
                        max_delta=a.best_delta, norm=top_norm)
        if a.control:
            rec["control"] = True
        if a.control_p is not None and a.beats_controls is not None:
            rec["control_p"], rec["beats_controls"] = a.control_p, a.beats_controls
        return rec

    rows = [row(a) for a in sorted(check.candidates, key=lambda a: a.best_delta, reverse=True)]
    controls = [row(a) for a in check.controls]
    return {"baseline": as_interval(check.baseline), "scale": float(scale),
            "coeffs": [float(c) for c in coeffs], "site": site, "layer": int(layer),
            "latents": rows, "controls": controls,
            "control_kind": control_kind if controls else None}


def mean_resid_norm(subject: Subject, site: str, layer: int) -> float:
    """Mean activation norm at ``(site, layer)`` over a few neutral chats (first token dropped)."""
    from emprobe.hooks.norms import site_mean_norms
    from emprobe.sae.corpus import generic_chats

    return site_mean_norms(subject, site, [layer], generic_chats(8, seed=11))[layer]


@torch.no_grad()
def latent_mean(subject: Subject, sae: SAELike, latent: int, site: str, layer: int,
                data: Sequence[Conversation], positions: str = "all") -> float:
    """Mean activation of one latent over ``data``'s selected tokens (first token dropped)."""
    from emprobe.sae.diff import encode_rows, token_acts

    rows, _, _ = token_acts(subject, data, site, layer, positions=positions)
    return float(encode_rows(sae, rows)[:, int(latent)].mean())


def realignment_curve(
    finetune_fn: Callable[[int], M],
    scorer: Callable[[M], object],
    probe: Callable[[M], float],
    ns: Sequence[int] = (0, 30, 60, 120, 240),
    progress: bool = True,
) -> list[dict[str, object]]:
    """Track the score and a latent while a misaligned model is fine-tuned on N benign examples.

    ``finetune_fn(n)`` returns the subject after ``n`` benign examples (``n = 0``: the
    misaligned model itself); ``probe(subject)`` returns the latent's mean activation (e.g.
    ``functools.partial(latent_mean, sae=..., latent=..., ...)`` wrapped to take a subject).
    See ``emprobe.train.emprobe_realign_fn`` for a ``finetune_fn`` built on ``emprobe.train``.
    """
    from tqdm.auto import tqdm

    out: list[dict[str, object]] = []
    for n in tqdm(list(ns), desc="re-alignment", disable=not progress, leave=False):
        subject = finetune_fn(int(n))
        est = scorer_estimate(scorer, scorer(subject))
        out.append({"n_benign": int(n), "score": {"mean": est.mean, "lo": est.lo, "hi": est.hi},
                    "latent_mean": float(probe(subject))})
    return out
