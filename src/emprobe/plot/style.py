"""The one visual style of every emprobe figure: fonts, colours, margins, colour scales.

The template is registered with plotly as ``"emprobe"`` the first time this module
is imported; every figure function calls :func:`apply_style` so a figure looks the
same whether it is shown in a notebook, saved to HTML or embedded in a report.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from emprobe.plot.labels import fit_labels

TEMPLATE_NAME = "emprobe"

FONT_FAMILY = (
    "Inter, 'Source Sans 3', 'Segoe UI', -apple-system, 'Helvetica Neue', Helvetica, Arial, "
    "sans-serif"
)
MONO_FAMILY = "'JetBrains Mono', 'Source Code Pro', Menlo, Consolas, monospace"
FONT_SIZE = 13
TEXT_COLOR = "#1f2430"
GRID_COLOR = "#e6e8ee"
AXIS_COLOR = "#9aa1ae"

# A colour-blind-safe qualitative palette (blue, orange, green, vermilion, purple,
# sky, yellow-brown, grey); the first two are the "base" and "fine-tune" of most plots.
PALETTE: tuple[str, ...] = (
    "#2b6cb0",
    "#dd8a1e",
    "#2f9e6e",
    "#c8442f",
    "#7b5ea7",
    "#4fa3d1",
    "#a6862b",
    "#6b7280",
)

# Meaning-bearing colours used across figures.
POSITIVE = "#c8442f"  # toward misalignment / increase
NEGATIVE = "#2b6cb0"  # toward alignment / decrease
NEUTRAL = "#6b7280"

# Signed quantities (cosines, differences) use a diverging scale centred on 0;
# non-negative ones (overlaps, |cos|) a sequential scale.
DIVERGING_SCALE = "RdBu_r"
SEQUENTIAL_SCALE = "Viridis"

MARGIN = {"l": 64, "r": 24, "t": 56, "b": 56}
WIDTH = 760
HEIGHT = 440
BAND_ALPHA = 0.18


def _build_template() -> go.layout.Template:
    base = pio.templates["plotly_white"]
    template = go.layout.Template(base)
    layout: Any = template.layout  # plotly's stubs type it as a union without .update
    layout.update(
        font={"family": FONT_FAMILY, "size": FONT_SIZE, "color": TEXT_COLOR},
        title={"font": {"size": FONT_SIZE + 4}, "x": 0.0, "xanchor": "left", "xref": "paper"},
        colorway=list(PALETTE),
        margin=MARGIN,
        width=WIDTH,
        height=HEIGHT,
        paper_bgcolor="white",
        plot_bgcolor="white",
        hoverlabel={"font": {"family": FONT_FAMILY, "size": FONT_SIZE - 1}, "align": "left"},
        legend={
            "orientation": "h",
            "yanchor": "bottom",
            "y": 1.0,
            "xanchor": "right",
            "x": 1.0,
            "bgcolor": "rgba(255,255,255,0)",
        },
    )
    axis = {
        "showgrid": True,
        "gridcolor": GRID_COLOR,
        "zeroline": False,
        "showline": True,
        "linecolor": AXIS_COLOR,
        "ticks": "outside",
        "tickcolor": AXIS_COLOR,
        "title": {"standoff": 8},
        "automargin": True,
    }
    layout.xaxis.update(axis)
    layout.yaxis.update(axis)
    return template


pio.templates[TEMPLATE_NAME] = _build_template()


def color(i: int) -> str:
    """The ``i``-th palette colour (cycles)."""
    return PALETTE[i % len(PALETTE)]


def rgba(hex_color: str, alpha: float) -> str:
    """``"#rrggbb"`` -> ``"rgba(r,g,b,alpha)"`` (for confidence bands)."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def side_legend(fig: go.Figure) -> go.Figure:
    """Move the legend to the right (for stacked panels, where the top is taken by titles)."""
    fig.update_layout(
        legend={"orientation": "v", "yanchor": "top", "y": 1.0, "xanchor": "left", "x": 1.02},
        margin={"r": 150},
    )
    return fig


def apply_style(
    fig: go.Figure,
    title: str | None = None,
    x_title: str | None = None,
    y_title: str | None = None,
    height: int | None = None,
    width: int | None = None,
    **layout: Any,
) -> go.Figure:
    """Apply the emprobe template and the usual labels; returns ``fig`` for chaining.

    Titles are wrapped to the space they have (``emprobe.plot.labels.fit_labels``), so a
    long axis title never runs off the figure."""
    fig.update_layout(template=TEMPLATE_NAME, **layout)
    if title is not None:
        fig.update_layout(title_text=title)
    if x_title is not None:
        fig.update_xaxes(title_text=x_title)
    if y_title is not None:
        fig.update_yaxes(title_text=y_title)
    if height is not None:
        fig.update_layout(height=height)
    if width is not None:
        fig.update_layout(width=width)
    return fit_labels(fig)
