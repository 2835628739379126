"""The misalignment-vs-task trade-off scatter the seed papers use to compare interventions."""

from __future__ import annotations

import plotly.graph_objects as go

from emprobe.plot.records import RecordsLike, groups, interval_keys, load_records, number, require
from emprobe.plot.style import NEUTRAL, apply_style, color


def _errors(values: list[float], los: list[float], his: list[float]) -> dict:
    return {
        "type": "data",
        "symmetric": False,
        "array": [max(0.0, h - v) for v, h in zip(values, his)],
        "arrayminus": [max(0.0, v - lo) for v, lo in zip(values, los)],
        "thickness": 1.2,
        "width": 4,
    }


def tradeoff_scatter(
    records: RecordsLike,
    x: str = "task_loss",
    y: str = "misalignment",
    label: str = "name",
    group: str | None = None,
    x_lo: str | None = None,
    x_hi: str | None = None,
    y_lo: str | None = None,
    y_hi: str | None = None,
    title: str | None = "Misalignment vs task",
    x_title: str | None = None,
    y_title: str | None = None,
    reference: str | None = None,
) -> go.Figure:
    """One labelled point per model / intervention, with error bars on both axes.

    Record shape (one per model)::

        {"name": "CAFT", "task_loss": 1.21, "task_loss_lo": 1.15, "task_loss_hi": 1.27,
         "misalignment": -4.3, "misalignment_lo": -5.0, "misalignment_hi": -3.6,
         "kind": "intervention"}

    Error bars come from ``x_lo``/``x_hi`` and ``y_lo``/``y_hi``, or from
    ``<x>_lo``/``<x>_hi`` and ``<y>_lo``/``<y>_hi`` when every record has them. Lower
    is better on both axes for the defaults (task loss, misalignment margin), so the
    best trade-off lies toward the bottom left. ``group`` colours points by a field
    (one trace per group); ``reference`` names a record (e.g. ``"base"``) whose
    values are drawn as dotted guide lines.
    """
    rows = load_records(records, "tradeoff_scatter")
    require(rows, [x, y, label] + ([group] if group else []), "tradeoff_scatter")
    xl, xh = interval_keys(rows, x, x_lo, x_hi, plain=False)
    yl, yh = interval_keys(rows, y, y_lo, y_hi, plain=False)
    fig = go.Figure()
    where = "tradeoff_scatter"
    for i, (name, recs) in enumerate(groups(rows, group).items()):
        xs = [number(r, x, where) for r in recs]
        ys = [number(r, y, where) for r in recs]
        labels = [str(r[label]) if label in r else "" for r in recs]
        c = color(i)
        fig.add_trace(go.Scatter(
            x=xs,
            y=ys,
            mode="markers+text",
            text=labels,
            textposition="top center",
            name=name or "models",
            showlegend=group is not None,
            marker={"size": 11, "color": c, "line": {"width": 1, "color": "white"}},
            error_x=_errors(xs, [number(r, xl, where) for r in recs],
                            [number(r, xh, where) for r in recs]) if xl and xh else None,
            error_y=_errors(ys, [number(r, yl, where) for r in recs],
                            [number(r, yh, where) for r in recs]) if yl and yh else None,
            hovertemplate=f"%{{text}}<br>{x} %{{x:.4g}}<br>{y} %{{y:.4g}}<extra></extra>",
        ))
    if reference is not None:
        ref = [r for r in rows if str(r.get(label)) == reference]
        if ref:
            style = {"color": NEUTRAL, "width": 1, "dash": "dot"}
            fig.add_vline(x=number(ref[0], x, where), line=style)
            fig.add_hline(y=number(ref[0], y, where), line=style)
    better = {"task_loss": "task loss (lower is better)",
              "misalignment": "misalignment (lower is better)"}
    return apply_style(fig, title=title, x_title=x_title or better.get(x, x),
                       y_title=y_title or better.get(y, y))
