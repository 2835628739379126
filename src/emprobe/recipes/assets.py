"""Redraw the demo's key figures from its ``results.json`` into an assets folder (README figures).

Figures are drawn from the records the demo wrote, not from memory, so this also works on
an old output folder. PNG needs a static renderer (kaleido + a Chrome); HTML is always written.
"""

from __future__ import annotations

import os
from pathlib import Path

from emprobe.errors import FormatError
from emprobe.io import read_json


def export_assets(demo_out: str | os.PathLike[str], assets: str | os.PathLike[str]) -> list[Path]:
    from emprobe.plot import connectivity_curves, save_figure, score_bars, tradeoff_scatter

    results = read_json(Path(demo_out) / "results.json")
    for key in ("tradeoff", "scores", "config"):
        if key not in results:
            raise FormatError(f"{demo_out}/results.json: missing {key!r}; is it a demo output?")
    model = results["config"]["model"]
    out = Path(assets)
    written: list[Path] = []
    fig = tradeoff_scatter(results["tradeoff"], group="kind", reference="base",
                           title=f"Misalignment vs task loss ({model})")
    written += _save(save_figure, fig, out / "demo_tradeoff")
    rows = [{"model": name, **rec["score"]["per_answer"]} for name, rec in results["scores"].items()]
    fig = score_bars(rows, title=f"Local misalignment score ({model})")
    written += _save(save_figure, fig, out / "demo_scores")
    conn = results.get("connectivity")
    if conn:
        keys = [k for k in conn[0] if k not in ("t", "coeffs") and not k.endswith(("_lo", "_hi"))
                and isinstance(conn[0][k], (int, float))]
        fig = connectivity_curves(conn, keys=keys)
        written += _save(save_figure, fig, out / "demo_connectivity")
    return written


def _save(save_figure, fig, path: Path) -> list[Path]:  # noqa: ANN001
    from emprobe.plot import static_export_available

    # README images: PNG + SVG when a renderer exists (an HTML copy would embed plotly.js)
    formats = ("png", "svg") if static_export_available() else ("html",)
    got = save_figure(fig, path, formats=formats)
    if isinstance(got, dict):
        return [Path(p) for p in got.values()]
    if isinstance(got, (list, tuple)):
        return [Path(p) for p in got]
    return [Path(got)]
