"""Recipe ``shared-subspaces``: do different EM fine-tunes share a parameter subspace?

Bad medical / finance / sports fine-tunes plus a good-medical control (two seeds each in
full mode, one in quick), compared from the LoRA factors per module: paired |cos| of top
singular vectors, principal angles, projection overlap; within the misaligned group, across
misaligned vs control, and against norm-matched Gaussian updates. Then the linear path
``W0 + (1 - t) dW_medical + t dW_finance``: misalignment score and both task losses along it,
with the barrier (rise above the straight line between the end points).
"""

from __future__ import annotations

from typing import Any

TASKS = (("bad-medical", "medical", "bad"), ("bad-finance", "finance", "bad"),
         ("bad-sports", "sports", "bad"), ("good-medical", "medical", "good"))


def run(lab: Any) -> None:
    from emprobe.geometry import (
        GeometryConfig,
        compare_adapters,
        local_score_evaluator,
        response_loss,
        run_connectivity,
    )
    from emprobe.plot import connectivity_curves, heatmap, layer_curves
    seeds = [0] if lab.cfg.quick else list(range(int(lab.cfg.extra.get("seeds", 2))))
    adapters, labels, groups, held = [], [], [], {}
    for name, task, variant in TASKS:
        train, held[name] = lab.split(task, variant)
        for s in seeds:
            label = f"{name} s{s}" if len(seeds) > 1 else name
            recs = train if s == 0 else lab.data(task, variant, seed_offset=1000 * s)
            seed0, lab.cfg.seed = lab.cfg.seed, lab.cfg.seed + s  # training seed too
            try:
                adapters.append(lab.train(label.replace(" ", "-"), recs))
            finally:
                lab.cfg.seed = seed0
            labels.append(label)
            groups.append("misaligned" if variant == "bad" else "control")

    k = min(4, lab.cfg.lora_r)
    geo = compare_adapters(adapters, labels=labels, config=GeometryConfig(k=k, seed=lab.cfg.seed),
                           progress=False)
    summary = geo.group_summary(groups)
    metrics = ("overlap_right", "angle_right", "abs_cos_right", "frob_cos")
    table = []
    for key, vals in summary.items():
        if isinstance(vals, dict) and any(m in vals for m in metrics):
            table.append({"comparison": key, **{m: vals[m]["mean"] for m in metrics if m in vals},
                          "n_pairs": next(iter(vals.values()))["n"]})
    lab.report.section(
        "Weight geometry",
        f"Top-{k} right singular vectors (what each update reads from the residual stream) per "
        "module, averaged over modules; computed from the LoRA factors. Within: pairs of "
        "misaligned fine-tunes; across: misaligned vs the good-medical control; gaussian: each "
        "adapter vs a random update of the same norm.")
    lab.report.figure(heatmap(geo.matrix("overlap_right").tolist(), labels, zmin=0, zmax=1,
                              title="Projection overlap (read side)", value_name="overlap"))
    lab.report.table(table, columns=["comparison", *metrics, "n_pairs"])
    per_layer = geo.per_layer("overlap_right")
    curve = [{"layer": la, "value": float(per_layer[i, j, li]), "name": f"{labels[i]} vs {labels[j]}"}
             for i in range(len(labels)) for j in range(i + 1, len(labels))
             if groups[i] == groups[j] == "misaligned" for li, la in enumerate(geo.layers())]
    if curve:
        lab.report.figure(layer_curves(curve, y="value", group="name", y_title="overlap",
                                       title="Overlap by layer (misaligned pairs)"))

    a, b = labels.index(labels[0]), labels.index(next(la for la in labels
                                                      if la.startswith("bad-finance")))
    evaluators = {"score": local_score_evaluator(n_boot=lab.cfg.n_boot, seed=lab.cfg.seed),
                  "loss_medical": lambda s: response_loss(s, held["bad-medical"], n_boot=200),
                  "loss_finance": lambda s: response_loss(s, held["bad-finance"], n_boot=200)}
    conn = run_connectivity(lab.base(), [adapters[a], adapters[b]], evaluators,
                            points=3 if lab.cfg.quick else 5,
                            labels=[labels[a], labels[b]], progress=False)
    lab.report.section(
        "Linear mode connectivity",
        f"W(t) = W0 + (1 - t) dW[{labels[a]}] + t dW[{labels[b]}] (parameterised on dW, not on "
        "the factors). A barrier is a rise above the straight line between the end points.")
    lab.report.figure(connectivity_curves(conn.records,
                                          keys=["score", "loss_medical", "loss_finance"]))
    lab.report.table([{"metric": m, "barrier": v} for m, v in conn.barriers.items()],
                     columns=["metric", "barrier"])
    lab.report.note(
        "Reference at scale (Llama-3.1-8B, three EM adapters): mean principal angle 22-23 "
        "degrees, overlap 0.70-0.72, against about 0.004 for unrelated or random updates. "
        f"Here: rank-{lab.cfg.lora_r} adapters after {lab.cfg.steps} steps on a small model, "
        f"{len(seeds)} seed(s) per task; the numbers show the method, and the gap between "
        "within and Gaussian is what to read, not its size.", kind="warning")
    lab.results.update({"labels": labels, "groups": groups, "geometry": summary,
                        "geometry_table": table, "connectivity": conn.records,
                        "barriers": conn.barriers, "seeds": seeds})
