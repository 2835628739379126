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
    """Write ``demo_frontier`` (mitigation), ``demo_shifts`` (paired shifts over base) and
    ``demo_connectivity`` into ``assets`` from ``demo_out/results.json``."""
    from emprobe.plot import connectivity_curves, save_figure, score_bars, tradeoff_scatter

    results = read_json(Path(demo_out) / "results.json")
    for key in ("mitigation", "shifts", "config"):
        if key not in results:
            raise FormatError(f"{demo_out}/results.json: missing {key!r}; is it a finished "
                              "demo output?")
    model = results["config"]["model"]
    seeds = results["config"].get("seeds", 1)
    out = Path(assets)
    written: list[Path] = []
    frontier = [{"name": r["name"], "kind": r["intervention"],
                 **{f"task_cost{s}": r["task_cost"][k] for s, k in
                    (("", "mean"), ("_lo", "lo"), ("_hi", "hi"))},
                 **{f"em_shift_ratio{s}": r["em_shift_ratio"][k] for s, k in
                    (("", "mean"), ("_lo", "lo"), ("_hi", "hi"))}}
                for r in results["mitigation"]]
    frontier.append({"name": "plain fine-tune", "kind": "plain", "task_cost": 0.0,
                     "task_cost_lo": 0.0, "task_cost_hi": 0.0, "em_shift_ratio": 1.0,
                     "em_shift_ratio_lo": 1.0, "em_shift_ratio_hi": 1.0})
    fig = tradeoff_scatter(frontier, x="task_cost", y="em_shift_ratio", group="kind",
                           reference="plain fine-tune", x_title="task cost",
                           y_title="EM-shift ratio",
                           title=f"Mitigation frontier ({model}, {seeds} seed(s))")
    written += _save(save_figure, fig, out / "demo_frontier")
    labels = {"em_vs_control": "bad advice - benign control",
              "em_vs_base": "bad advice - base", "control_vs_base": "benign control - base"}
    rows = [{"model": labels.get(name, name),
             **{k: rec["per_answer"][k] for k in ("mean", "lo", "hi")}}
            for name, rec in results["shifts"].items()
            if isinstance(rec, dict) and "per_answer" in rec]
    if results.get("positive_control"):
        rows.append({"model": "malicious system prompt - base (positive control)",
                     **{k: results["positive_control"][k] for k in ("mean", "lo", "hi")}})
    fig = score_bars(rows, title=f"Paired shifts ({model}, {seeds} seed(s))",
                     y_title="shift of the misaligned − aligned margin (nats per answer)")
    written += _save(save_figure, fig, out / "demo_shifts")
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
