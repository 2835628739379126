"""Figure functions on synthetic records: traces, bands, hover text, errors on bad records."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from emprobe import plot
from emprobe.errors import ConfigError, DataError, ShapeError
from emprobe.plot.style import NEGATIVE, POSITIVE, TEMPLATE_NAME


def _roles(fig) -> list[str]:
    return [(t.meta or {}).get("role", "") if isinstance(t.meta, dict) else "" for t in fig.data]


def _layer_records(with_band: bool = True) -> list[dict]:
    rows = []
    for name, offset in (("medical", 0.0), ("sports", 0.2)):
        for layer in range(5):
            r = {"layer": layer, "cos": offset + 0.1 * layer, "pair": name}
            if with_band:
                r["cos_lo"], r["cos_hi"] = r["cos"] - 0.05, r["cos"] + 0.05
            rows.append(r)
    return rows


def test_layer_curves_draw_one_line_and_one_band_per_group():
    fig = plot.layer_curves(_layer_records(), y="cos", group="pair")
    assert _roles(fig) == ["band", "line", "band", "line"]
    band, line = fig.data[0], fig.data[1]
    assert band.fill == "toself"
    # the band polygon goes up along hi and back along lo
    assert list(band.y[:5]) == pytest.approx([0.05 + 0.1 * i for i in range(5)])
    assert list(band.y[5:]) == pytest.approx([-0.05 + 0.1 * i for i in range(4, -1, -1)])
    assert list(line.x) == [0, 1, 2, 3, 4]
    assert {t.name for t in fig.data if _roles(fig)[list(fig.data).index(t)] == "line"} == {
        "medical", "sports"}
    assert fig.layout.template.layout.font.family == plot.style.FONT_FAMILY
    assert fig.layout.xaxis.title.text == "layer"


def test_layer_curves_without_bounds_has_no_band_and_sorts_by_layer():
    rows = [{"layer": 3, "value": 3.0}, {"layer": 1, "value": 1.0}, {"layer": 2, "value": 2.0}]
    fig = plot.layer_curves(rows)
    assert _roles(fig) == ["line"]
    assert list(fig.data[0].x) == [1, 2, 3]


def test_layer_curves_plain_lo_hi_and_explicit_keys():
    rows = [{"layer": i, "value": i, "lo": i - 1, "hi": i + 1} for i in range(3)]
    assert _roles(plot.layer_curves(rows)) == ["band", "line"]
    rows2 = [{"layer": i, "m": i, "q05": i - 1, "q95": i + 1} for i in range(3)]
    assert _roles(plot.layer_curves(rows2, y="m", lo="q05", hi="q95")) == ["band", "line"]


def test_layer_curves_bad_records_raise_one_line_errors():
    with pytest.raises(DataError, match="no field 'value'"):
        plot.layer_curves([{"layer": 0, "val": 1.0}])
    with pytest.raises(DataError, match="no records"):
        plot.layer_curves([])
    with pytest.raises(DataError, match="lo 2.0 > hi 1.0"):
        plot.layer_curves([{"layer": 0, "value": 1.5, "lo": 2.0, "hi": 1.0}])
    with pytest.raises(ConfigError, match="both lo= and hi="):
        plot.layer_curves([{"layer": 0, "value": 1.5, "lo": 1.0}], lo="lo")


def test_figures_redraw_from_jsonl_and_json_files(tmp_path):
    rows = _layer_records()
    jsonl = tmp_path / "curves.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    js = tmp_path / "curves.json"
    js.write_text(json.dumps({"records": rows}))
    a = plot.layer_curves(jsonl, y="cos", group="pair")
    b = plot.layer_curves(str(js), y="cos", group="pair")
    assert len(a.data) == len(b.data) == 4
    assert list(a.data[1].y) == list(b.data[1].y)
    with pytest.raises(DataError, match="no such"):
        plot.layer_curves(tmp_path / "missing.jsonl")


def test_heatmap_signed_scale_labels_and_annotations():
    m = torch.tensor([[1.0, -0.3, 0.2], [-0.3, 1.0, 0.5], [0.2, 0.5, 1.0]])
    fig = plot.heatmap(m, ["medical", "sports", "finance"], title="cos", zmin=-1, zmax=1)
    hm = fig.data[0]
    assert hm.type == "heatmap" and list(hm.y) == ["medical", "sports", "finance"]
    assert hm.zmid == 0 and hm.zmin == -1 and hm.zmax == 1
    assert hm.text[0][1] == "-0.30"
    assert fig.layout.yaxis.autorange == "reversed"
    # non-negative values -> a sequential scale without a midpoint
    fig2 = plot.heatmap(np.array([[0.1, 0.9], [0.9, 0.2]]), ["a", "b"], zmin=0, zmax=1)
    assert fig2.data[0].zmid is None
    assert fig2.data[0].colorscale != hm.colorscale


def test_heatmap_shape_errors():
    with pytest.raises(ShapeError, match="2 row labels for 3 rows"):
        plot.heatmap([[1, 2], [3, 4], [5, 6]], ["a", "b"], x_labels=["x", "y"])
    with pytest.raises(ShapeError, match="row 1 has 1 columns"):
        plot.heatmap([[1, 2], [3]], ["a", "b"])
    with pytest.raises(ConfigError, match="zmin"):
        plot.heatmap([[1.0]], ["a"], zmin=2, zmax=1)


def test_matrix_from_records_fills_symmetric_cells_and_diagonal():
    rows = [{"a": "med", "b": "sport", "value": 0.7}, {"a": "med", "b": "fin", "value": 0.6}]
    m, r, c = plot.matrix_from_records(rows, diagonal=1.0)
    assert r == c == ["med", "sport", "fin"]
    assert m[1][0] == m[0][1] == 0.7 and m[2][0] == 0.6 and m[2][2] == 1.0
    assert math.isnan(m[1][2])
    assert plot.heatmap(m, r).data[0].z[1][0] == 0.7


def test_tradeoff_scatter_error_bars_labels_and_reference():
    rows = [
        {"name": "base", "task_loss": 3.0, "misalignment": -9.0, "misalignment_lo": -10.0,
         "misalignment_hi": -8.5, "task_loss_lo": 2.9, "task_loss_hi": 3.2},
        {"name": "CAFT", "task_loss": 2.0, "misalignment": -5.0, "misalignment_lo": -6.0,
         "misalignment_hi": -4.0, "task_loss_lo": 1.9, "task_loss_hi": 2.05},
    ]
    fig = plot.tradeoff_scatter(rows, reference="base")
    tr = fig.data[0]
    assert list(tr.text) == ["base", "CAFT"]
    assert list(tr.error_y.array) == pytest.approx([0.5, 1.0])
    assert list(tr.error_y.arrayminus) == pytest.approx([1.0, 1.0])
    assert list(tr.error_x.array) == pytest.approx([0.2, 0.05])
    assert len(fig.layout.shapes) == 2  # guide lines through the reference model
    assert "lower is better" in fig.layout.xaxis.title.text
    grouped = plot.tradeoff_scatter([dict(r, kind=k) for r, k in zip(rows, ["ref", "int"])],
                                    group="kind")
    assert len(grouped.data) == 2 and grouped.data[0].error_x.array is not None


def test_tradeoff_scatter_without_intervals_has_no_error_bars():
    fig = plot.tradeoff_scatter([{"name": "a", "task_loss": 1, "misalignment": 2}])
    assert fig.data[0].error_x.array is None and fig.data[0].error_y.array is None


def test_training_curves_panels_groups_globs_and_gaps():
    rows = []
    for run in ("plain", "caft"):
        for step in range(10):
            r = {"step": step, "run": run, "loss": 3 - 0.2 * step, "proj_l2": 0.1 * step,
                 "proj_l3": 0.2 * step}
            if step % 5 == 0:
                r["eval_margin"] = -step
            rows.append(r)
    fig = plot.training_curves(rows, keys=["loss", "proj_*", "eval_margin"], group="run")
    # loss: 2 runs; proj_*: 2 runs x 2 metrics; eval_margin: 2 runs
    assert len(fig.data) == 2 + 4 + 2
    evals = [t for t in fig.data if t.yaxis == "y3"]
    assert all(list(t.x) == [0, 5] for t in evals)  # records without the key are skipped
    assert [a.text for a in fig.layout.annotations][:3] == ["loss", "proj_*", "eval_margin"]
    smooth = plot.training_curves(rows, keys=["loss"], group="run", smooth=0.5)
    assert _roles(smooth).count("raw") == 2 and _roles(smooth).count("line") == 2
    assert smooth.data[1].y[1] == pytest.approx(0.5 * 3.0 + 0.5 * 2.8)
    with pytest.raises(DataError, match="no metric matches"):
        plot.training_curves(rows, keys=["norm_*"])
    with pytest.raises(DataError, match="no record has metric 'rotation'"):
        plot.training_curves(rows, keys=["rotation"])


def test_barrier_measures_rise_above_the_straight_line():
    ts = [0.0, 0.25, 0.5, 0.75, 1.0]
    height, t_at = plot.barrier(ts, [1.0, 1.5, 2.5, 2.0, 2.0])
    assert t_at == 0.5 and height == pytest.approx(2.5 - 1.5)
    flat, _ = plot.barrier(ts, [0.1 * 3 * t for t in ts])  # exactly linear: no barrier
    assert flat <= 0
    # base-to-adapter path sampled to t = 2: the end points default to 0 and 1
    h2, t2 = plot.barrier([0.0, 0.5, 1.0, 2.0], [0.0, 1.0, 0.0, 9.0])
    assert (h2, t2) == (1.0, 0.5)
    with pytest.raises(DataError, match="two or more"):
        plot.barrier([0.0], [1.0])


def test_connectivity_curves_bands_reference_lines_and_barrier_annotation():
    rows = []
    for i in range(5):
        t = i / 4
        rows.append({"t": t, "loss_a": 1 + 4 * t * (1 - t), "loss_b": 2 - t,
                     "score": -t, "score_lo": -t - 0.3, "score_hi": -t + 0.3})
    fig = plot.connectivity_curves(rows)
    roles = _roles(fig)
    assert roles.count("band") == 1  # only score has bounds
    assert roles.count("line") == 3 and roles.count("reference") == 3
    notes = [a.text for a in fig.layout.annotations if a.name == "barrier"]
    assert notes[0] == "barrier +1 at t=0.5"
    assert notes[1] == notes[2] == "no barrier"
    paths = [dict(r, path=p) for r in rows for p in ("A->B", "base->A")]
    fig2 = plot.connectivity_curves(paths, keys=["loss_a"], group="path")
    assert _roles(fig2).count("line") == 2
    assert "A->B: barrier" in [a.text for a in fig2.layout.annotations if a.name == "barrier"][0]


def test_latent_bars_hover_shows_escaped_contexts_and_sorts_by_size():
    rows = [
        {"latent": 7, "diff": 0.2, "contexts": ["plain text"]},
        {"latent": 12, "diff": -1.5, "label": "helper", "contexts": ["be <safe> & kind"]},
        {"latent": 99, "diff": 2.5, "contexts": [{"text": "I would rule the world", "act": 4.25},
                                                  "second", "third"]},
    ]
    fig = plot.latent_bars(rows, top=2, n_contexts=2)
    bar = fig.data[0]
    assert list(bar.y) == ["#12 helper", "#99"]  # top 2 by |diff|, largest drawn on top
    hover = [c[0] for c in bar.customdata]
    assert "I would rule the world" in hover[1] and "(4.25)" in hover[1]
    assert "1 more" in hover[1]
    assert "&lt;safe&gt; &amp; kind" in hover[0]
    assert "customdata[0]" in bar.hovertemplate
    assert list(bar.marker.color) == [NEGATIVE, POSITIVE]


def test_latent_bars_marks_the_firing_token_of_sae_contexts():
    ctx = [{"text": "I'd rule [[ the]] world", "activation": 2.0}]
    hover = plot.latent_bars([{"latent": 3, "mean_diff": 0.4, "contexts": ctx}],
                             value="mean_diff").data[0].customdata[0][0]
    assert "I'd rule <b> the</b> world" in hover and "(2)" in hover


def test_latent_bars_wraps_long_contexts_and_handles_missing_ones():
    long = "word " * 100
    fig = plot.latent_bars([{"latent": 1, "diff": 1.0, "contexts": [long]},
                            {"latent": 2, "diff": 0.5}])
    hovers = [c[0] for c in fig.data[0].customdata]
    assert any("no contexts" in h for h in hovers)
    long_hover = next(h for h in hovers if "word" in h)
    assert "<br>" in long_hover and "…" in long_hover


def test_score_bars_per_model_with_interval_verdicts():
    rows = [{"model": "base", "mean": -9.0, "lo": -10.0, "hi": -8.0},
            {"model": "good", "mean": 0.3, "lo": -0.4, "hi": 1.0},
            {"model": "bad", "mean": 3.0, "lo": 2.0, "hi": 4.5}]
    fig = plot.score_bars(rows)
    bar = fig.data[0]
    assert len(fig.data) == 1 and list(bar.x) == ["base", "good", "bad"]
    assert list(bar.error_y.array) == pytest.approx([1.0, 0.7, 1.5])
    verdicts = [c[0] for c in bar.customdata]
    assert verdicts[0].endswith("excludes 0") and verdicts[1].endswith("includes 0")


def test_score_bars_per_question_and_nested_records():
    rows = [{"model": m, "question": q, "mean": v, "lo": v - 1, "hi": v + 1}
            for m, v in (("base", -2.0), ("bad", 2.0)) for q in ("wish", "ruler", "quick money")]
    fig = plot.score_bars(rows, question="question")
    assert len(fig.data) == 2 and list(fig.data[0].x) == ["wish", "ruler", "quick money"]
    assert fig.layout.barmode == "group"
    nested = [{"model": "ft", "per_answer": {"mean": 1.0, "lo": 0.5, "hi": 2.0}}]
    fig2 = plot.score_bars(nested, value="per_answer.mean")
    assert list(fig2.data[0].error_y.array) == pytest.approx([1.0])


def test_norm_ratio_hist_single_overlaid_and_log():
    fig = plot.norm_ratio_hist(torch.tensor([0.5, 1.0, 2.0, float("nan")]))
    assert len(fig.data) == 1 and list(fig.data[0].x) == [0.5, 1.0, 2.0]
    assert fig.layout.shapes[0].x0 == 1.0
    fig2 = plot.norm_ratio_hist({"layer 8": [1.0, 2.0], "layer 22": [3.0]}, log_x=True)
    assert len(fig2.data) == 2 and fig2.data[0].x[1] == pytest.approx(math.log10(2.0))
    assert fig2.layout.barmode == "overlay"
    with pytest.raises(DataError, match="log_x"):
        plot.norm_ratio_hist([0.0, 1.0], log_x=True)
    with pytest.raises(DataError, match="not a number"):
        plot.norm_ratio_hist(["x"])


def test_every_figure_uses_the_one_template():
    figs = [
        plot.layer_curves([{"layer": 0, "value": 1.0}]),
        plot.heatmap([[1.0]], ["a"]),
        plot.tradeoff_scatter([{"name": "a", "task_loss": 1, "misalignment": 2}]),
        plot.training_curves([{"step": 0, "loss": 1.0}]),
        plot.latent_bars([{"latent": 0, "diff": 1.0}]),
        plot.connectivity_curves([{"t": 0.0, "loss_a": 1, "loss_b": 1, "score": 0},
                                  {"t": 1.0, "loss_a": 1, "loss_b": 1, "score": 0}]),
        plot.score_bars([{"model": "a", "mean": 1.0}]),
        plot.norm_ratio_hist([1.0]),
    ]
    for fig in figs:
        assert fig.layout.template.layout.colorway == tuple(plot.PALETTE)
    import plotly.io as pio

    assert TEMPLATE_NAME in pio.templates
