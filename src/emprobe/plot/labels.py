"""Titles and axis titles that fit their figure: wrapped to the space they have, and checked.

plotly never wraps text: a y-axis title longer than the plot is tall is cut at the figure's
edge, and a two-line title needs a top margin for two lines. ``fit_labels`` wraps every
title at word boundaries to the length it has (the figure's width for the title, the axis's
length for an axis title) and grows the top margin to the title's height;
``label_problems`` lists what would still be clipped (a test runs it over every figure
builder). Widths are estimated from the character count: ``CHAR_EM`` of the font size per
character, a little wider than the average of the style's sans-serif fonts, so the estimate
errs on the side of wrapping.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import plotly.graph_objects as go

__all__ = ["CHAR_EM", "fit_labels", "label_problems", "text_width", "wrap_text"]

CHAR_EM = 0.6
"""Estimated advance of one character, in units of the font size (px per px)."""
LINE_EM = 1.3
"""Line height, in units of the font size."""
_DEFAULT = {"width": 700.0, "height": 450.0, "font": 12.0}  # plotly's own defaults
_DEFAULT_MARGIN = {"l": 80.0, "r": 80.0, "t": 100.0, "b": 80.0}
_TAGS = re.compile(r"<[^>]+>")
_BREAK = re.compile(r"<br\s*/?>", re.I)


def _lines(text: str) -> list[str]:
    return [_TAGS.sub("", part) for part in _BREAK.split(text)]


def text_width(text: str, size: float) -> float:
    """Estimated pixel width of the widest line of ``text`` (``<br>`` breaks, tags ignored)."""
    return max((len(line) for line in _lines(text)), default=0) * CHAR_EM * size


def text_height(text: str, size: float) -> float:
    """Estimated pixel height of ``text``'s lines."""
    return len(_lines(text)) * LINE_EM * size


def wrap_text(text: str, max_px: float, size: float) -> str:
    """``text`` with ``<br>`` between words wherever a line would pass ``max_px``.

    Existing ``<br>`` breaks are kept; a single word longer than the line stays whole.
    """
    limit = max(1, int(max_px / (CHAR_EM * size)))
    out = []
    for line in _BREAK.split(text):
        if len(_TAGS.sub("", line)) <= limit:
            out.append(line)
            continue
        current = ""
        for word in line.split(" "):
            trial = f"{current} {word}" if current else word
            if current and len(_TAGS.sub("", trial)) > limit:
                out.append(current)
                current = word
            else:
                current = trial
        out.append(current)
    return "<br>".join(out)


Layout = dict[str, object]


def _get(d: object, *keys: str) -> object:
    """``d[k1][k2]...`` through nested dicts, or None where a level is missing."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _num(*values: object) -> float:
    """The first of ``values`` that is a number."""
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    raise ValueError("no number")  # unreachable: callers end with a default


def _layouts(fig: go.Figure) -> tuple[Layout, Layout]:
    """The figure's own layout and its template's, as plain dicts."""
    own = fig.layout.to_plotly_json()
    tmpl = _get(own, "template", "layout")
    return own, tmpl if isinstance(tmpl, dict) else {}


def _size(fig: go.Figure) -> tuple[float, float, dict[str, float]]:
    """Figure width, height (px) and margins (own, else the template's, else plotly's)."""
    own, tmpl = _layouts(fig)
    margin = {side: _num(_get(own, "margin", side), _get(tmpl, "margin", side),
                         _DEFAULT_MARGIN[side]) for side in ("l", "r", "t", "b")}
    return (_num(own.get("width"), tmpl.get("width"), _DEFAULT["width"]),
            _num(own.get("height"), tmpl.get("height"), _DEFAULT["height"]), margin)


def _base_font(own: Layout, tmpl: Layout) -> float:
    return _num(_get(own, "font", "size"), _get(tmpl, "font", "size"), _DEFAULT["font"])


def _title(fig: go.Figure) -> tuple[str, float] | None:
    """The title's text and font size (its own, the template's, else 1.4 x the base font)."""
    own, tmpl = _layouts(fig)
    text = _get(own, "title", "text")
    if not isinstance(text, str) or not text:
        return None
    return text, _num(_get(own, "title", "font", "size"), _get(tmpl, "title", "font", "size"),
                      1.4 * _base_font(own, tmpl))


def _axes(fig: go.Figure) -> Iterator[tuple[str, str, float, float]]:
    """``(name, title, font size, length in px)`` of every x / y axis with a title."""
    width, height, m = _size(fig)
    own, tmpl = _layouts(fig)
    for name, axis in own.items():
        text = _get(axis, "title", "text")
        if not re.fullmatch(r"[xy]axis\d*", name) or not isinstance(text, str) or not text:
            continue
        domain = _get(axis, "domain")
        lo, hi = (float(domain[0]), float(domain[1])) if isinstance(domain, (list, tuple)) \
            else (0.0, 1.0)
        span = (width - m["l"] - m["r"]) if name.startswith("x") else (height - m["t"] - m["b"])
        size = _num(_get(axis, "title", "font", "size"), _base_font(own, tmpl) * 14 / 12)
        yield name, text, size, span * (hi - lo)


def fit_labels(fig: go.Figure) -> go.Figure:
    """Wrap the title and every axis title to the space they have; grow the top margin to
    the title's height. Returns ``fig``."""
    width, _, m = _size(fig)
    title = _title(fig)
    if title is not None:
        text, size = title
        wrapped = wrap_text(text, width - m["l"] - 8, size)
        fig.update_layout(title_text=wrapped)
        need = text_height(wrapped, size) + 2 * size
        if m["t"] < need:
            fig.update_layout(margin={"t": int(need + 0.5)})
    for name, text, size, length in list(_axes(fig)):
        fig.update_layout({name: {"title": {"text": wrap_text(text, length - 8, size)}}})
    return fig


def label_problems(fig: go.Figure) -> list[str]:
    """What would be clipped: a title wider than the figure or taller than the top margin,
    an axis title longer than its axis. Empty when every label fits."""
    width, _, m = _size(fig)
    problems = []
    title = _title(fig)
    if title is not None:
        text, size = title
        if text_width(text, size) > width - m["l"]:
            problems.append(f"title {text[:40]!r} is wider than the figure")
        if text_height(text, size) > m["t"]:
            problems.append(f"title {text[:40]!r} is taller than the top margin ({m['t']:.0f} px)")
    for name, text, size, length in _axes(fig):
        if text_width(text, size) > length:
            problems.append(f"{name} title {text[:40]!r} is longer than its axis ({length:.0f} px)")
    return problems
