"""Small validators and bounded parsers shared by every loader (the schema layer at file boundaries).

Every reader of user files goes through these helpers so that bad input of any kind gives
one ``EmprobeError`` line naming the file (and line / key), with the offending input cut to
a short excerpt, instead of a traceback, a hang or silent acceptance:

- :func:`excerpt` / :func:`one_line`: bounded, single-line renderings of input and of other
  libraries' error texts.
- :func:`loads_json`: JSON with a nesting-depth limit and (optionally) NaN / Infinity refused.
- :func:`load_yaml`: YAML through the safe loader with an alias budget, an expansion budget
  (billion laughs fails at once) and a depth limit.
- :func:`read_bytes_limited`: a file read with a size cap.
- type and range checks (``check_int``, ``check_number``, ``check_str``, ``check_bool``,
  ``check_mapping``, ``check_regex``, ``layer_key``, ``check_tensor``) that raise the error class
  the caller names.
- :func:`parse_layers`, :func:`parse_port`, :func:`parse_count_or_fraction`: argparse ``type=``
  parsers for the CLI.
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeGuard

from emprobe.errors import DataError, EmprobeError, FormatError, LimitError

if TYPE_CHECKING:
    import torch
    import yaml

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_YAML_ALIASES",
    "MAX_YAML_NODES",
    "MAX_FILE_BYTES",
    "MAX_LINE_BYTES",
    "excerpt",
    "one_line",
    "loads_json",
    "load_yaml",
    "read_bytes_limited",
    "check_finite_tree",
    "check_int",
    "check_number",
    "check_str",
    "check_optional_str",
    "check_bool",
    "check_mapping",
    "check_regex",
    "layer_key",
    "MAX_LAYER",
    "check_tensor",
    "parse_layers",
    "parse_port",
    "parse_count_or_fraction",
]

MAX_JSON_DEPTH = 64
"""Deepest JSON / YAML nesting a loader accepts (emprobe's formats need fewer than 8)."""
MAX_YAML_ALIASES = 100
"""Most ``*alias`` references one YAML document may use."""
MAX_YAML_NODES = 1_000_000
"""Most nodes a YAML document may expand to once aliases are followed."""
MAX_FILE_BYTES = 256 * 2**20
"""Largest JSON / YAML metadata file read whole (256 MiB)."""
MAX_LINE_BYTES = 64 * 2**20
"""Longest JSONL line (64 MiB)."""
EXCERPT_CHARS = 80

ErrorType = type[EmprobeError]


# -- bounded text ---------------------------------------------------------------------------
def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` on one line, cut to about ``limit`` characters (with the full length).

    Strings and bytes are cut before ``repr`` so a 1 GiB input costs no more than a short one.
    """
    if isinstance(value, (str, bytes)) and len(value) > limit:
        text = repr(value[:limit])
        return f"{text}... ({len(value)} {'chars' if isinstance(value, str) else 'bytes'})"
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__; the type is still worth naming
        text = f"<{type(value).__name__}>"
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    if len(text) > limit:
        return text[:limit] + "..."
    return text


def one_line(text: object, limit: int = 200) -> str:
    """The first non-empty line of ``str(text)``, cut to ``limit`` characters."""
    s = str(text)
    for line in s.splitlines():
        if line.strip():
            s = line.strip()
            break
    else:
        s = s.strip()
    return s if len(s) <= limit else s[:limit] + "..."


# -- bounded parsing ------------------------------------------------------------------------
def read_bytes_limited(path: str | os.PathLike[str], max_bytes: int = MAX_FILE_BYTES,
                       error: ErrorType = FormatError) -> bytes:
    """Read a whole file, refusing a missing file, a folder, or one over ``max_bytes``."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: no such file")
    size = p.stat().st_size
    if size > max_bytes:
        raise LimitError(f"{p}: {size} bytes is over the {max_bytes}-byte limit for this file")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise error(f"{p}: cannot read ({exc.strerror or type(exc).__name__})") from None


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999 overflows to inf
        raise ValueError(f"{excerpt(text, 40)} overflows to {value}")
    return value


def _depth_ok(obj: object, max_depth: int) -> bool:
    """Iterative depth check (no recursion, so no RecursionError on hostile input)."""
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            return False
        stack.extend((c, depth + 1) for c in children)
    return True


def loads_json(text: str | bytes, where: str, allow_nan: bool = True,
               max_depth: int = MAX_JSON_DEPTH, error: ErrorType = FormatError,
               broken: str = "not valid JSON") -> Any:
    """Parse JSON with a nesting limit; ``allow_nan=False`` refuses NaN / Infinity.

    Raises ``error`` (one line, ``where`` first) for broken JSON, bad UTF-8, nesting deeper
    than ``max_depth`` or (when refused) non-finite constants.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise error(f"{where}: not valid UTF-8 (byte {exc.start})") from None
    else:  # a byte-order mark is read the same from text as from bytes (as utf-8-sig does)
        text = text.removeprefix("\ufeff")
    try:
        obj = json.loads(text) if allow_nan else json.loads(
            text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise LimitError(f"{where}: JSON nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise error(f"{where}: {broken} ({exc.msg} at line {exc.lineno} column "
                    f"{exc.colno})") from None
    except ValueError as exc:  # from _refuse_constant
        raise error(f"{where}: {broken} ({one_line(exc)}; numbers must be finite)") from None
    # nesting depth is at most the number of opening brackets (strings only add to the count)
    if text.count("[") + text.count("{") > max_depth and not _depth_ok(obj, max_depth):
        raise LimitError(f"{where}: JSON nested deeper than {max_depth} levels")
    return obj


def _yaml_loader(max_aliases: int, max_nodes: int, max_depth: int, where: str) -> type:
    import yaml

    class BoundedSafeLoader(yaml.SafeLoader):
        """SafeLoader that counts aliases and refuses documents that expand too far."""

        aliases_seen = 0

        def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
            if self.check_event(yaml.AliasEvent):
                self.aliases_seen += 1
                if self.aliases_seen > max_aliases:
                    raise LimitError(f"{where}: more than {max_aliases} YAML aliases")
            return super().compose_node(parent, index)

        def construct_document(self, node: yaml.Node) -> object:
            _check_yaml_expansion(node, max_nodes, max_depth, where)
            return super().construct_document(node)

    # plain SafeLoader resolves !!python tags to errors already; the subclass keeps that
    return BoundedSafeLoader


def _check_yaml_expansion(root: yaml.Node, max_nodes: int, max_depth: int, where: str) -> None:
    """Size of the tree once aliases are expanded (memoised per node; iterative, no recursion)."""
    import yaml

    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, done = stack.pop()
        nid = id(node)
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [c for pair in node.value for c in pair]
        else:
            children = []
        if done:
            on_path.discard(nid)
            size[nid] = 1 + sum(size[id(c)] for c in children)
            depth[nid] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[nid] > max_nodes:
                raise LimitError(f"{where}: YAML expands to more than {max_nodes} nodes "
                                 "(alias bomb?)")
            if depth[nid] > max_depth:
                raise LimitError(f"{where}: YAML nested deeper than {max_depth} levels")
            continue
        if nid in size:
            continue
        if nid in on_path:
            raise LimitError(f"{where}: YAML refers to itself (recursive alias)")
        on_path.add(nid)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


MAX_YAML_FLOW_OPEN = 200
"""Most unclosed ``[`` / ``{`` a YAML text may have at any point (PyYAML's scanner is
quadratic in flow nesting: 5,000 ``[`` cost 0.6 s, 50,000 about a minute)."""


def _check_flow_depth(text: str, where: str) -> None:
    if text.count("[") + text.count("{") <= MAX_YAML_FLOW_OPEN:
        return  # the common case costs two C-speed counts
    depth = 0
    for m in re.finditer(r"[\[\]{}]", text):
        depth = depth + 1 if m.group() in "[{" else max(0, depth - 1)
        if depth > MAX_YAML_FLOW_OPEN:
            line = text.count("\n", 0, m.start()) + 1
            raise LimitError(f"{where}:{line}: more than {MAX_YAML_FLOW_OPEN} unclosed '[' or "
                             "'{' (nesting too deep)")


def load_yaml(text: str | bytes, where: str, max_aliases: int = MAX_YAML_ALIASES,
              max_nodes: int = MAX_YAML_NODES, max_depth: int = MAX_JSON_DEPTH,
              error: ErrorType = DataError) -> Any:
    """Parse one YAML document with the safe loader and resource limits (see module docstring)."""
    import yaml

    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise error(f"{where}: not UTF-8 text (byte {exc.start})") from None
    _check_flow_depth(text, where)
    loader = _yaml_loader(max_aliases, max_nodes, max_depth, where)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except EmprobeError:
        raise
    except RecursionError:
        raise LimitError(f"{where}: YAML nested deeper than the parser can follow") from None
    except yaml.YAMLError as exc:
        raise error(f"{where}: not valid YAML ({one_line(exc, 120) or 'parse error'})") from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a timestamp out of range
        raise error(f"{where}: YAML value not readable ({one_line(exc, 120)})") from None


# JSON text parses into a lone surrogate only through a \uD800-\uDFFF escape (valid UTF-8
# cannot encode one); non-finite numbers are refused by loads_json itself (allow_nan=False)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def json_may_be_unwritable(text: str) -> bool:
    """False when JSON ``text``, parsed by ``loads_json(..., allow_nan=False)``, cannot hold a
    lone surrogate or a non-finite float, so ``check_finite_tree`` on its result can be
    skipped (a substring test instead of a walk over every node)."""
    return "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None


def check_finite_tree(obj: object, where: str, error: ErrorType = DataError) -> None:
    """Refuse non-finite floats and strings that are not valid Unicode (lone surrogates)
    anywhere in a JSON-like tree (iterative)."""
    stack: list[object] = [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            _check_text(node, where, error)
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise error(f"{where}: number {node!r} is not finite")
        elif isinstance(node, Mapping):
            for k, v in node.items():
                if isinstance(k, str):
                    _check_text(k, where, error)
                stack.append(v)
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def _check_text(s: str, where: str, error: ErrorType) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(f"{where}: text has an unpaired surrogate at character {exc.start} "
                    f"(not valid Unicode): {excerpt(s[max(0, exc.start - 20):exc.start + 20])}"
                    ) from None


# -- typed fields ---------------------------------------------------------------------------
def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(value: object, where: str, min_value: int | None = None,
              max_value: int | None = None, error: ErrorType = FormatError,
              integral_float: bool = False) -> int:
    """An int (not bool; an integral float only with ``integral_float``) within the bounds."""
    if integral_float and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not _is_int(value):
        raise error(f"{where} must be an integer, got {type(value).__name__} {excerpt(value)}")
    if min_value is not None and value < min_value:
        raise error(f"{where} must be >= {min_value}, got {value}")
    if max_value is not None and value > max_value:
        raise error(f"{where} must be <= {max_value}, got {value}")
    return int(value)


def check_number(value: object, where: str, min_value: float | None = None,
                 max_value: float | None = None, positive: bool = False,
                 error: ErrorType = FormatError) -> float:
    """A finite int or float (not bool) within the bounds; ``positive`` means > 0."""
    if not (_is_int(value) or isinstance(value, float)):
        raise error(f"{where} must be a number, got {type(value).__name__} {excerpt(value)}")
    try:
        f = float(value)
    except OverflowError:
        raise error(f"{where} is too large ({excerpt(value)})") from None
    if not math.isfinite(f):
        raise error(f"{where} must be finite, got {value!r}")
    if positive and f <= 0:
        raise error(f"{where} must be > 0, got {excerpt(value)}")
    if min_value is not None and f < min_value:
        raise error(f"{where} must be >= {min_value}, got {excerpt(value)}")
    if max_value is not None and f > max_value:
        raise error(f"{where} must be <= {max_value}, got {excerpt(value)}")
    return f


def check_str(value: object, where: str, non_empty: bool = False, choices: tuple[str, ...] = (),
              error: ErrorType = FormatError) -> str:
    """A string (never coerced), optionally non-empty or one of ``choices``."""
    if not isinstance(value, str):
        raise error(f"{where} must be a string, got {type(value).__name__} {excerpt(value)}")
    _check_text(value, where, error)
    if non_empty and not value.strip():
        raise error(f"{where} must be a non-empty string")
    if choices and value not in choices:
        raise error(f"{where} is {excerpt(value)}; expected one of {', '.join(choices)}")
    return value


def check_optional_str(value: object, where: str, error: ErrorType = FormatError) -> str | None:
    """None or a string."""
    return None if value is None else check_str(value, where, error=error)


def check_bool(value: object, where: str, error: ErrorType = FormatError) -> bool:
    """A JSON boolean (``"yes"``, 1 and null are refused)."""
    if not isinstance(value, bool):
        raise error(f"{where} must be true or false, got {type(value).__name__} {excerpt(value)}")
    return value


def check_mapping(value: object, where: str, error: ErrorType = FormatError) -> dict[str, Any]:
    """A JSON object (dict with string keys)."""
    if not isinstance(value, Mapping):
        raise error(f"{where} must be an object, got {type(value).__name__} {excerpt(value)}")
    for k in value:
        if not isinstance(k, str):
            raise error(f"{where} has a non-string key {excerpt(k)}")
    return dict(value)


def check_regex(pattern: object, where: str, error: ErrorType = FormatError) -> str:
    """A string that compiles as a Python regular expression."""
    text = check_str(pattern, where, error=error)
    try:
        re.compile(text)
    except (re.error, RecursionError, OverflowError) as exc:
        raise error(f"{where} is not a valid regular expression {excerpt(text)} "
                    f"({one_line(exc, 80)})") from None
    return text


MAX_LAYER = 9_999
"""Largest layer (block) index any file may name (the deepest models have a few hundred)."""
_LAYER_KEY = re.compile(r"^(0|[1-9][0-9]{0,5})$")


def layer_key(value: object, where: str, error: ErrorType = FormatError) -> int:
    """A layer index key: an integer in ``0..MAX_LAYER`` (numpy integers too), or a string of
    decimal digits ("1.5", "01", 1.5, True and 10**9 are refused)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np_bool())):
        layer = int(value)
    elif isinstance(value, str) and _LAYER_KEY.match(value):
        layer = int(value)
    else:
        raise error(f"{where}: layer key {excerpt(value)} is not a non-negative integer")
    if layer < 0:
        raise error(f"{where}: layer {layer} is negative")
    if layer > MAX_LAYER:
        raise error(f"{where}: layer {excerpt(layer, 30)} is above {MAX_LAYER} (no model has "
                    "that many blocks)")
    return layer


def np_bool() -> type:
    """numpy's bool scalar type (numpy is imported lazily)."""
    import numpy as np

    return np.bool_


FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def check_tensor(t: object, where: str, ndims: tuple[int, ...] = (1, 2), finite: bool = True,
                 error: ErrorType = FormatError) -> torch.Tensor:
    """A real floating torch tensor (dtype whitelist) with an allowed number of dims, no empty
    dimension and (by default) only finite values. Returns it unchanged."""
    import torch

    from emprobe.errors import ShapeError

    if not isinstance(t, torch.Tensor):
        raise error(f"{where}: expected a tensor, got {type(t).__name__}")
    name = str(t.dtype).replace("torch.", "")
    if name not in FLOAT_DTYPES:
        raise error(f"{where}: dtype {name} not allowed (use one of {', '.join(FLOAT_DTYPES)})")
    if t.dim() not in ndims:
        raise ShapeError(f"{where}: tensor has {t.dim()} dims {tuple(t.shape)}; want "
                         f"{' or '.join(map(str, ndims))}")
    if any(s == 0 for s in t.shape):
        raise ShapeError(f"{where}: tensor has an empty dimension {tuple(t.shape)}")
    if finite and not bool(torch.isfinite(t).all()):
        raise error(f"{where}: tensor contains NaN or inf")
    return t


# -- CLI parsers (argparse ``type=``) -------------------------------------------------------
def parse_layers(text: str) -> list[int]:
    """``"3"`` / ``"2,5,7"`` / ``"10-12,15"`` -> ``[10, 11, 12, 15]``: non-negative, distinct
    block indices; ``A-B`` is the inclusive range (``A <= B``). For argparse ``type=``: a bad
    value is an ``ArgumentTypeError`` that argparse reports in one line."""
    parts = [p.strip() for p in str(text).split(",")]
    out: list[int] = []
    for part in parts:
        span = re.fullmatch(r"([0-9]{1,6})-([0-9]{1,6})", part)
        if span and int(span.group(1)) <= int(span.group(2)):
            layers = list(range(int(span.group(1)), int(span.group(2)) + 1))
        elif re.fullmatch(r"[0-9]{1,6}", part):
            layers = [int(part)]
        else:
            raise argparse.ArgumentTypeError(
                f"layers must be comma-separated non-negative integers or ranges A-B (A <= B), "
                f"got {excerpt(text, 40)}")
        for layer in layers:
            if layer in out:
                raise argparse.ArgumentTypeError(
                    f"layer {layer} given twice in {excerpt(text, 40)}")
            out.append(layer)
    return out


def parse_port(text: str) -> int:
    """A TCP port 0..65535 (0 = any free port)."""
    if not re.fullmatch(r"[0-9]{1,5}", str(text).strip()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"port must be an integer 0..65535, got "
                                         f"{excerpt(text, 40)}")
    return int(text)


def parse_count_or_fraction(text: str) -> int | float:
    """``"0.1"`` -> a fraction in (0, 1); ``"50"`` -> a positive count."""
    s = str(text).strip()
    if re.fullmatch(r"[0-9]{1,12}", s) and int(s) > 0:
        return int(s)
    try:
        f = float(s)
    except ValueError:
        f = math.nan
    if "." in s and math.isfinite(f) and 0 < f < 1:
        return f
    raise argparse.ArgumentTypeError(
        f"expected a fraction in (0, 1) such as 0.1 or a positive count such as 50, got "
        f"{excerpt(text, 40)}")
