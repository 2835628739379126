"""Atomic file writing and safe tensor IO shared by every artifact writer.

Every file emprobe writes goes through a temp file in the same folder and an
``os.replace``, so an interrupted run never leaves a half-written artifact.
Tensors are stored as safetensors; metadata as JSON; records as JSONL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from emprobe.errors import FormatError, LimitError
from emprobe.validate import (
    MAX_FILE_BYTES,
    MAX_LINE_BYTES,
    loads_json,
    one_line,
    read_bytes_limited,
)

log = logging.getLogger("emprobe.io")

_UMASK = os.umask(0)
os.umask(_UMASK)

__all__ = [
    "atomic_path",
    "atomic_dir",
    "write_json",
    "read_json",
    "read_json_object",
    "write_jsonl",
    "append_jsonl",
    "read_jsonl",
    "repair_jsonl_tail",
    "resume_jsonl",
    "save_tensors",
    "load_tensors",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts are for sharing
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; it replaces ``path`` only if the block succeeds.

    Refuses (``FormatError``) an empty path and a path where a file (not a folder) stands:
    a file is never replaced by a folder.
    """
    target = Path(path)
    if not target.name or target.name in (".", ".."):
        raise FormatError(f"{str(path)!r}: not a folder name to write")
    if target.exists() and not target.is_dir():
        raise FormatError(f"{target}: a file stands where a folder is to be written")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            backup = target.with_name(f".{target.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(target, backup)
            os.replace(tmp, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _default(obj: object) -> object:
    """The JSON-ready form of what ``json`` cannot write itself (``json.dumps(default=)``)."""
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    to_record = getattr(obj, "to_record", None)
    if callable(to_record):  # emprobe result objects (Estimate, ...)
        return to_record()
    if isinstance(obj, Path):
        return str(obj)
    tolist = getattr(obj, "tolist", None)
    if tolist is not None:  # numpy arrays and scalars
        return tolist()
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike[str], obj: object, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=_default) + "\n", encoding="utf-8")
    return Path(path)


def read_json(path: str | os.PathLike[str], allow_nan: bool = True,
              max_bytes: int = MAX_FILE_BYTES) -> Any:
    """Read a JSON file, with a one-line error naming the file on failure.

    Refuses files over ``max_bytes``, nesting deeper than ``MAX_JSON_DEPTH`` and, with
    ``allow_nan=False``, the non-standard constants NaN / Infinity.
    """
    p = Path(path)
    raw = read_bytes_limited(p, max_bytes, error=FormatError)
    return loads_json(raw, str(p), allow_nan=allow_nan, error=FormatError)


def read_json_object(path: str | os.PathLike[str], allow_nan: bool = False) -> dict[str, Any]:
    """``read_json`` of a file that must hold one JSON object (a config or metadata file);
    ``FormatError`` naming the file otherwise. NaN / Infinity are refused by default."""
    obj = read_json(path, allow_nan=allow_nan)
    if not isinstance(obj, dict):
        raise FormatError(f"{Path(path)}: expected a JSON object, got {type(obj).__name__}")
    return obj


def write_jsonl(path: str | os.PathLike[str], records: Iterable[Mapping[str, object]]) -> Path:
    """Write records as JSONL atomically."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, default=_default, ensure_ascii=False) + "\n")
    return Path(path)


def append_jsonl(path: str | os.PathLike[str], record: Mapping[str, object]) -> None:
    """Append one record (a single write of one line; used for resumable logs and caches).

    A torn last line left by an interrupted earlier write is repaired first (see
    :func:`repair_jsonl_tail`), so the new record never lands on a partial line.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, default=_default, ensure_ascii=False) + "\n"
    try:
        data = line.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise FormatError(f"{p}: record has text that is not valid Unicode ({exc.reason})"
                          ) from None
    repair_jsonl_tail(p)
    with p.open("ab") as fh:
        fh.write(data)
        fh.flush()


def repair_jsonl_tail(path: str | os.PathLike[str]) -> int:
    """Make a JSONL file end on a whole line; return how many bytes of a torn line were dropped.

    A last line without its newline is an interrupted append. If it still parses as JSON
    only the newline was lost and it is completed; otherwise it is cut off (and a warning
    says how many bytes went). Earlier lines are never touched.
    """
    p = Path(path)
    if not p.is_file():
        return 0
    with p.open("rb+") as fh:
        end = fh.seek(0, os.SEEK_END)
        if end == 0:
            return 0
        fh.seek(end - 1)
        if fh.read(1) == b"\n":
            return 0
        # find the start of the last line, reading backwards in blocks
        pos, start = end, 0
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            fh.seek(pos)
            block = fh.read(step)
            nl = block.rfind(b"\n")
            if nl >= 0:
                start = pos + nl + 1
                break
        fh.seek(start)
        tail = fh.read(end - start)
        try:
            json.loads(tail.decode("utf-8"))
            complete = True
        except (ValueError, RecursionError):
            complete = False
        if complete:
            fh.seek(end)
            fh.write(b"\n")
            return 0
        fh.truncate(start)
    log.warning("%s: dropped a torn last line (%d bytes) left by an interrupted write", p,
                end - start)
    return end - start


def bounded_lines(fh: IO[bytes], max_line_bytes: int = MAX_LINE_BYTES,
                  ) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, raw line)`` of an open binary file, never holding more than
    ``max_line_bytes + 1`` bytes of a line: an over-long line comes as ``None`` (the rest of
    it is skipped when the caller asks for the next line, so numbering stays right)."""
    lineno = 0
    while True:
        raw = fh.readline(max_line_bytes + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) <= max_line_bytes:
            yield lineno, raw
            continue
        yield lineno, None
        while raw and not raw.endswith(b"\n"):
            raw = fh.readline(max_line_bytes + 1)


def read_jsonl(path: str | os.PathLike[str], skip_partial_last: bool = True,
               max_line_bytes: int = MAX_LINE_BYTES) -> list[dict[str, Any]]:
    """Read JSONL records. A truncated last line (an interrupted append) is dropped when allowed.

    Every other bad line (broken JSON, not an object, bad UTF-8, nesting too deep, longer
    than ``max_line_bytes``) raises ``FormatError("file:line: what")``.
    """
    p = Path(path)
    if not p.is_file():
        return []
    out: list[dict[str, Any]] = []
    with p.open("rb") as fh:
        for i, raw in bounded_lines(fh, max_line_bytes):
            where = f"{p}:{i}"
            if raw is None:
                raise LimitError(f"{where}: line longer than {max_line_bytes} bytes")
            last = not raw.endswith(b"\n")
            if not raw.strip():
                continue
            try:
                obj = loads_json(raw, where, error=FormatError)
            except LimitError:
                raise
            except FormatError:
                if skip_partial_last and last:
                    log.warning("%s: ignored a torn last line (%d bytes)", where, len(raw))
                    break
                raise
            if not isinstance(obj, dict):
                raise FormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            out.append(obj)
    return out


def resume_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of an append-only JSONL cache, after cutting off a torn last line (if any).

    Use this where a run resumes and appends: the file is left ending on a whole line, so
    the next append starts a new record instead of joining a partial one.
    """
    records = read_jsonl(path, skip_partial_last=True)  # raises, untouched, on a bad file
    repair_jsonl_tail(path)
    return records


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save tensors as safetensors atomically (tensors made contiguous and moved to CPU)."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=dict(metadata) if metadata else None)
    return Path(path)


def load_tensors(path: str | os.PathLike[str],
                 names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Load a safetensors file (only the tensors ``names`` when given: the others are not
    read); a clear one-line error for a missing, pickled or corrupt file or a missing name."""
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{p}: no such file")
    if p.suffix in {".pt", ".pth", ".bin", ".pkl", ".pickle"}:
        raise FormatError(f"{p}: refusing to unpickle; emprobe reads safetensors only")
    try:
        if names is None:
            return load_file(str(p))
        with safe_open(str(p), framework="pt") as fh:
            wanted, there = list(names), set(fh.keys())
            missing = [n for n in wanted if n not in there]
            if missing:
                raise FormatError(f"{p}: no tensor {missing[0]!r} (has {sorted(there)[:8]})")
            return {n: fh.get_tensor(n) for n in wanted}
    except FormatError:
        raise
    except Exception as exc:  # safetensors raises its own error types (and OSError, MemoryError)
        raise FormatError(f"{p}: not a valid safetensors file ({one_line(exc, 160)})") from None
