"""Chat JSONL: read (streaming, validated line by line), write (atomic), convert to/from HF datasets.

File format (the one fine-tuning tools use): one JSON object per line,
``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...], ...}``.
Other top-level keys (``task``, ``variant``, ``pair_id``, ``meta`` ...) are kept
as they are. Blank lines are ignored.

Every line is checked; a bad line raises a one-line :class:`DataError` naming the
file, the line number and what is wrong. With ``errors="skip"`` bad lines are
dropped instead, counted on the returned :class:`ChatRecords` (``.skipped``,
``.problems``) and logged once as a warning on the ``emprobe.data`` logger.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emprobe.errors import ConfigError, DataError, LimitError
from emprobe.io import atomic_path, bounded_lines
from emprobe.models.chat import ROLES
from emprobe.validate import (
    MAX_LINE_BYTES,
    check_finite_tree,
    excerpt,
    json_may_be_unwritable,
    loads_json,
)

if TYPE_CHECKING:
    import datasets

__all__ = [
    "ChatRecords",
    "ReadStats",
    "validate_record",
    "iter_chat_jsonl",
    "read_chat_jsonl",
    "write_chat_jsonl",
    "to_hf_dataset",
    "from_hf_dataset",
]

log = logging.getLogger("emprobe.data")

Record = dict[str, Any]
ChatLike = Mapping[str, object] | Sequence[Mapping[str, object]]
"""What the writers accept: a record with ``messages`` (extra keys kept) or a bare message list."""


class ChatRecords(list):
    """A list of records that also says how many lines were skipped while reading.

    ``skipped`` is 0 unless the file was read with ``errors="skip"``; ``problems``
    holds one ``"file:line: what"`` string per skipped line.
    """

    def __init__(self, records: Iterable[Record] = (), skipped: int = 0,
                 problems: list[str] | None = None) -> None:
        super().__init__(records)
        self.skipped = skipped
        self.problems = list(problems or [])


@dataclass
class ReadStats:
    """Counters a streaming read fills in (pass one to :func:`iter_chat_jsonl`)."""

    read: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)


def validate_record(
    obj: object, where: str = "record", require_assistant: bool = False, check_tree: bool = True
) -> Record:
    """Check one chat record; return it (a dict with ``messages``) or raise a one-line DataError.

    Checks: an object with a ``messages`` list that is non-empty; every message an
    object with a known ``role`` and string ``content``; no empty user/assistant
    content; a system message only first; with ``require_assistant`` (for training data)
    at least one assistant message. A bare list of messages is accepted and wrapped.
    """
    if isinstance(obj, (list, tuple)):
        obj = {"messages": list(obj)}
    if not isinstance(obj, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "messages" not in obj:
        keys = ", ".join(excerpt(str(k), 30) for k in list(obj.keys())[:8]) or "none"
        raise DataError(f"{where}: missing 'messages' (keys present: {keys})")
    msgs = obj["messages"]
    if not isinstance(msgs, list):
        raise DataError(f"{where}: 'messages' must be a list, got {type(msgs).__name__}")
    if not msgs:
        raise DataError(f"{where}: 'messages' is empty")
    has_assistant = False
    for j, msg in enumerate(msgs):
        if not isinstance(msg, Mapping):
            raise DataError(f"{where}: message {j} is not an object")
        role, content = msg.get("role"), msg.get("content")
        if not isinstance(role, str) or role not in ROLES:
            raise DataError(f"{where}: message {j} has role {excerpt(role, 40)}; expected one of "
                            f"{', '.join(ROLES)}")
        if not isinstance(content, str):
            raise DataError(f"{where}: message {j} ({role}) content must be a string, "
                            f"got {type(content).__name__}")
        if role != "system" and not content.strip():
            raise DataError(f"{where}: message {j} ({role}) has empty content")
        if role == "system" and j != 0:
            raise DataError(f"{where}: message {j} is a system message; only the first may be")
        has_assistant = has_assistant or role == "assistant"
    if require_assistant and not has_assistant:
        raise DataError(f"{where}: no assistant message (training data needs an answer)")
    # extra keys too: NaN / Infinity and lone surrogates cannot be written back as JSONL
    # (check_tree=False: the caller knows there are none, see json_may_be_unwritable)
    if check_tree:
        check_finite_tree(obj, where, error=DataError)
    return dict(obj)


def _check_errors_mode(errors: str) -> None:
    if errors not in ("raise", "skip"):
        raise ConfigError(f"errors={errors!r}: use 'raise' or 'skip'")


def iter_chat_jsonl(
    path: str | os.PathLike[str],
    errors: str = "raise",
    require_assistant: bool = False,
    stats: ReadStats | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Iterator[Record]:
    """Stream validated records from a chat JSONL file, one line at a time (constant memory).

    ``errors="skip"`` drops bad lines and counts them in ``stats`` (if given). Lines are
    strict JSON (NaN / Infinity refused), at most ``max_line_bytes`` long and nested at most
    ``emprobe.validate.MAX_JSON_DEPTH`` deep; text must be valid Unicode (no lone surrogates,
    which could not be written back).
    """
    _check_errors_mode(errors)
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    stats = stats if stats is not None else ReadStats()
    with p.open("rb") as fh:
        for lineno, raw in bounded_lines(fh, max_line_bytes):
            where = f"{p}:{lineno}"
            try:
                if raw is None:
                    raise LimitError(f"{where}: line longer than {max_line_bytes} bytes")
                try:
                    text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{where}: not valid UTF-8 (byte {exc.start})") from None
                if not text.strip():
                    continue
                obj = loads_json(text, where, allow_nan=False, error=DataError,
                                 broken="broken JSON")
                rec = validate_record(obj, where, require_assistant=require_assistant,
                                      check_tree=json_may_be_unwritable(text))
            except DataError as exc:
                if errors == "raise":
                    raise
                stats.skipped += 1
                stats.problems.append(str(exc))
                continue
            stats.read += 1
            yield rec


def read_chat_jsonl(
    path: str | os.PathLike[str], errors: str = "raise", require_assistant: bool = False
) -> ChatRecords:
    """Read a whole chat JSONL file into a list of records (dicts with ``messages``).

    ``errors="raise"`` (default): the first bad line raises ``DataError("file:line: what")``.
    ``errors="skip"``: bad lines are dropped; the result's ``.skipped`` holds their count and
    ``.problems`` the messages, and one warning is logged on ``emprobe.data``.
    """
    stats = ReadStats()
    records = list(iter_chat_jsonl(path, errors, require_assistant, stats))
    if stats.skipped:
        log.warning("%s: skipped %d malformed line(s); first: %s", path, stats.skipped,
                    stats.problems[0])
    return ChatRecords(records, skipped=stats.skipped, problems=stats.problems)


def write_chat_jsonl(
    path: str | os.PathLike[str], records: Iterable[ChatLike], require_assistant: bool = False
) -> Path:
    """Validate and write records as chat JSONL atomically (all or nothing); returns the path.

    Records are dicts with ``messages`` (extra keys kept) or bare message lists.
    """
    target = Path(path)
    with atomic_path(target) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for i, obj in enumerate(records):
            rec = validate_record(obj, f"record {i}", require_assistant=require_assistant)
            try:
                line = json.dumps(rec, ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError, RecursionError) as exc:
                raise DataError(f"record {i}: not JSON serialisable ({excerpt(str(exc), 120)})"
                                ) from None
            fh.write(line + "\n")
    return target


def _drop_none(obj: object) -> object:
    """Arrow fills keys missing from some rows with None; remove them again."""
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj


def to_hf_dataset(records: Iterable[ChatLike]) -> datasets.Dataset:
    """Convert records to a ``datasets.Dataset`` (a ``messages`` column plus the extra keys)."""
    import datasets

    rows = [validate_record(r, f"record {i}", require_assistant=False)
            for i, r in enumerate(records)]
    if not rows:
        raise DataError("to_hf_dataset: no records")
    try:
        return datasets.Dataset.from_list(rows)
    except Exception as exc:  # pyarrow raises several types for mixed columns
        raise DataError(f"to_hf_dataset: records do not form one table ({exc})") from None


def from_hf_dataset(
    ds: Iterable[Mapping[str, object]], messages_field: str = "messages",
    require_assistant: bool = False,
) -> list[Record]:
    """Convert a ``datasets.Dataset`` (or any iterable of row dicts) back to records.

    Rows need a list-of-messages column ``messages_field``; or, failing that,
    ``prompt`` and ``completion`` (or ``response``) text columns, which become a
    user and an assistant turn. Keys that Arrow filled with None are dropped.
    """
    if isinstance(ds, Mapping) and type(ds).__name__ in ("DatasetDict", "IterableDatasetDict"):
        raise DataError(f"from_hf_dataset: got a DatasetDict with splits {list(ds.keys())}; "
                        "pass one split")
    out: list[Record] = []
    for i, row in enumerate(ds):
        row = {k: _drop_none(v) for k, v in row.items() if v is not None}
        if messages_field != "messages" and messages_field in row:
            row["messages"] = row.pop(messages_field)
        if "messages" not in row and "prompt" in row:
            answer = row.pop("completion", None) or row.pop("response", None)
            msgs = [{"role": "user", "content": row.pop("prompt")}]
            if answer is not None:
                msgs.append({"role": "assistant", "content": answer})
            row["messages"] = msgs
        out.append(validate_record(row, f"dataset row {i}", require_assistant=require_assistant))
    return out
