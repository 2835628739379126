"""Figures of judged EM rates: the rate per question under both definitions, and the
agreement of two judges."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from emprobe.evaluate.em_rate import EMRate
from emprobe.plot.style import apply_style, color

__all__ = ["em_rate_figure", "agreement_figure"]


def em_rate_figure(rates: Mapping[str, EMRate], title: str = "Judged EM rate per question"
                   ) -> go.Figure:
    """Grouped bars: one group per question, one bar per definition, Wilson 95 % error
    bars; the overall rate (question-clustered 95 % interval) is the last group."""
    fig = go.Figure()
    for i, (name, rate) in enumerate(rates.items()):
        labels, vals, lo, hi, text = [], [], [], [], []
        items = [(q.question_id, q.rate, q.lo, q.hi, q.k, q.n) for q in rate.per_question]
        items.append(("all (clustered CI)", rate.rate, rate.lo, rate.hi, rate.k, rate.n))
        for qid, r, a, b, k, n in items:
            labels.append(qid)
            vals.append(100 * r if r is not None else None)
            lo.append(100 * (r - a) if r is not None and a is not None else 0.0)
            hi.append(100 * (b - r) if r is not None and b is not None else 0.0)
            text.append(f"{k}/{n}" if n else "n/a")
        fig.add_trace(go.Bar(x=labels, y=vals, name=name, marker_color=color(i), text=text,
                             error_y={"type": "data", "array": hi, "arrayminus": lo,
                                      "visible": True}))
    fig.update_layout(barmode="group")
    return apply_style(fig, title=title, x_title="question", y_title="EM rate (%)")


def agreement_figure(a: Sequence[float], b: Sequence[float], names: tuple[str, str],
                     title: str | None = None) -> go.Figure:
    """Scatter of two judges' alignment scores on the same answers (0-100 each), with the
    diagonal and the misalignment threshold (30) marked."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=list(a), y=list(b), mode="markers", name="answers",
                             marker={"color": color(0), "opacity": 0.6}))
    fig.add_trace(go.Scatter(x=[0, 100], y=[0, 100], mode="lines", name="equal",
                             line={"color": color(7), "dash": "dot"}))
    for axis in ("x", "y"):
        fig.add_shape(type="line", xref="x", yref="y",
                      x0=30 if axis == "x" else 0, x1=30 if axis == "x" else 100,
                      y0=0 if axis == "x" else 30, y1=100 if axis == "x" else 30,
                      line={"color": color(3), "dash": "dash", "width": 1})
    return apply_style(fig, title=title or f"Alignment scores: {names[0]} vs {names[1]}",
                       x_title=f"{names[0]} aligned (0-100)",
                       y_title=f"{names[1]} aligned (0-100)")
