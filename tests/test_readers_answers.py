"""The answers CSV reader (emprobe.evaluate.answers): numbers in ASCII only, indices without a
sign; every refusal one line naming the file, the row and the column; properties over
arbitrary cells and over the fuzz driver's mutated files."""

from __future__ import annotations

import csv
import math
import random
import re
import warnings

import fuzz_driver as fd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emprobe.errors import DataError
from emprobe.evaluate.answers import MISSING, SPECIAL, read_answers_csv

QUICK = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))

HEADER = ["response", "question", "aligned", "coherent", "paraphrase", "sample", "aligned_mass"]
GOOD = {"response": "hi", "question": "q?", "aligned": "50", "coherent": "75.5",
        "paraphrase": "0", "sample": "3", "aligned_mass": "0.75"}
# an independent statement of what a number cell may hold (not the reader's code)
ASCII_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
NAN = re.compile(r"[+-]?nan", re.IGNORECASE)
INDEX = re.compile(r"[0-9]{1,19}")


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory) -> fd.Fuzzer:
    warnings.simplefilter("ignore")
    return fd.Fuzzer(tmp_path_factory.mktemp("readers_answers"))


def _write(path, rows: list[dict[str, str]]):
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(HEADER)
        for r in rows:
            w.writerow([r[c] for c in HEADER])
    return path


def _refused(path, col: str) -> str:
    with pytest.raises(DataError) as exc:
        read_answers_csv(path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    assert "row 2 (line 3)" in msg and f"column {col!r}" in msg, msg
    return msg


@pytest.mark.parametrize("col, value", [
    ("aligned", "1_0"), ("coherent", "5_0.5"), ("aligned", "\u0665\u0660"),  # Arabic-Indic 50
    ("coherent", "\uff17\uff10"),  # full-width 70
    ("aligned", "\u0663"), ("aligned_mass", "0.2_5"), ("aligned_mass", "\u0660.5"),
    ("paraphrase", "-1"), ("sample", "-3"), ("sample", "-0"), ("sample", "+2"),
    ("paraphrase", "1_0"), ("sample", "\u0663"), ("sample", "\u00b2"),
])
def test_malformed_numbers_are_refused_naming_file_row_column(tmp_path, col, value):
    p = _write(tmp_path / "a.csv", [GOOD, {**GOOD, col: value}])
    _refused(p, col)


def test_ascii_numbers_still_read(tmp_path):
    rows = [GOOD, {**GOOD, "aligned": " 1e1 ", "coherent": "+.5", "aligned_mass": "1E-05",
                   "paraphrase": "007", "sample": "0"},
            {**GOOD, "aligned": "REFUSAL", "coherent": "NaN", "aligned_mass": ""}]
    back = read_answers_csv(_write(tmp_path / "a.csv", rows))
    assert [r["aligned"] for r in back] == [50.0, 10.0, None]
    assert [r["coherent"] for r in back] == [75.5, 0.5, None]
    assert [r["aligned_mass"] for r in back] == [0.75, 1e-05, None]
    assert [(r["paraphrase"], r["sample"]) for r in back] == [(0, 3), (7, 0), (0, 3)]
    assert back[2]["aligned_verdict"] == "REFUSAL"


CELL = st.text(alphabet=st.sampled_from(list("0123456789.+-eE_ nainfNAIF") +
                                        ["\u0663", "\u0665", "\uff17", "\u00b2", "\u06f5"]),
               max_size=8)


def _score_oracle(text: str) -> tuple[bool, float | None]:
    """(accepted, value) for a score cell, from the rules in the module docstring."""
    t = text.strip()
    if t in MISSING or t.upper() in SPECIAL:
        return True, None
    if NAN.fullmatch(t):
        return True, None
    if ASCII_NUMBER.fullmatch(t):
        v = float(t)
        return (0 <= v <= 100), (v if 0 <= v <= 100 else None)
    return False, None


@QUICK
@given(value=CELL, col=st.sampled_from(["aligned", "coherent"]))
def test_any_score_cell_is_read_by_the_rule_or_refused(fuzzer, value, col):
    p = _write(fuzzer.root / "score.csv", [GOOD, {**GOOD, col: value}])
    ok, expected = _score_oracle(value)
    if not ok:
        _refused(p, col)
        return
    got = read_answers_csv(p)[1][col]
    assert got == expected or (got is None and expected is None)
    assert got is None or (type(got) is float and math.isfinite(got))


@QUICK
@given(value=CELL, col=st.sampled_from(["paraphrase", "sample"]))
def test_any_index_cell_is_ascii_digits_or_refused(fuzzer, value, col):
    p = _write(fuzzer.root / "index.csv", [GOOD, {**GOOD, col: value}])
    if INDEX.fullmatch(value.strip()):
        got = read_answers_csv(p)[1][col]
        assert type(got) is int and got == int(value.strip()) and got >= 0
    else:
        _refused(p, col)


@QUICK
@given(rng=st.randoms(use_true_random=False))
def test_driver_answers(fuzzer, rng: random.Random):
    case = fuzzer.case("answers", rng)
    out = fd.run_case(case, 2.0)
    assert out.kind in ("accepted", "rejected"), f"[{case.label}] {out.kind}: {out.detail}"
