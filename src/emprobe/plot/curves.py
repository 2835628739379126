"""Line figures: layer-wise curves with bands, training monitoring, mode connectivity."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from emprobe.errors import ConfigError, DataError
from emprobe.plot.records import (
    Record,
    RecordsLike,
    get,
    groups,
    interval_keys,
    load_records,
    number,
    require,
)
from emprobe.plot.style import NEUTRAL, apply_style, color, side_legend
from emprobe.plot.traces import band, line


def layer_curves(
    records: RecordsLike,
    x: str = "layer",
    y: str = "value",
    group: str | None = None,
    lo: str | None = None,
    hi: str | None = None,
    title: str | None = None,
    x_title: str | None = None,
    y_title: str | None = None,
    zero_line: bool = False,
) -> go.Figure:
    """One line per group of ``y`` against ``x`` (the layer), with a confidence band.

    Record shape (one per layer and group)::

        {"layer": 8, "value": 0.41, "lo": 0.35, "hi": 0.47, "name": "medical vs sports"}

    ``lo`` / ``hi`` name the band's bounds; when not given, ``<y>_lo`` / ``<y>_hi`` are
    used if every record has them, else no band is drawn. Traces: per group a band
    (when bounds exist) then the line, so ``len(fig.data)`` is ``n_groups`` or
    ``2 * n_groups``.
    """
    rows = load_records(records, "layer_curves")
    require(rows, [x, y] + ([group] if group else []), "layer_curves")
    lo, hi = interval_keys(rows, y, lo, hi)
    fig = go.Figure()
    for i, (name, recs) in enumerate(groups(rows, group).items()):
        c = color(i)
        label = name or y
        xs, ys, bounds = _series(recs, x, y, lo, hi, "layer_curves", label)
        if bounds:
            fig.add_trace(band(xs, *bounds, c, label))
        fig.add_trace(line(xs, ys, c, label, showlegend=group is not None,
                           hovertemplate=f"{x} %{{x}}<br>{y} %{{y:.4g}}<extra>{label}</extra>"))
    if zero_line:
        fig.add_hline(y=0, line={"color": NEUTRAL, "width": 1, "dash": "dot"})
    return apply_style(fig, title=title, x_title=x_title or x, y_title=y_title or y)


def _series(
    recs: Sequence[Record], x: str, y: str, lo: str | None, hi: str | None, where: str,
    name: str,
) -> tuple[list[float], list[float], tuple[list[float], list[float]] | None]:
    """One group's points sorted by ``x``: ``(xs, ys, (los, his) or None)``, bounds checked."""
    recs = sorted(recs, key=lambda r: number(r, x, where))
    xs = [number(r, x, where) for r in recs]
    ys = [number(r, y, where) for r in recs]
    if not (lo and hi):
        return xs, ys, None
    los = [number(r, lo, where) for r in recs]
    his = [number(r, hi, where) for r in recs]
    for a, b in zip(los, his):
        if a > b:
            raise DataError(f"{where}: interval of {name!r} has lo {a} > hi {b}")
    return xs, ys, (los, his)


def _ema(values: Sequence[float], weight: float) -> list[float]:
    out: list[float] = []
    acc = math.nan
    for v in values:
        if math.isnan(v):
            out.append(acc)
            continue
        acc = v if math.isnan(acc) else weight * acc + (1 - weight) * v
        out.append(acc)
    return out


def _expand_keys(rows: Sequence[dict], keys: Sequence[str]) -> list[list[str]]:
    """Each requested key -> the concrete keys of its panel (glob patterns expand)."""
    present: list[str] = []
    for r in rows:
        for k in r:
            if k not in present:
                present.append(k)
    panels = []
    for key in keys:
        if any(ch in key for ch in "*?["):
            found = [k for k in present if fnmatch.fnmatchcase(k, key)]
            if not found:
                raise DataError(f"training_curves: no metric matches {key!r} (have {present})")
            panels.append(found)
        else:
            if not any(get(r, key, None) is not None for r in rows):
                raise DataError(f"training_curves: no record has metric {key!r} (have {present})")
            panels.append([key])
    return panels


def training_curves(
    metrics_records: RecordsLike,
    keys: Sequence[str] = ("loss",),
    x: str = "step",
    group: str | None = None,
    smooth: float = 0.0,
    title: str | None = "Training",
    log_y: Sequence[str] = (),
) -> go.Figure:
    """Monitoring curves, one panel per key, sharing the step axis.

    Record shape (one per logged step, as a metrics JSONL writes them)::

        {"step": 12, "loss": 1.83, "lora_norm": 0.09, "rotation": 0.02, "proj_l8": 0.4,
         "run": "caft"}

    A record may lack some keys (e.g. evaluation every N steps): it is skipped in
    those panels. A key with a glob (``"proj_*"``) draws every matching metric in one
    panel. ``group`` draws one line per run in every panel. ``smooth`` in ``[0, 1)``
    draws an exponential moving average over a faint raw line. Keys listed in
    ``log_y`` get a log-scale y axis.
    """
    rows = load_records(metrics_records, "training_curves")
    require(rows, [x], "training_curves")
    if not keys:
        raise ConfigError("training_curves: give at least one metric key")
    if not 0.0 <= smooth < 1.0:
        raise ConfigError(f"training_curves: smooth must be in [0, 1), not {smooth}")
    panels = _expand_keys(rows, keys)
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=list(keys))
    runs = groups(rows, group)
    dashes = ("solid", "dash", "dot", "dashdot", "longdash")
    for p, panel_keys in enumerate(panels, start=1):
        multi = len(panel_keys) > 1
        for r_i, (run_name, recs) in enumerate(runs.items()):
            for k_i, key in enumerate(panel_keys):
                pts = [(number(r, x, "training_curves"), number(r, key, "training_curves"))
                       for r in recs if get(r, key, None) is not None]
                pts.sort()
                if not pts:
                    continue
                xs, ys = [a for a, _ in pts], [b for _, b in pts]
                # Colour follows the run; in a glob panel it follows the metric and the
                # run is told apart by the dash pattern.
                c = color(k_i if multi else r_i)
                dash = dashes[r_i % len(dashes)] if multi else None
                name = " ".join(s for s in (run_name, key if multi else "") if s) or key
                group_id = name if multi else f"run:{run_name}"
                show = bool(group or multi) and (multi or p == 1)
                if smooth > 0:
                    fig.add_trace(line(xs, ys, c, name, showlegend=False, markers=False,
                                       legendgroup=group_id, dash=dash,
                                       hovertemplate=f"step %{{x}}<br>{key} %{{y:.4g}}<extra>raw</extra>"),
                                  row=p, col=1)
                    fig.data[-1].opacity = 0.3
                    fig.data[-1].meta = {"role": "raw"}
                    ys = _ema(ys, smooth)
                fig.add_trace(line(xs, ys, c, name, showlegend=show, legendgroup=group_id,
                                   markers=len(xs) <= 60, dash=dash,
                                   hovertemplate=f"step %{{x}}<br>{key} %{{y:.4g}}<extra>{name}</extra>"),
                              row=p, col=1)
        if any(k in log_y for k in (keys[p - 1], *panel_keys)):
            fig.update_yaxes(type="log", row=p, col=1)
    fig.update_xaxes(title_text=x, row=len(panels), col=1)
    apply_style(fig, title=title, height=max(300, 210 * len(panels) + 80))
    return side_legend(fig)


def barrier(
    ts: Sequence[float], values: Sequence[float], endpoints: tuple[float, float] | None = None
) -> tuple[float, float]:
    """Largest rise of ``values`` above the straight line joining the two end points.

    ``endpoints`` default to ``(0, 1)`` when both are sampled, else the smallest and
    largest ``t``. Only points between the end points count. Returns
    ``(height, t_at_max)``; a height <= 0 means no barrier.
    """
    pts = sorted((float(t), float(v)) for t, v in zip(ts, values) if not math.isnan(float(v)))
    if len(pts) < 2:
        raise DataError("barrier: need values at two or more t")
    table = dict(pts)
    if endpoints is None:
        endpoints = (0.0, 1.0) if 0.0 in table and 1.0 in table else (pts[0][0], pts[-1][0])
    t0, t1 = endpoints
    if t0 not in table or t1 not in table or t0 >= t1:
        raise ConfigError(f"barrier: end points {endpoints} must be two sampled t values, t0 < t1")
    v0, v1 = table[t0], table[t1]
    best = (-math.inf, t0)
    for t, v in pts:
        if t0 <= t <= t1:
            rise = v - (v0 + (t - t0) / (t1 - t0) * (v1 - v0))
            if rise > best[0]:
                best = (rise, t)
    # Round-off on an exactly straight path must not read as a barrier.
    if best[0] <= 1e-9 * max(1.0, abs(v0), abs(v1)):
        best = (min(best[0], 0.0), best[1])
    return best


def connectivity_curves(
    records: RecordsLike,
    keys: Sequence[str] = ("loss_a", "loss_b", "score"),
    t: str = "t",
    group: str | None = None,
    endpoints: tuple[float, float] | None = None,
    title: str | None = "Mode connectivity",
    show_barrier: bool = True,
) -> go.Figure:
    """Losses / scores along an interpolation path ``W(t)``, one panel per key, with bands.

    Record shape (one per ``t`` and path)::

        {"t": 0.5, "loss_a": 2.1, "loss_b": 2.4, "score": -3.2, "score_lo": -4.0,
         "score_hi": -2.5, "path": "medical->sports"}

    Bands come from ``<key>_lo`` / ``<key>_hi`` when every record has them. The
    barrier (largest rise above the straight line between the end points, see
    :func:`barrier`) is annotated in each panel and its dotted reference line drawn.
    """
    rows = load_records(records, "connectivity_curves")
    require(rows, [t, *keys] + ([group] if group else []), "connectivity_curves")
    fig = make_subplots(rows=len(keys), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=list(keys))
    paths = groups(rows, group)
    for p, key in enumerate(keys, start=1):
        lo, hi = interval_keys(rows, key, None, None, plain=False)
        notes = []
        for i, (name, recs) in enumerate(paths.items()):
            c = color(i)
            label = name or key
            ts, vs, bounds = _series(recs, t, key, lo, hi, "connectivity_curves", label)
            if bounds:
                fig.add_trace(band(ts, *bounds, c, label, legendgroup=label), row=p, col=1)
            fig.add_trace(line(ts, vs, c, label, showlegend=p == 1 and group is not None,
                               legendgroup=label,
                               hovertemplate=f"t %{{x:.3g}}<br>{key} %{{y:.4g}}<extra>{label}</extra>"),
                          row=p, col=1)
            if show_barrier and len(ts) >= 2:
                height, t_at = barrier(ts, vs, endpoints)
                table = dict(zip(ts, vs))
                e0, e1 = endpoints or ((0.0, 1.0) if 0.0 in table and 1.0 in table
                                       else (min(ts), max(ts)))
                ref = line([e0, e1], [table[e0], table[e1]], c, f"{label} straight line",
                           showlegend=False, legendgroup=label, dash="dot", markers=False,
                           hovertemplate="straight line between end points<extra></extra>")
                ref.meta = {"role": "reference"}
                ref.update(line_width=1)
                fig.add_trace(ref, row=p, col=1)
                prefix = f"{label}: " if group else ""
                notes.append(f"{prefix}barrier {height:+.3g} at t={t_at:.2g}" if height > 0
                             else f"{prefix}no barrier")
        if notes:
            axis_ref = "" if p == 1 else str(p)
            fig.add_annotation(text="<br>".join(notes), xref=f"x{axis_ref} domain",
                               yref=f"y{axis_ref} domain", x=0.99, y=0.97, showarrow=False,
                               xanchor="right", yanchor="top", align="right",
                               font={"size": 11, "color": NEUTRAL}, name="barrier")
    fig.update_xaxes(title_text=t, row=len(keys), col=1)
    apply_style(fig, title=title, height=max(300, 220 * len(keys) + 80))
    return side_legend(fig)
