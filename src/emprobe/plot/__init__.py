"""Plot: plotly figures drawn from the records the analyses write.

Every figure function takes records (a list of dicts, or the path of the JSON /
JSONL file holding them), so a figure can be redrawn later from an output folder
without re-running anything. One style (``plot/style.py``) is applied to all.
Imports plotly and ``emprobe.io`` / ``emprobe.errors`` only; never the model layers.

Example::

    from emprobe import plot
    fig = plot.layer_curves("out/cosine_by_layer.jsonl", y="cos", group="pair")
    plot.save_figure(fig, "out/figures/cosine_by_layer")   # .html (+ .png/.svg with kaleido)
"""

from emprobe.plot.bars import hover_contexts, latent_bars, norm_ratio_hist, score_bars
from emprobe.plot.curves import barrier, connectivity_curves, layer_curves, training_curves
from emprobe.plot.matrix import heatmap, matrix_from_records
from emprobe.plot.notebook import notebook_figures
from emprobe.plot.records import load_records
from emprobe.plot.save import default_formats, figure_html, save_figure, static_export_available
from emprobe.plot.scatter import tradeoff_scatter
from emprobe.plot.style import PALETTE, TEMPLATE_NAME, apply_style, color

__all__ = [
    "PALETTE",
    "TEMPLATE_NAME",
    "apply_style",
    "barrier",
    "color",
    "connectivity_curves",
    "default_formats",
    "figure_html",
    "heatmap",
    "hover_contexts",
    "latent_bars",
    "layer_curves",
    "load_records",
    "matrix_from_records",
    "norm_ratio_hist",
    "notebook_figures",
    "save_figure",
    "score_bars",
    "static_export_available",
    "training_curves",
    "tradeoff_scatter",
]
