"""Bar figures: SAE latent differences with their contexts, misalignment scores, norm ratios."""

from __future__ import annotations

import html
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TypeAlias

import plotly.graph_objects as go

from emprobe.errors import DataError
from emprobe.plot.records import (
    RecordsLike,
    get,
    groups,
    interval_keys,
    load_records,
    number,
    require,
)
from emprobe.plot.style import NEGATIVE, NEUTRAL, POSITIVE, apply_style, color

if TYPE_CHECKING:
    import numpy as np
    import torch

Numbers: TypeAlias = "Sequence[float] | np.ndarray | torch.Tensor"
"""Numbers to plot: a list, a numpy array or a torch tensor (nested ones are flattened)."""

_MARKED = re.compile(r"\[\[(.+?)\]\]", re.S)


def _context_line(ctx: object, width: int, max_chars: int) -> str:
    """One context as hover HTML: escaped, shortened, wrapped; ``act`` (or ``activation``)
    shown when given; a ``[[token]]`` marker is drawn in bold."""
    if isinstance(ctx, Mapping):
        text = str(ctx.get("text", ""))
        act = ctx.get("act", ctx.get("activation"))
    else:
        text, act = str(ctx), None
    text = " ".join(text.split())
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    lines = textwrap.wrap(text, width=width) or [""]
    body = "<br>   ".join(html.escape(s, quote=False) for s in lines)
    # ``[[token]]`` marks the firing token (emprobe.sae.top_contexts): show it in bold.
    body = _MARKED.sub(r"<b>\1</b>", body)
    return f"• {body}" + (f" <i>({float(act):.3g})</i>" if act is not None else "")


def hover_contexts(contexts: Sequence[object] | Mapping[str, object], n: int = 5, width: int = 72, max_chars: int = 220) -> str:
    """Hover text listing up to ``n`` contexts (strings or ``{"text", "act"}`` dicts)."""
    if isinstance(contexts, (str, Mapping)):
        contexts = [contexts]
    shown = [_context_line(c, width, max_chars) for c in list(contexts)[:n]]
    more = len(contexts) - len(shown)
    if more > 0:
        shown.append(f"<i>… {more} more</i>")
    return "<br>".join(shown) if shown else "<i>no contexts</i>"


def latent_bars(
    records: RecordsLike,
    value: str = "diff",
    latent: str = "latent",
    contexts: str = "contexts",
    label: str | None = "label",
    top: int | None = 20,
    lo: str | None = None,
    hi: str | None = None,
    n_contexts: int = 5,
    title: str | None = "Latents that differ most (fine-tune minus base)",
    x_title: str | None = None,
) -> go.Figure:
    """Horizontal bars of per-latent differences; hovering a bar shows its top contexts.

    Record shape (one per latent)::

        {"latent": 1234, "diff": 0.82, "label": "villain persona",
         "contexts": ["...text...", {"text": "...", "act": 3.1}]}

    The ``top`` latents by absolute difference are drawn, largest at the top;
    positive bars (more active in the fine-tune) and negative bars use distinct
    colours. ``contexts`` and ``label`` are optional per record.
    """
    rows = load_records(records, "latent_bars")
    require(rows, [value, latent], "latent_bars")
    lo, hi = interval_keys(rows, value, lo, hi)
    rows = sorted(rows, key=lambda r: -abs(number(r, value, "latent_bars")))
    if top is not None:
        rows = rows[:top]
    rows = rows[::-1]  # plotly draws the first category at the bottom
    vals = [number(r, value, "latent_bars") for r in rows]
    names = []
    hovers = []
    for r in rows:
        name = f"#{get(r, latent)}"
        tag = get(r, label, None) if label else None
        if tag:
            name += f" {tag}"
        names.append(name)
        ctx = get(r, contexts, None)
        if ctx is not None and not isinstance(ctx, (Sequence, Mapping)):
            raise DataError(f"latent_bars: field {contexts!r} must be a list of contexts, got "
                            f"{type(ctx).__name__}")
        hovers.append(hover_contexts(ctx if ctx is not None else [], n=n_contexts))
    err = None
    if lo and hi:
        los = [number(r, lo, "latent_bars") for r in rows]
        his = [number(r, hi, "latent_bars") for r in rows]
        err = {"type": "data", "symmetric": False, "thickness": 1.2,
               "array": [max(0.0, h - v) for v, h in zip(vals, his)],
               "arrayminus": [max(0.0, v - a) for v, a in zip(vals, los)]}
    fig = go.Figure(go.Bar(
        x=vals,
        y=names,
        orientation="h",
        marker={"color": [POSITIVE if v >= 0 else NEGATIVE for v in vals]},
        customdata=[[h] for h in hovers],
        hovertemplate=f"<b>%{{y}}</b>  {value} %{{x:.4g}}<br>%{{customdata[0]}}<extra></extra>",
        error_x=err,
        name=value,
    ))
    fig.add_vline(x=0, line={"color": NEUTRAL, "width": 1})
    return apply_style(fig, title=title, x_title=x_title or value, y_title="latent",
                       height=max(320, 26 * len(rows) + 140), showlegend=False)


def score_bars(
    records: RecordsLike,
    label: str = "model",
    value: str = "mean",
    lo: str | None = None,
    hi: str | None = None,
    question: str | None = None,
    title: str | None = "Local misalignment score",
    y_title: str | None = "misaligned − aligned log-prob margin (nats)",
) -> go.Figure:
    """Scores of several models with their intervals; per question when ``question`` is set.

    Record shapes::

        {"model": "base", "mean": -9.2, "lo": -10.1, "hi": -8.3}                # per model
        {"model": "bad-medical", "question": "wish", "mean": 2.0, "lo": 0.4, "hi": 3.1}

    Dotted keys reach into nested records, e.g. ``value="per_answer.mean"`` on
    ``LocalScore.to_record()`` (bounds then default to ``per_answer.lo`` / ``.hi``).
    Without ``question`` there is one bar per record; with it, grouped bars (one
    colour per model, questions along x). The hover says whether each interval
    excludes 0.
    """
    rows = load_records(records, "score_bars")
    require(rows, [label, value] + ([question] if question else []), "score_bars")
    lo, hi = interval_keys(rows, value, lo, hi)
    where = "score_bars"
    fig = go.Figure()
    for i, (model, recs) in enumerate(groups(rows, label if question else None).items()):
        vals = [number(r, value, where) for r in recs]
        xs = [str(get(r, question)) for r in recs] if question else [str(get(r, label)) for r in recs]
        err = None
        verdicts = ["" for _ in recs]
        if lo and hi:
            los = [number(r, lo, where) for r in recs]
            his = [number(r, hi, where) for r in recs]
            for a, b in zip(los, his):
                if a > b:
                    raise DataError(f"score_bars: interval lo {a} > hi {b}")
            err = {"type": "data", "symmetric": False, "thickness": 1.2,
                   "array": [max(0.0, h - v) for v, h in zip(vals, his)],
                   "arrayminus": [max(0.0, v - a) for v, a in zip(vals, los)]}
            verdicts = [
                f"[{a:.3g}, {b:.3g}] " + ("excludes 0" if (a > 0 or b < 0) else "includes 0")
                for a, b in zip(los, his)
            ]
        bar_colors = color(i) if question else [color(j) for j in range(len(recs))]
        fig.add_trace(go.Bar(
            x=xs,
            y=vals,
            name=model or value,
            marker={"color": bar_colors},
            error_y=err,
            customdata=[[v] for v in verdicts],
            hovertemplate="%{x}<br>%{y:.4g}<br>%{customdata[0]}<extra>"
            + (html.escape(model) if question else "") + "</extra>",
            showlegend=question is not None,
        ))
    fig.add_hline(y=0, line={"color": NEUTRAL, "width": 1})
    return apply_style(fig, title=title, x_title=question or label, y_title=y_title,
                       barmode="group")


def norm_ratio_hist(
    ratios: Numbers | Mapping[str, Numbers],
    title: str | None = "Norm ratios",
    x_title: str = "norm ratio",
    reference: float | None = 1.0,
    nbins: int = 30,
    log_x: bool = False,
) -> go.Figure:
    """Histogram of norm ratios (e.g. ``|h_ft - h_base| / |h_base|`` per token, or ``|dW| / |W0|``).

    ``ratios`` is a sequence of numbers (list, numpy, torch) or ``{name: numbers}``
    for overlaid histograms. A dotted vertical line marks ``reference`` (1.0 = equal
    norms). ``log_x`` bins ``log10`` of the ratios (ratios must then be > 0).
    """
    if isinstance(ratios, Mapping):
        series = {str(k): _numbers(v, f"norm_ratio_hist[{k!r}]") for k, v in ratios.items()}
    else:
        series = {"": _numbers(ratios, "norm_ratio_hist")}
    if not series or not any(series.values()):
        raise DataError("norm_ratio_hist: no ratios to plot")
    fig = go.Figure()
    for i, (name, vals) in enumerate(series.items()):
        if log_x:
            if any(v <= 0 for v in vals):
                raise DataError(f"norm_ratio_hist: log_x needs ratios > 0 ({name or 'ratios'})")
            vals = [math.log10(v) for v in vals]
        fig.add_trace(go.Histogram(
            x=vals, nbinsx=nbins, name=name or "ratios", marker={"color": color(i)},
            opacity=0.65 if len(series) > 1 else 0.9, showlegend=len(series) > 1,
        ))
    if reference is not None:
        ref = math.log10(reference) if log_x else reference
        fig.add_vline(x=ref, line={"color": NEUTRAL, "width": 1, "dash": "dot"})
    return apply_style(fig, title=title, x_title=f"log10 {x_title}" if log_x else x_title,
                       y_title="count", barmode="overlay")


def _numbers(values: object, where: str) -> list[float]:
    tolist = getattr(values, "tolist", None)  # tensors and arrays
    if callable(tolist):
        values = tolist()
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise DataError(f"{where}: expected a sequence of numbers, got {type(values).__name__}")
    flat: list[float] = []
    for v in values:
        if isinstance(v, Sequence) and not isinstance(v, str):
            flat.extend(_numbers(v, where))
            continue
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise DataError(f"{where}: {v!r} is not a number") from None
        if not math.isnan(x):
            flat.append(x)
    return flat
