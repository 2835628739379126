"""Candidate interventions against random controls: the one steer-vs-controls routine.

A large push in any direction moves a log-probability score, so an intervention is
specific only if it beats controls of the same size. ``versus_controls`` scores the
unedited model, then every candidate and every control (each an ``emprobe.hooks``
intervention object: ``Steer``, ``Ablate``, ...) at each coefficient, and compares them:

- ``delta``: the intervention's score minus the baseline (``delta_lo`` / ``delta_hi``: a
  bootstrap interval paired by question, when the scorer can pair);
- ``vs_controls``: the candidate minus each control at the same coefficient, paired by
  question, and ``beats_controls_paired`` (every such interval clears 0 on the effect side);
- ``control_p``: (1 + #controls whose best delta is at least the candidate's) / (1 +
  #controls), an empirical one-sided p-value, and ``beats_controls``.

``sae.steering_check`` (decoder rows of SAE latents), ``directions.coefficient_sweep`` and
``directions.misalignment_effect`` are thin callers of it.

A *scorer* is ``scorer(subject) -> result``. A plain function's result is read by
``emprobe.evaluate.stats.as_estimate`` (an Estimate, ``(mean, lo, hi)`` or a number); a
``PairedScorer`` (``LocalScorer``: the local misalignment score) also pairs two results by
question.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, TypedDict, runtime_checkable

from emprobe.errors import ConfigError
from emprobe.evaluate.stats import Estimate, as_estimate

if TYPE_CHECKING:
    from emprobe.evaluate.local import LocalScore
    from emprobe.evaluate.questions import Question
    from emprobe.hooks.patch import Intervention
    from emprobe.models.subject import Subject

__all__ = ["Arm", "ArmRecord", "ControlCheck", "LocalScorer", "PairedScorer", "ScoreEntry",
           "scorer_estimate", "versus_controls"]

Key = int | str | None
Effect = Literal["increase", "decrease"]


class PairedDelta(TypedDict):
    """A difference paired by question: its mean and interval."""

    delta: float
    delta_lo: float
    delta_hi: float


class _ScoreEntryRequired(TypedDict):
    coeff: float | None
    mean: float
    lo: float
    hi: float
    delta: float


class ScoreEntry(_ScoreEntryRequired, total=False):
    """One intervention at one coefficient (``coeff`` None: applied as it is)."""

    delta_lo: float
    delta_hi: float
    vs_controls: list[PairedDelta]
    beats_controls_paired: bool


class _ArmRecordRequired(TypedDict):
    scores: list[ScoreEntry]
    max_delta: float


class ArmRecord(_ArmRecordRequired, total=False):
    """One candidate or control: its scores and (candidates) the comparison with controls."""

    key: Key
    control: bool
    control_p: float
    beats_controls: bool


@runtime_checkable
class PairedScorer(Protocol):
    """A scorer whose results can be compared paired by question."""

    def __call__(self, subject: Subject) -> object: ...

    def estimate(self, raw: object) -> Estimate: ...

    def paired(self, base: object, other: object) -> Estimate:
        """``other - base``, a bootstrap interval paired by question."""
        ...


SubjectScorer = Callable[["Subject"], object] | PairedScorer


def scorer_estimate(scorer: object, raw: object) -> Estimate:
    """A scorer's result as an ``Estimate`` (``PairedScorer.estimate`` or ``as_estimate``)."""
    if isinstance(scorer, PairedScorer):
        return scorer.estimate(raw)
    return as_estimate(raw)


@dataclass
class LocalScorer:
    """``emprobe.evaluate.local.local_score`` as a paired scorer of one ``measure``.

    ``share_prefix=True`` reuses each prompt's key/value cache across its answers: exact
    for interventions on all token positions, wrong for prompt- or response-only ones.
    """

    questions: Sequence[Question] | None = None
    n_boot: int = 200
    seed: int = 0
    measure: str = "per_answer"
    share_prefix: bool | None = None
    batch_size: int = 8

    def __call__(self, subject: Subject) -> LocalScore:
        from emprobe.evaluate.local import local_score

        return local_score(subject, questions=self.questions, n_boot=self.n_boot,
                           seed=self.seed, share_prefix=self.share_prefix,
                           batch_size=self.batch_size)

    def estimate(self, raw: object) -> Estimate:
        return getattr(raw, self.measure)

    def paired(self, base: object, other: object) -> Estimate:
        from emprobe.evaluate.local import LocalScore, compare

        if not isinstance(base, LocalScore) or not isinstance(other, LocalScore):
            raise ConfigError("LocalScorer.paired: both results must be LocalScores")
        return getattr(compare(base, other, n_boot=self.n_boot, seed=self.seed), self.measure)


@dataclass
class Arm:
    """One intervention scored at each coefficient: its results and its summary."""

    key: Key
    intervention: Intervention
    control: bool = False
    raws: list[object] = field(default_factory=list, repr=False)
    scores: list[ScoreEntry] = field(default_factory=list)
    best_delta: float = float("nan")
    control_p: float | None = None
    beats_controls: bool | None = None

    def record(self) -> ArmRecord:
        rec: ArmRecord = {"key": self.key, "scores": self.scores, "max_delta": self.best_delta}
        if self.control:
            rec["control"] = True
        if self.control_p is not None and self.beats_controls is not None:
            rec["control_p"] = self.control_p
            rec["beats_controls"] = self.beats_controls
        return rec


@dataclass
class ControlCheck:
    """What ``versus_controls`` measured; ``to_record()`` is JSON-ready."""

    baseline_raw: object
    baseline: Estimate
    coeffs: list[float] | None
    candidates: list[Arm]
    controls: list[Arm]
    effect: Effect = "increase"

    def to_record(self) -> dict[str, object]:
        return {"baseline": self.baseline.to_record(), "coeffs": self.coeffs,
                "effect": self.effect, "candidates": [a.record() for a in self.candidates],
                "controls": [a.record() for a in self.controls]}


def _setting(iv: Intervention, coeff: float | None) -> Intervention:
    if coeff is None:
        return iv
    scaled = getattr(iv, "scaled", None)
    if scaled is None:
        raise ConfigError(f"{type(iv).__name__} takes no coefficient: pass coeffs=None")
    return scaled(coeff)


def _score_arm(subject: Subject, arm: Arm, scorer: SubjectScorer, coeffs: list[float] | None,
               baseline_raw: object, baseline: Estimate, sign: int) -> None:
    deltas: list[float] = []
    for c in coeffs if coeffs is not None else [None]:
        with _setting(arm.intervention, c).apply(subject):
            raw = scorer(subject)
        est = scorer_estimate(scorer, raw)
        entry: ScoreEntry = {"coeff": c, "mean": est.mean, "lo": est.lo, "hi": est.hi,
                             "delta": est.mean - baseline.mean}
        if isinstance(scorer, PairedScorer):
            # the paired estimate's own mean, so delta always lies inside its interval
            d = scorer.paired(baseline_raw, raw)
            entry.update({"delta": d.mean, "delta_lo": d.lo, "delta_hi": d.hi})
        arm.raws.append(raw)
        arm.scores.append(entry)
        deltas.append(entry["delta"])
    arm.best_delta = max(deltas) if sign > 0 else min(deltas)


def _compare_with_controls(arm: Arm, controls: list[Arm], scorer: SubjectScorer,
                           sign: int) -> None:
    if not controls:
        return
    others = [c.best_delta for c in controls]
    beaten = sum(sign * d >= sign * arm.best_delta for d in others)
    arm.control_p = (1 + beaten) / (1 + len(others))
    arm.beats_controls = sign * arm.best_delta > max(sign * d for d in others)
    if not isinstance(scorer, PairedScorer):
        return
    for i, entry in enumerate(arm.scores):
        vs = [scorer.paired(c.raws[i], arm.raws[i]) for c in controls]
        entry["vs_controls"] = [PairedDelta(delta=v.mean, delta_lo=v.lo, delta_hi=v.hi)
                                for v in vs]
        entry["beats_controls_paired"] = all((v.lo > 0) if sign > 0 else (v.hi < 0)
                                             for v in vs)


def versus_controls(
    subject: Subject,
    candidates: Sequence[tuple[Key, Intervention]],
    controls: Sequence[tuple[Key, Intervention]],
    scorer: SubjectScorer,
    coeffs: Sequence[float] | None = None,
    effect: Effect = "increase",
    progress: bool = False,
) -> ControlCheck:
    """Score each candidate and control intervention at each coefficient (module docstring).

    Args:
        subject: the model (unchanged on return: every intervention's hooks are removed).
        candidates / controls: ``(key, intervention)``; ``key`` names it in the records.
        scorer: ``scorer(subject)`` (see the module docstring).
        coeffs: coefficients for interventions with ``scaled(c)`` (``Steer``); ``None``
            applies each intervention as it is (``Ablate``).
        effect: ``increase`` (steering towards a trait: the best delta is the largest) or
            ``decrease`` (a mitigation: the best delta is the most negative).
    """
    from tqdm.auto import tqdm

    if effect not in ("increase", "decrease"):
        raise ConfigError(f"versus_controls: effect must be increase or decrease, not {effect!r}")
    sign = 1 if effect == "increase" else -1
    coeff_list = [float(c) for c in coeffs] if coeffs is not None else None
    baseline_raw = scorer(subject)
    baseline = scorer_estimate(scorer, baseline_raw)
    cand = [Arm(k, iv) for k, iv in candidates]
    ctrl = [Arm(k, iv, control=True) for k, iv in controls]
    for arm in tqdm(cand + ctrl, desc="versus controls", disable=not progress, leave=False):
        _score_arm(subject, arm, scorer, coeff_list, baseline_raw, baseline, sign)
    for arm in cand:
        _compare_with_controls(arm, ctrl, scorer, sign)
    return ControlCheck(baseline_raw, baseline, coeff_list, cand, ctrl, effect)
