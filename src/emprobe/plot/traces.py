"""Trace builders shared by the figure functions: a line with its confidence band."""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go

from emprobe.plot.style import BAND_ALPHA, rgba


def band(
    xs: Sequence[float],
    lo: Sequence[float],
    hi: Sequence[float],
    color: str,
    name: str,
    legendgroup: str | None = None,
    xaxis: str | None = None,
    yaxis: str | None = None,
) -> go.Scatter:
    """A filled polygon from ``lo`` to ``hi`` over ``xs`` (NaN bounds dropped), not in the legend."""
    pts = [(x, a, b) for x, a, b in zip(xs, lo, hi) if not (math.isnan(a) or math.isnan(b))]
    px = [p[0] for p in pts]
    return go.Scatter(
        x=px + px[::-1],
        y=[p[2] for p in pts] + [p[1] for p in pts][::-1],
        fill="toself",
        fillcolor=rgba(color, BAND_ALPHA),
        line={"width": 0, "color": rgba(color, 0.0)},
        hoverinfo="skip",
        showlegend=False,
        name=f"{name} (interval)",
        legendgroup=legendgroup or name,
        meta={"role": "band"},
        **({"xaxis": xaxis} if xaxis else {}),
        **({"yaxis": yaxis} if yaxis else {}),
    )


def line(
    xs: Sequence[float],
    ys: Sequence[float],
    color: str,
    name: str,
    showlegend: bool = True,
    legendgroup: str | None = None,
    hovertemplate: str | None = None,
    dash: str | None = None,
    markers: bool = True,
) -> go.Scatter:
    """A line (with markers) for one group."""
    return go.Scatter(
        x=list(xs),
        y=list(ys),
        mode="lines+markers" if markers else "lines",
        name=name,
        line={"color": color, "width": 2, **({"dash": dash} if dash else {})},
        marker={"size": 6, "color": color},
        showlegend=showlegend,
        legendgroup=legendgroup or name,
        hovertemplate=hovertemplate,
        meta={"role": "line"},
    )
