"""The demo's HTML report: figures and tables from the numbers the run computed."""

from __future__ import annotations

from typing import Any

from emprobe import __version__
from emprobe.plot import (
    connectivity_curves,
    heatmap,
    latent_bars,
    score_bars,
    tradeoff_scatter,
    training_curves,
)
from emprobe.report import Report, significance_note


def _fmt(x: float) -> str:
    return f"{x:+.2f}"


def build_demo_report(results: dict[str, Any], scored: dict[str, Any], pca: Any,
                      runs: dict[str, Any], geo: Any, conn: Any, cfg: Any,
                      runner: Any) -> Report:
    report = Report("emprobe demo: emergent misalignment on a small model",
                    subtitle="narrow fine-tunes, local misalignment score, directions, "
                             "training-time interventions, weight geometry, SAE diff")
    report.meta({
        "model": cfg.model,
        "emprobe": __version__,
        "seed": cfg.seed,
        "training": f"LoRA r {cfg.lora_r}, lr {cfg.lr}, {cfg.steps} steps x batch "
                    f"{cfg.batch_size}, max length {cfg.max_length}",
        "data": ", ".join(f"{k} {v}" for k, v in results["data"].items()),
        "bootstrap": f"{cfg.n_boot} resamples of questions (95 % intervals)",
        "total time": f"{runner.total:.0f} s",
    })
    if cfg.quick:
        report.note("Quick mode: a tiny random model and a handful of steps. The numbers below "
                    "only show that the pipeline runs; they say nothing about misalignment.",
                    kind="warning")

    # scores ------------------------------------------------------------------------------
    report.section(
        "Does a narrow fine-tune generalise?",
        "Local misalignment score: for each out-of-domain question, the log-probability margin "
        "of misaligned over aligned reference answers (nats per answer; higher = more "
        "misaligned). Intervals bootstrap over questions.")
    rows = []
    for name in ("base", "bad-medical", "good-medical", "bad-finance"):
        s = scored[name]["score"]
        rows.append({"model": name, "mean": s.per_answer.mean, "lo": s.per_answer.lo,
                     "hi": s.per_answer.hi, "pref_rate": s.pref_rate.mean,
                     "per_token": s.per_token.mean})
    report.figure(score_bars(rows), caption="Misaligned-minus-aligned margin per answer.")
    report.table(rows, columns=["model", "mean", "lo", "hi", "per_token", "pref_rate"])
    for name, comp in results["score_vs_base"].items():
        diff = comp.get("per_answer", comp) if isinstance(comp, dict) else comp
        lo, hi = _bounds(diff)
        report.note(significance_note(lo, hi, what=f"the shift of {name} relative to base",
                                      unit=" nats"))
    per_q = []
    for name in ("base", "bad-medical", "good-medical"):
        for q in scored[name]["score"].per_question:
            per_q.append({"model": name, "question": q["question"],
                          "mean": _value(q, "per_answer")})
    if per_q:
        report.figure(score_bars(per_q, question="question", title="Per question"),
                      caption="Margin per question (one bar per model).")

    curves = []
    for name in ("bad-medical", "good-medical", "bad-finance"):
        for rec in runs[name].metrics():
            curves.append({**rec, "run": name})
    if curves:
        report.figure(training_curves(curves, keys=["loss"], group="run"),
                      caption="Training loss (assistant tokens only).")

    # directions ----------------------------------------------------------------------------
    report.section(
        "Directions",
        "Mean difference of bad-medical fine-tune minus base activations on generic chat "
        "(not the training data), and the top principal components of the per-token "
        "difference (CAFT). Below: the contexts where each component is most active.")
    ab = results["directions"]["ablation"]
    ab_rows = _ablation_rows(ab)
    if ab_rows:
        report.table(ab_rows, columns=["condition", "mean", "lo", "hi"])
        for row in ab_rows:
            if row["condition"].startswith("delta"):
                report.note(significance_note(row["lo"], row["hi"], what=row["condition"],
                                              unit=" nats"))
    try:
        report.raw_html(pca.html(components=list(range(min(2, cfg.caft_k)))))
    except Exception:  # contexts are a nicety; never fail the report on them
        pass

    # interventions ---------------------------------------------------------------------------
    report.section(
        "Training-time interventions",
        "The bad-medical task retrained with each intervention. x: loss on held-out bad "
        "medical answers (lower = the narrow task was learned); y: misalignment margin on "
        "unrelated questions (lower = less emergent misalignment). Bottom left is best.")
    report.figure(tradeoff_scatter(results["tradeoff"], group="kind", reference="base"),
                  caption="Misalignment vs in-distribution loss.")
    report.table(results["tradeoff"], columns=["name", "misalignment", "misalignment_lo",
                                               "misalignment_hi", "task_loss"])
    plain = scored["bad-medical"]["score"].per_answer
    for row in results["tradeoff"]:
        if row["kind"] == "intervention":
            overlap = not (row["misalignment_hi"] < plain.lo or row["misalignment_lo"] > plain.hi)
            if overlap:
                report.note(f"{row['name']}: its misalignment interval overlaps the plain "
                            "fine-tune's; the difference is not significant at this size.",
                            kind="warning")

    # geometry -------------------------------------------------------------------------------
    report.section(
        "Weight geometry and connectivity",
        "Computed from the LoRA factors (never forming the full update). Principal angles and "
        "projection overlap of the top-k left singular subspaces, averaged over modules; "
        "Gaussian: a norm-matched random update.")
    try:
        labels = list(geo.labels)
        report.figure(heatmap(geo.matrix("overlap_left"), labels, zmin=0, zmax=1,
                              title="Projection overlap (write side)"),
                      caption="Higher = the adapters write into the same subspace.")
        report.figure(heatmap(geo.matrix("frob_cos"), labels, zmin=-1, zmax=1,
                              title="Frobenius cosine of the updates"))
    except Exception as exc:  # pragma: no cover - defensive, keeps the report whole
        report.note(f"geometry figure unavailable: {exc}", kind="warning")
    if conn is not None:
        report.figure(connectivity_curves(conn.records, keys=list(conn.metrics)),
                      caption="Base to bad-medical adapter: W0 + t dW (parameterised on dW).")

    # SAE ------------------------------------------------------------------------------------
    sae = results.get("sae") or {}
    report.section("SAE diff", sae.get("text", "A small SAE trained on base activations."))
    if sae.get("metrics"):
        report.table([sae["metrics"]], columns=list(sae["metrics"]))
    if sae.get("latents"):
        report.figure(latent_bars(sae["latents"], value="diff"),
                      caption="Latents whose mean activation changed most (hover: contexts).")

    # exports and timings -----------------------------------------------------------------------
    report.section("Artifacts and timings")
    report.table([{"file": f} for f in results.get("exports", [])], columns=["file"])
    report.table(results["timings"], columns=["stage", "seconds"])
    return report


def _value(rec: dict[str, Any], key: str) -> float:
    v = rec.get(key)
    if isinstance(v, dict):
        return float(v.get("mean"))
    return float(v)


def _bounds(d: Any) -> tuple[float, float]:
    if isinstance(d, dict):
        if "lo" in d:
            return float(d["lo"]), float(d["hi"])
        for v in d.values():
            if isinstance(v, dict) and "lo" in v:
                return float(v["lo"]), float(v["hi"])
    return float("nan"), float("nan")


def _ablation_rows(ab: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, val in ab.items():
        if not isinstance(val, dict):
            continue
        est = val.get("per_answer", val)
        if isinstance(est, dict) and "mean" in est:
            rows.append({"condition": key, "mean": est["mean"], "lo": est.get("lo"),
                         "hi": est.get("hi")})
    return rows
