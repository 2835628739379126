"""No figure clips its title or axis titles: wrapping, the check, and every builder."""

from __future__ import annotations

import torch

from emprobe import plot
from emprobe.geometry.compare import GeometryResult, metric_names
from emprobe.geometry.connectivity import ConnectivityResult
from emprobe.geometry.figures import connectivity_figure, heatmap_figure, layer_figure
from emprobe.plot.labels import fit_labels, label_problems, text_width, wrap_text
from emprobe.plot.style import apply_style
from emprobe.sae import figures as sae_figures

# the y-axis title that ran off assets/demo_shifts.png
LONG_Y = "shift of the misaligned − aligned margin (nats per answer)"
LONG_TITLE = ("Paired shift over the base model for every fine-tune of the study, with "
              "bootstrap intervals over questions and seeds (smollm2-135m-instruct)")


def test_wrap_breaks_at_words_within_the_width():
    text = wrap_text(LONG_Y, max_px=200, size=13)
    lines = text.split("<br>")
    assert len(lines) > 1 and " ".join(lines) == LONG_Y
    assert all(text_width(line, 13) <= 200 for line in lines)
    assert wrap_text("short", 200, 13) == "short"
    assert wrap_text("a<br>b", 200, 13) == "a<br>b"


def test_the_check_finds_a_clipped_axis_title_and_the_fit_removes_it():
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))
    fig.update_layout(template="emprobe", title_text=LONG_TITLE, yaxis_title_text=LONG_Y)
    problems = label_problems(fig)
    assert any("yaxis" in p for p in problems) and any("title" in p for p in problems)
    assert label_problems(fit_labels(fig)) == []
    assert "<br>" in fig.layout.yaxis.title.text


def _geometry_result() -> GeometryResult:
    g = torch.Generator().manual_seed(0)
    n, m = 2, 3
    pairwise = {k: torch.rand(n, n, m, generator=g) for k in metric_names()}
    return GeometryResult(labels=["medical", "finance"],
                          modules=[(layer, "q_proj") for layer in range(m)], pairwise=pairwise,
                          gaussian={k: torch.rand(n, m, generator=g) for k in metric_names()},
                          random_overlap={"right": torch.full((m,), 0.1),
                                          "left": torch.full((m,), 0.1)})


def _every_figure():
    layer_rows = [{"layer": la, "cos": 0.1 * la, "cos_lo": 0.0, "cos_hi": 0.2 * la, "pair": p}
                  for p in ("a", "b") for la in range(4)]
    score_rows = [{"model": "bad-medical", "mean": 4.4, "lo": 1.7, "hi": 7.3},
                  {"model": "malicious system prompt (positive control)", "mean": 3.8,
                   "lo": 3.0, "hi": 4.8}]
    curve_rows = [{"t": t / 4, "loss_a": 1 + t, "loss_b": 2 - t / 4} for t in range(5)]
    step_rows = [{"step": s, "loss": 2.0 / (s + 1), "run": r} for r in ("a", "b") for s in range(5)]
    frontier = [{"name": f"m{i}", "task_loss": 0.1 * i, "misalignment": 1 - 0.2 * i}
                for i in range(4)]
    geo = _geometry_result()
    conn = ConnectivityResult(mode="pair", labels=["medical", "finance"],
                              metrics=["loss_medical", "loss_finance"],
                              records=[{"t": t / 4, "coeffs": (1 - t / 4, t / 4),
                                        "loss_medical": 1.0 + t, "loss_finance": 2.0 - t / 2}
                                       for t in range(5)],
                              barriers={"loss_medical": 0.1, "loss_finance": 0.2})
    check = {"baseline": {"mean": 0.0, "lo": -0.1, "hi": 0.1}, "coeffs": [0.5, 1.0],
             "latents": [{"latent": 3, "scores": [{"coeff": c, "mean": c, "lo": c - 0.1,
                                                   "hi": c + 0.1, "delta": c} for c in (0.5, 1.0)]}],
             "controls": []}
    return {
        "layer_curves": plot.layer_curves(layer_rows, y="cos", group="pair", y_title=LONG_Y,
                                          title=LONG_TITLE),
        "score_bars": plot.score_bars(score_rows, y_title=LONG_Y, title=LONG_TITLE),
        "latent_bars": plot.latent_bars([{"latent": i, "diff": 0.1 * i} for i in range(5)],
                                        title=LONG_TITLE),
        "norm_ratio_hist": plot.norm_ratio_hist({"layer 3": torch.rand(50) + 0.5}),
        "training_curves": plot.training_curves(step_rows, keys=["loss"], group="run"),
        "connectivity_curves": plot.connectivity_curves(curve_rows, keys=["loss_a", "loss_b"]),
        "heatmap": plot.heatmap(torch.eye(3), ["a", "b", "c"], title=LONG_TITLE),
        "tradeoff_scatter": plot.tradeoff_scatter(frontier, y_title=LONG_Y, x_title=LONG_Y),
        "geometry.layer_figure": layer_figure(geo, "abs_cos_right"),
        "geometry.heatmap_figure": heatmap_figure(geo, "abs_cos_left"),
        "geometry.connectivity_figure": connectivity_figure(conn),
        "sae.norm_ratio_figure": sae_figures.norm_ratio_figure(torch.rand(40)),
        "sae.latent_frequency_figure": sae_figures.latent_frequency_figure(-3 * torch.rand(40)),
        "sae.steering_figure": sae_figures.steering_figure(check),
        "sae.diff_scores_figure": sae_figures.diff_scores_figure(torch.randn(40)),
        "apply_style": apply_style(__import__("plotly.graph_objects").graph_objects.Figure(),
                                   title=LONG_TITLE, x_title=LONG_Y, y_title=LONG_Y),
    }


def test_no_figure_builder_clips_its_labels():
    problems = {name: label_problems(fig) for name, fig in _every_figure().items()}
    assert {name: p for name, p in problems.items() if p} == {}
