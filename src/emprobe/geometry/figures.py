"""Plotly figures of LoRA geometry and connectivity results.

* :func:`layer_figure`: a metric against layer, one curve per pair group (within /
  across), band = +-1 sd over the adapter pairs, with the Gaussian / base-weight /
  random-subspace baselines.
* :func:`heatmap_figure`: adapter-by-adapter matrix of a metric (mean over modules).
* :func:`connectivity_figure`: metrics along a path with their intervals.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from emprobe.geometry.compare import GeometryResult
    from emprobe.geometry.connectivity import ConnectivityResult

__all__ = ["layer_figure", "heatmap_figure", "connectivity_figure", "write_html", "METRIC_TITLES"]

METRIC_TITLES = {
    "frob_cos": "Frobenius cosine",
    "abs_cos_right": "mean |cos| of paired right singular vectors (read side)",
    "abs_cos_left": "mean |cos| of paired left singular vectors (write side)",
    "angle_right": "mean principal angle, right / read side (degrees)",
    "angle_left": "mean principal angle, left / write side (degrees)",
    "overlap_right": "projection overlap, right / read side",
    "overlap_left": "projection overlap, left / write side",
}


def _band(fig: go.Figure, x: list[int], mean: list[float], lo: list[float], hi: list[float],
          name: str, color: str, dash: str | None = None) -> None:
    import plotly.graph_objects as go

    from emprobe.plot import style

    fig.add_trace(go.Scatter(x=x + x[::-1], y=hi + lo[::-1], fill="toself",
                             fillcolor=style.rgba(color, style.BAND_ALPHA), line={"width": 0},
                             hoverinfo="skip", showlegend=False, legendgroup=name))
    fig.add_trace(go.Scatter(x=x, y=mean, mode="lines+markers", name=name, legendgroup=name,
                             line={"color": color, "dash": dash}))


def _pair_groups(labels: Sequence[str], groups: Sequence[str] | Mapping[str, str] | None
                 ) -> dict[str, list[tuple[int, int]]]:
    n = len(labels)
    if groups is None:
        return {"all pairs": [(i, j) for i in range(n) for j in range(i + 1, n)]}
    from emprobe.geometry.compare import group_pairs

    return {f"within {a}" if a == b else f"{a} vs {b}": pairs
            for (a, b), pairs in group_pairs(labels, groups).items()}


def layer_figure(result: GeometryResult, metric: str = "overlap_right",
                 groups: Sequence[str] | Mapping[str, str] | None = None,
                 module_type: str | None = None) -> go.Figure:
    """Per-layer curves of a pairwise metric (a :class:`GeometryResult`), with baselines."""
    import plotly.graph_objects as go

    from emprobe.plot import style

    layers = result.layers()
    per_layer = result.per_layer(metric, module_type=module_type)  # [n, n, L]
    fig = go.Figure()
    for ci, (name, pairs) in enumerate(_pair_groups(result.labels, groups).items()):
        if not pairs:
            continue
        vals = torch.stack([per_layer[i, j] for i, j in pairs])  # [pairs, L]
        mean = vals.mean(0)
        sd = vals.std(0) if len(pairs) > 1 else torch.zeros_like(mean)
        _band(fig, layers, mean.tolist(), (mean - sd).tolist(), (mean + sd).tolist(),
              f"{name} (n={len(pairs)})", style.color(ci))
    for which, dash in (("gaussian", "dot"), ("base", "dash")):
        table = result.gaussian if which == "gaussian" else result.base
        if metric in table:
            vals = result.baseline_per_layer(which, metric)  # [n, L]
            fig.add_trace(go.Scatter(x=layers, y=vals.mean(0).tolist(), mode="lines",
                                     name=f"{which} baseline", line={"color": style.NEUTRAL, "dash": dash}))
    side = metric.rsplit("_", 1)[-1]
    if metric.startswith("overlap") and side in result.random_overlap:
        fig.add_hline(y=float(result.random_overlap[side].mean()), line_dash="dashdot",
                      line_color=style.TEXT_COLOR, annotation_text="random k/d")
    title = METRIC_TITLES.get(metric, metric)
    style.apply_style(fig, title=title + (f" ({module_type})" if module_type else ""),
                      x_title="layer", y_title=metric)
    return fig


def heatmap_figure(result: GeometryResult, metric: str = "overlap_right", layer: int | None = None,
                   module_type: str | None = None) -> go.Figure:
    """Adapter-by-adapter heatmap of a metric averaged over the selected modules."""
    import plotly.graph_objects as go

    from emprobe.plot import style

    mat = result.matrix(metric, layer=layer, module_type=module_type)
    text = [[f"{v:.3f}" for v in row] for row in mat.tolist()]
    fig = go.Figure(go.Heatmap(z=mat.tolist(), x=result.labels, y=result.labels, text=text,
                               texttemplate="%{text}", colorscale=style.SEQUENTIAL_SCALE))
    where = ", ".join(x for x in (f"layer {layer}" if layer is not None else "",
                                  module_type or "") if x) or "all modules"
    style.apply_style(fig, title=f"{METRIC_TITLES.get(metric, metric)} ({where})",
                      yaxis_autorange="reversed")
    return fig


def connectivity_figure(result: ConnectivityResult) -> go.Figure:
    """One panel per metric along the path, with intervals and the end-point line."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from emprobe.plot import style

    metrics = list(result.metrics)
    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True,
                        subplot_titles=[f"{m} (barrier {result.barriers.get(m, float('nan')):.3g})"
                                        for m in metrics])
    ts = [r["t"] for r in result.records]
    for mi, metric in enumerate(metrics, start=1):
        color = style.color(mi - 1)
        ys = [r[metric] for r in result.records]
        if all(f"{metric}_lo" in r for r in result.records):
            lo = [r[f"{metric}_lo"] for r in result.records]
            hi = [r[f"{metric}_hi"] for r in result.records]
            fig.add_trace(go.Scatter(x=ts + ts[::-1], y=hi + lo[::-1], fill="toself",
                                     fillcolor=style.rgba(color, style.BAND_ALPHA), line={"width": 0},
                                     hoverinfo="skip", showlegend=False), row=mi, col=1)
        fig.add_trace(go.Scatter(x=ts, y=ys, mode="lines+markers", name=metric,
                                 line={"color": color}), row=mi, col=1)
        one = min(range(len(ts)), key=lambda i: abs(ts[i] - 1.0))
        fig.add_trace(go.Scatter(x=[ts[0], ts[one]], y=[ys[0], ys[one]], mode="lines",
                                 line={"color": style.NEUTRAL, "dash": "dot"}, showlegend=False),
                      row=mi, col=1)
    xlabel = {"base": "t  (W0 + t dW)", "pair": f"t  (W0 + (1-t) dW_{result.labels[0]} + "
              f"t dW_{result.labels[-1]})"}.get(result.mode, "point")
    fig.update_xaxes(title_text=xlabel, row=len(metrics), col=1)
    style.apply_style(fig, title=f"linear mode connectivity ({result.mode}: "
                      f"{', '.join(result.labels)})", height=280 * len(metrics) + 120)
    return fig


def write_html(fig: go.Figure, path: str | os.PathLike[str]) -> Path:
    """Write a figure as standalone HTML, atomically, with plotly.js beside it (offline):
    ``emprobe.plot.save.save_figure`` with ``include_plotlyjs="directory"``."""
    from emprobe.plot.save import save_figure

    target = Path(path)
    (written,) = save_figure(fig, target.with_suffix(""), formats=("html",),
                             include_plotlyjs="directory")
    return written
