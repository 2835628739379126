"""Plotly figures for SAEs, diffs and crosscoders (built from tensors or saved records).

Each function returns a ``plotly.graph_objects.Figure``; ``save_figure`` writes HTML
(with ``emprobe.plot.save``: plotly.js beside it, so it works offline) and the figure JSON.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from emprobe.io import atomic_path
from emprobe.plot.labels import fit_labels

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from emprobe.sae.causal import SteeringCheck


def norm_ratio_figure(relative_norm: torch.Tensor, low: float = 0.3, high: float = 0.7,
                      title: str = "Crosscoder relative decoder norm") -> go.Figure:
    """Histogram of ``||d_ft|| / (||d_base|| + ||d_ft||)`` with the shared / specific cut-offs."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Histogram(x=relative_norm.tolist(), xbins={"start": 0, "end": 1, "size": 0.025},
                                 marker_color="#4C72B0"))
    for x, name in ((low, "base-specific below"), (high, "fine-tune-specific above")):
        fig.add_vline(x=x, line_dash="dash", line_color="#C44E52", annotation_text=name)
    fig.update_layout(title=title, xaxis_title="relative decoder norm (0 = base only, 1 = fine-tune only)",
                      yaxis_title="latents", template="simple_white", bargap=0.05)
    return fit_labels(fig)


def latent_frequency_figure(log10_sparsity: torch.Tensor, title: str = "SAE latent firing frequency") -> go.Figure:
    """Histogram of each latent's log10 firing frequency (``sparsity.safetensors``)."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Histogram(x=log10_sparsity.float().clamp_min(-10).tolist(), nbinsx=50,
                                 marker_color="#55A868"))
    fig.update_layout(title=title, xaxis_title="log10 firing frequency (-10 = never fired)",
                      yaxis_title="latents", template="simple_white")
    return fit_labels(fig)


def steering_figure(check: SteeringCheck, title: str = "Steering with candidate latents") -> go.Figure:
    """Local score vs steering coefficient per latent, with interval bars (``steering.json``)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    base = check["baseline"]
    rows = check["latents"] + check.get("controls", [])
    for row in rows:
        xs = [s["coeff"] for s in row["scores"]]
        ys = [s["mean"] for s in row["scores"]]
        control = row.get("control", False) or row["latent"] is None
        name = (f"latent {row['latent']}" if not control
                else "random direction" if row["latent"] is None
                else f"control latent {row['latent']}")
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines+markers", name=name,
            line={"dash": "dash", "color": "#999999"} if control else None,
            error_y={"type": "data", "symmetric": False,
                     "array": [s["hi"] - s["mean"] for s in row["scores"]],
                     "arrayminus": [s["mean"] - s["lo"] for s in row["scores"]]},
        ))
    fig.add_hline(y=base["mean"], line_dash="dot", annotation_text="unsteered")
    fig.update_layout(title=title, xaxis_title="coefficient (x mean residual norm)",
                      yaxis_title="misalignment score", template="simple_white")
    return fit_labels(fig)


def diff_scores_figure(mean_diff: torch.Tensor, top: int = 30,
                       title: str = "Latents by mean activation difference") -> go.Figure:
    """Bar chart of the ``top`` latents by fine-tune minus base mean activation."""
    import plotly.graph_objects as go

    idx = torch.argsort(mean_diff, descending=True)[:top]
    fig = go.Figure(go.Bar(x=[str(int(i)) for i in idx], y=mean_diff[idx].tolist(),
                           marker_color="#8172B2"))
    fig.update_layout(title=title, xaxis_title="latent", yaxis_title="mean activation (ft - base)",
                      template="simple_white")
    return fit_labels(fig)


def save_figure(fig: go.Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``path`` (.html) and the figure JSON beside it (``.fig.json``), atomically."""
    from emprobe.plot.save import save_figure as save_plot

    p = Path(path)
    save_plot(fig, p.with_suffix(""), formats=("html",), include_plotlyjs="directory")
    text = fig.to_json()
    assert text is not None  # plotly's to_json returns None only for its file-writing form
    with atomic_path(p.with_suffix(".fig.json")) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return p
