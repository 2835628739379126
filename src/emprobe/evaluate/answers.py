"""Per-answer results as the field's CSV: write (atomic) and read (validated).

Columns written, in order: the field's ``response, question, question_id, aligned,
coherent``, then emprobe's ``paraphrase, sample, model, format, group, system,
aligned_mass, coherent_mass, aligned_verdict, coherent_verdict, judge_model`` (those the rows
have), then any other keys of the rows (a foreign file's extra columns survive a rescore).
An unscored answer has an empty ``aligned`` / ``coherent`` cell; floats are written with
``repr`` so a file read back gives the same numbers bit for bit.

Reading accepts other tools' files: ``answer`` is read as ``response`` when there is no
``response`` column; ``question_id`` defaults to the question text; ``aligned`` /
``coherent`` may be missing (answers to be judged), empty, ``nan`` / ``None`` (unscored) or
``REFUSAL`` / ``CODE`` (unscored, with that verdict). Numbers are written in ASCII: digits,
an optional sign, decimal point and exponent (``85``, ``72.5``, ``1e-05``); Python's other
spellings (``1_0``, Arabic-Indic or full-width digits) are refused. ``paraphrase`` and
``sample`` are indices: ASCII digits only, no sign. Every other bad cell is one ``DataError``
line naming the file, the row (1-based data row and its line) and the column.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from emprobe.errors import DataError, LimitError
from emprobe.io import atomic_path
from emprobe.validate import excerpt

__all__ = ["FIELD_COLUMNS", "EMPROBE_COLUMNS", "write_answers_csv", "read_answers_csv"]

FIELD_COLUMNS = ("response", "question", "question_id", "aligned", "coherent")
EMPROBE_COLUMNS = ("paraphrase", "sample", "model", "format", "group", "system",
                   "aligned_mass", "coherent_mass", "aligned_verdict", "coherent_verdict",
                   "judge_model")
SCORE_COLUMNS = ("aligned", "coherent")
INT_COLUMNS = ("paraphrase", "sample")
FLOAT_COLUMNS = ("aligned_mass", "coherent_mass")
OPTIONAL_TEXT = ("model", "format", "group", "system", "aligned_verdict", "coherent_verdict",
                 "judge_model")
MISSING = ("", "nan", "NaN", "NAN", "None", "none", "null", "NULL", "NA", "N/A")
SPECIAL = ("REFUSAL", "CODE")
MAX_CSV_BYTES = 512 * 2**20
MAX_FIELD_CHARS = 4 * 2**20


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _columns(rows: Sequence[Mapping[str, object]]) -> list[str]:
    present: dict[str, None] = {}
    for r in rows:
        present.update(dict.fromkeys(r))
    cols = list(FIELD_COLUMNS) + [c for c in EMPROBE_COLUMNS if c in present]
    return cols + [c for c in present if c not in cols]


def write_answers_csv(path: str | os.PathLike[str], rows: Sequence[Mapping[str, object]]
                      ) -> Path:
    """Write answer rows (see the module docstring) atomically; returns the path."""
    for i, r in enumerate(rows, 1):
        if "response" not in r or "question" not in r:
            raise DataError(f"{path}: row {i} has no 'response' or 'question' to write")
    cols = _columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for r in rows:
        row = dict(r)
        row.setdefault("question_id", row["question"])
        writer.writerow([_cell(row.get(c)) for c in cols])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    return Path(path)


def _float(t: str) -> float:
    """``float(t)`` for a number written in ASCII without ``_`` separators, else ValueError
    (Python's ``float`` also reads ``1_0`` and non-ASCII digits such as ``\u0665``)."""
    if not t.isascii() or "_" in t:
        raise ValueError(t)
    return float(t)


def _score(text: str, where: str) -> tuple[float | None, str | None]:
    """``(score, verdict)`` of a score cell."""
    t = text.strip()
    if t in MISSING:
        return None, None
    if t.upper() in SPECIAL:
        return None, t.upper()
    try:
        value = _float(t)
    except ValueError:
        raise DataError(f"{where}: {excerpt(text, 40)} is not a score 0-100 in ASCII digits, "
                        "empty, REFUSAL or CODE") from None
    if not math.isfinite(value) or not 0 <= value <= 100:
        if math.isnan(value):
            return None, None
        raise DataError(f"{where}: {excerpt(text, 40)} is outside 0-100")
    return value, "score"


def _typed(col: str, text: str, where: str) -> object:
    t = text.strip()
    if col in INT_COLUMNS:
        if not (t.isascii() and t.isdigit() and len(t) <= 19):
            raise DataError(f"{where}: {excerpt(text, 40)} is not an index (ASCII digits, >= 0)")
        return int(t)
    if col in FLOAT_COLUMNS:
        if t in MISSING:
            return None
        try:
            value = _float(t)
        except ValueError:
            raise DataError(f"{where}: {excerpt(text, 40)} is not a number in ASCII digits"
                            ) from None
        if not math.isfinite(value) or not 0 <= value <= 1 + 1e-6:
            raise DataError(f"{where}: {excerpt(text, 40)} is not a probability mass 0-1")
        return value
    if col in OPTIONAL_TEXT:
        return text if text != "" else None
    return text


def _header(reader: Iterator[list[str]], src: str) -> list[str]:
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{src}: empty file (expected a header row)") from None
    header = [h.strip() for h in header]
    seen: set[str] = set()
    for h in header:
        if h in seen:
            raise DataError(f"{src}: column {h!r} appears twice in the header")
        seen.add(h)
    if "response" not in seen and "answer" in seen:
        header = ["response" if h == "answer" else h for h in header]
    for need in ("response", "question"):
        if need not in header:
            raise DataError(f"{src}: no column {need!r} (the header has "
                            f"{excerpt(', '.join(header), 120)})")
    return header


def _row(header: list[str], cells: list[str], where: str) -> dict[str, object]:
    if len(cells) != len(header):
        raise DataError(f"{where}: {len(cells)} cells, the header has {len(header)} columns")
    row: dict[str, object] = {}
    for col, text in zip(header, cells):
        at = f"{where}, column {col!r}"
        if col in SCORE_COLUMNS:
            score, verdict = _score(text, at)
            row[col] = score
            if verdict is not None and f"{col}_verdict" not in header:
                row[f"{col}_verdict"] = verdict
        else:
            row[col] = _typed(col, text, at)
    if not isinstance(row.get("question_id"), str) or not row["question_id"]:
        row["question_id"] = row["question"]
    return row


def read_answers_csv(path: str | os.PathLike[str]) -> list[dict[str, object]]:
    """Read an answers CSV (emprobe's or another tool's; see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such answers file")
    if p.stat().st_size > MAX_CSV_BYTES:
        raise LimitError(f"{p}: larger than {MAX_CSV_BYTES // 2**20} MiB")
    csv.field_size_limit(MAX_FIELD_CHARS)
    rows: list[dict[str, object]] = []
    try:
        with open(p, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = _header(reader, str(p))
            for i, cells in enumerate(reader, 1):
                if not any(c.strip() for c in cells):
                    continue  # blank line
                rows.append(_row(header, cells, f"{p}: row {i} (line {reader.line_num})"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{p}: not a readable CSV ({excerpt(str(exc), 80)})") from None
    if not rows:
        raise DataError(f"{p}: no answer rows")
    return rows
