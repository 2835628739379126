"""Reading the records figures are drawn from: lists of dicts, or the JSON / JSONL files holding them.

A record is a flat or nested JSON object. Keys may be dotted (``"per_answer.lo"``)
to reach into nested dicts, so a figure can be drawn straight from what an analysis
wrote (e.g. ``LocalScore.to_record()``) without reshaping it first.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import SupportsFloat, SupportsIndex

from emprobe.errors import ConfigError, DataError
from emprobe.io import read_json, read_jsonl

Record = Mapping[str, object]
RecordsLike = Sequence[Record] | str | os.PathLike[str]

_MISSING = object()


def load_records(src: RecordsLike, where: str = "records") -> list[dict[str, object]]:
    """Records from a list of dicts, a ``.jsonl`` file, or a ``.json`` file.

    A ``.json`` file may hold a list of records or an object with a ``"records"`` list.
    """
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if path.suffix == ".jsonl":
            if not path.is_file():
                raise DataError(f"{path}: no such records file")
            rows: object = read_jsonl(path)
        else:
            rows = read_json(path)
            if isinstance(rows, Mapping) and "records" in rows:
                rows = rows["records"]
        where = str(path)
    else:
        rows = src
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence) or isinstance(rows, str):
        raise DataError(f"{where}: expected a list of records (dicts), got {type(rows).__name__}")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise DataError(f"{where}[{i}]: a record must be a dict, got {type(row).__name__}")
        out.append(dict(row))
    return out


def get(record: Record, key: str, default: object = _MISSING) -> object:
    """``record[key]``; a dotted key walks nested dicts when the flat key is absent."""
    if key in record:
        return record[key]
    node: object = record
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            if default is _MISSING:
                raise KeyError(key)
            return default
    return node


def _present(record: Record, key: str) -> bool:
    """The key exists (its value may be None, drawn as a gap)."""
    try:
        get(record, key)
    except KeyError:
        return False
    return True


def has(record: Record, key: str) -> bool:
    return get(record, key, None) is not None


def number(record: Record, key: str, where: str) -> float:
    """A required numeric field as float; NaN is allowed (drawn as a gap)."""
    try:
        value = get(record, key)
    except KeyError:
        raise DataError(f"{where}: missing field {key!r} (has {sorted(record)})") from None
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, (str, bytes, bytearray, SupportsFloat, SupportsIndex)):
            try:
                return float(value)  # numpy / torch scalars, numeric text
            except ValueError:
                pass
        raise DataError(f"{where}: field {key!r} must be a number, got {value!r}")
    return float(value)


def require(records: Sequence[Record], keys: Sequence[str], where: str) -> None:
    """Every record has every key (dotted keys allowed)."""
    if not records:
        raise DataError(f"{where}: no records to plot")
    for i, rec in enumerate(records):
        for key in keys:
            if get(rec, key, None) is None and not _present(rec, key):
                raise DataError(f"{where}: record {i} has no field {key!r} (has {sorted(rec)})")


def interval_keys(
    records: Sequence[Record], key: str, lo: str | None, hi: str | None, plain: bool = True
) -> tuple[str | None, str | None]:
    """The lower / upper bound keys: the given ones, else the first pair every record has of
    ``<key>_lo`` / ``<key>_hi``, then (for a dotted key like ``"per_answer.mean"``) the
    siblings ``"per_answer.lo"`` / ``"per_answer.hi"``, then (with ``plain``) ``"lo"`` /
    ``"hi"``.
    Returns ``(None, None)`` when there is no interval.
    """
    if lo is not None or hi is not None:
        if lo is None or hi is None:
            raise ConfigError(f"give both lo= and hi= for {key!r}, or neither")
        return lo, hi
    candidates = [(f"{key}_lo", f"{key}_hi")]
    if "." in key:
        parent = key.rsplit(".", 1)[0]
        candidates.append((f"{parent}.lo", f"{parent}.hi"))
    if plain:
        candidates.append(("lo", "hi"))
    for cand_lo, cand_hi in candidates:
        if records and all(has(r, cand_lo) and has(r, cand_hi) for r in records):
            return cand_lo, cand_hi
    return None, None


def groups(records: Sequence[Record], group: str | None) -> dict[str, list[Record]]:
    """Records split by ``group`` (insertion order kept); one group ``""`` when None."""
    if group is None:
        return {"": list(records)}
    out: dict[str, list[Record]] = {}
    for i, rec in enumerate(records):
        try:
            name = get(rec, group)
        except KeyError:
            raise DataError(f"record {i} has no group field {group!r} (has {sorted(rec)})") from None
        out.setdefault(str(name), []).append(rec)
    return out
