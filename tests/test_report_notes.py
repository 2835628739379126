"""significance_note: a plain verdict on whether an interval excludes 0."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from emprobe.errors import DataError
from emprobe.report import significance_note


def test_interval_above_zero_is_significant_and_positive():
    note = significance_note(0.2, 1.5, what="the shift")
    assert note.significant and note.kind == "info" and note.direction == "positive"
    assert note.text.startswith("Significant: the 95% interval of the shift is [0.2, 1.5]")
    assert "excludes 0" in str(note)


def test_interval_below_zero_is_significant_and_negative():
    note = significance_note(-3.0, -0.01, level=0.9)
    assert note.significant and note.direction == "negative"
    assert "90% interval" in note.text


@pytest.mark.parametrize("lo,hi", [(-0.5, 0.5), (0.0, 1.0), (-1.0, 0.0), (0.0, 0.0)])
def test_interval_that_contains_or_touches_zero_is_not_significant(lo, hi):
    note = significance_note(lo, hi, what="CAFT's change", unit="nats")
    assert not note.significant and note.kind == "warning" and note.direction == "none"
    assert note.text.startswith("Not significant") and "includes 0" in note.text
    assert "nats" in note.text


def test_missing_bounds_and_reversed_bounds():
    note = significance_note(float("nan"), 1.0)
    assert note.text.startswith("No interval") and note.kind == "warning"
    assert math.isnan(note.lo)
    assert significance_note(None, 1.0).text.startswith("No interval")
    with pytest.raises(DataError, match="lower bound 2.0 is above upper bound 1.0"):
        significance_note(2.0, 1.0)
    with pytest.raises(DataError, match="not a number"):
        significance_note("a", 1.0)


def test_accepts_an_estimate_like_object_or_dict():
    @dataclass
    class Estimate:
        mean: float
        lo: float
        hi: float

    assert significance_note(Estimate(1.0, 0.5, 1.5)).significant
    assert not significance_note({"mean": 0.0, "lo": -1.0, "hi": 1.0}).significant
    with pytest.raises(DataError, match=r"give \(lo, hi\)"):
        significance_note(3.0)
    assert significance_note(0.1, 0.2).to_record()["significant"] is True
