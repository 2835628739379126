"""Plain-language verdicts on intervals: does this effect differ from zero or not."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Protocol, SupportsFloat

from emprobe.errors import DataError

NOTE_KINDS = ("info", "warning")


@dataclass(frozen=True)
class SignificanceNote:
    """A sentence for a report, with its note kind.

    Attributes:
        text: the sentence (starts with "Significant", "Not significant" or "No interval").
        kind: ``"info"`` when the interval excludes 0, ``"warning"`` otherwise.
        significant: whether the interval excludes 0.
        direction: ``"positive"``, ``"negative"`` or ``"none"``.
        lo, hi: the interval.
    """

    text: str
    kind: str
    significant: bool
    direction: str
    lo: float
    hi: float

    def __str__(self) -> str:
        return self.text

    def to_record(self) -> dict[str, str | bool | float]:
        return asdict(self)


class Bounds(Protocol):
    """An interval with ``.lo`` and ``.hi`` (``emprobe.evaluate.stats.Estimate`` and alike)."""

    @property
    def lo(self) -> float: ...

    @property
    def hi(self) -> float: ...


Bound = SupportsFloat | str | None
"""One interval bound: a number (numeric text too); None is read as NaN."""
_NO_ATTR = object()


def _bounds(estimate_lo: Bounds | Mapping[str, object] | Bound,
            estimate_hi: Bound) -> tuple[float, float]:
    if estimate_hi is None:
        # One object carrying both bounds: an Estimate-like (.lo/.hi) or a dict.
        if isinstance(estimate_lo, Mapping) and "lo" in estimate_lo and "hi" in estimate_lo:
            return _float(estimate_lo["lo"]), _float(estimate_lo["hi"])
        lo = getattr(estimate_lo, "lo", _NO_ATTR)
        hi = getattr(estimate_lo, "hi", _NO_ATTR)
        if lo is not _NO_ATTR and hi is not _NO_ATTR:
            return _float(lo), _float(hi)
        raise DataError("significance_note: give (lo, hi), or one object with .lo and .hi")
    return _float(estimate_lo), _float(estimate_hi)


def _float(value: object) -> float:
    if value is None:
        return math.nan
    try:
        if not isinstance(value, (str, SupportsFloat)):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"significance_note: interval bound {value!r} is not a number") from None


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def significance_note(
    estimate_lo: Bounds | Mapping[str, object] | Bound,
    estimate_hi: Bound = None,
    what: str = "the effect",
    level: float = 0.95,
    unit: str = "",
) -> SignificanceNote:
    """Say plainly whether the interval ``[lo, hi]`` excludes 0.

    ``estimate_lo`` / ``estimate_hi`` are the bounds (or pass one object with ``.lo``
    and ``.hi``, e.g. an ``Estimate``, or a dict). An interval that touches 0
    (``lo == 0`` or ``hi == 0``) does not exclude it. A NaN bound gives a "No
    interval" warning. ``what`` names the quantity ("the misalignment shift of the
    CAFT fine-tune"); ``level`` is the interval's coverage.

    Example::

        note = significance_note(-0.2, 0.5, what="the shift")
        note.text   # "Not significant: the 95% interval of the shift is [-0.2, 0.5], ..."
        report.note(note)   # a warning box in the report
    """
    lo, hi = _bounds(estimate_lo, estimate_hi)
    pct = f"{level * 100:g}%"
    suffix = f" {unit}" if unit else ""
    if math.isnan(lo) or math.isnan(hi):
        return SignificanceNote(
            text=f"No interval: {what} has no {pct} interval here, so this run cannot say "
                 "whether it differs from 0.",
            kind="warning", significant=False, direction="none", lo=lo, hi=hi,
        )
    if lo > hi:
        raise DataError(f"significance_note: lower bound {lo} is above upper bound {hi}")
    span = f"[{_fmt(lo)}, {_fmt(hi)}]{suffix}"
    if lo > 0 or hi < 0:
        direction = "positive" if lo > 0 else "negative"
        return SignificanceNote(
            text=f"Significant: the {pct} interval of {what} is {span}, which excludes 0 "
                 f"(the effect is {direction}).",
            kind="info", significant=True, direction=direction, lo=lo, hi=hi,
        )
    return SignificanceNote(
        text=f"Not significant: the {pct} interval of {what} is {span}, which includes 0; "
             "this run cannot tell the effect apart from no effect.",
        kind="warning", significant=False, direction="none", lo=lo, hi=hi,
    )
