"""Small, safe text-to-HTML conversion for report prose and table cells.

Text is always HTML-escaped first; then a tiny markdown subset is applied:
blank lines separate paragraphs, lines starting with ``- `` form a bullet list,
``**bold**`` and `` `code` `` work inline.
"""

from __future__ import annotations

import html
import json
import math
import re

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")


def inline(text: str) -> str:
    """Escape ``text`` and apply inline ``code`` and **bold**."""
    out = html.escape(text)
    out = _CODE.sub(r"<code>\1</code>", out)
    return _BOLD.sub(r"<strong>\1</strong>", out)


def paragraphs(text: str) -> str:
    """Prose -> ``<p>`` / ``<ul>`` blocks."""
    blocks = []
    for chunk in re.split(r"\n\s*\n", text.strip()):
        lines = [ln.rstrip() for ln in chunk.splitlines() if ln.strip()]
        if not lines:
            continue
        if all(ln.lstrip().startswith("- ") for ln in lines):
            items = "".join(f"<li>{inline(ln.lstrip()[2:])}</li>" for ln in lines)
            blocks.append(f"<ul>{items}</ul>")
        else:
            blocks.append(f"<p>{inline(' '.join(ln.strip() for ln in lines))}</p>")
    return "\n".join(blocks)


def slug(text: str, taken: set[str]) -> str:
    """A unique HTML id from a title."""
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def cell(value: object, digits: int = 4) -> str:
    """A value as table-cell HTML: numbers to ``digits`` significant figures, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.{digits}g}"
    item = getattr(value, "item", None)  # 0-d tensors and arrays
    if callable(item) and getattr(value, "ndim", 1) == 0:
        return cell(item(), digits)
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, default=str, ensure_ascii=False)
        if len(text) > 120:
            text = text[:119] + "…"
        return f"<code>{html.escape(text)}</code>"
    return inline(str(value))
