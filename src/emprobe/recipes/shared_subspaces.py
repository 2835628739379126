"""Recipe ``shared-subspaces``: do different EM fine-tunes share a parameter subspace?

Bad medical / finance / sports fine-tunes and a good-medical control, each trained with its
OWN seed, plus a second bad-medical run (same data, another seed): the same-task reference
for how much two runs that learned the same thing share. Compared from the LoRA factors per
module (paired |cos| of top singular vectors, principal angles, projection overlap).

The headline is the WRITE side (left singular vectors, the output space of ``B``): with
LoRA, ``A`` starts random and moves little in a short run, so read-side (``A``, input
space) overlap mostly measures the initialisation; it is reported with that caveat. The
claim: cross-task misaligned pairs overlap more than misaligned-vs-control pairs (per layer
difference, bootstrap over layers), and more than norm-matched Gaussian updates.

Then the linear path ``W0 + (1 - t) dW_medical + t dW_finance``: misalignment score and both
task losses along it, with the barrier (rise above the straight line between the end points).
"""

from __future__ import annotations

from typing import Any

# (label, task, variant, seed offset): every fine-tune its own seed
TASKS = (("bad-medical", "medical", "bad", 0), ("bad-finance", "finance", "bad", 1),
         ("bad-sports", "sports", "bad", 2), ("good-medical", "medical", "good", 3),
         ("bad-medical-seed2", "medical", "bad", 4))
REFERENCE = ("bad-medical", "bad-medical-seed2")  # same task and data, another seed
WRITE, READ = "overlap_left", "overlap_right"


def pair_groups(labels: list[str], groups: list[str]) -> dict[str, list[tuple[int, int]]]:
    """Adapter index pairs: ``reference`` (same task, other seed), ``cross-task`` (misaligned
    on different tasks), ``vs control`` (misaligned vs the good-data control)."""
    task = {la: la.replace("-seed2", "") for la in labels}
    out: dict[str, list[tuple[int, int]]] = {"reference": [], "cross-task": [], "vs control": []}
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            if {labels[i], labels[j]} == set(REFERENCE):
                out["reference"].append((i, j))
            elif groups[i] == groups[j] == "misaligned" and task[labels[i]] != task[labels[j]]:
                out["cross-task"].append((i, j))
            elif {groups[i], groups[j]} == {"misaligned", "control"}:
                out["vs control"].append((i, j))
    return out


def run(lab: Any) -> None:
    import torch

    from emprobe.evaluate.stats import bootstrap_mean
    from emprobe.geometry import (
        GeometryConfig,
        compare_adapters,
        local_score_evaluator,
        response_loss,
        run_connectivity,
    )
    from emprobe.plot import connectivity_curves, heatmap, layer_curves
    adapters, labels, groups, held, seeds = [], [], [], {}, {}
    for name, task, variant, offset in TASKS:
        train, held_out = lab.split(task, variant)
        held[name.replace("-seed2", "")] = held_out
        seeds[name] = lab.cfg.seed + offset
        adapters.append(lab.train(name, train, seed=seeds[name]))
        labels.append(name)
        groups.append("misaligned" if variant == "bad" else "control")

    k = min(4, lab.cfg.lora_r)
    geo = compare_adapters(adapters, labels=labels, config=GeometryConfig(k=k, seed=lab.cfg.seed),
                           progress=False)
    summary = geo.group_summary(groups)
    pairs = pair_groups(labels, groups)
    layers = geo.layers()
    table, per_layer_means = [], {}
    for side, metric in (("write (B, output space)", WRITE), ("read (A, input space)", READ)):
        pl = geo.per_layer(metric)  # [n, n, n_layers]
        for kind, idx in pairs.items():
            if not idx:
                continue
            curve = torch.stack([pl[i, j] for i, j in idx]).mean(0)  # [n_layers]
            per_layer_means[(metric, kind)] = curve
            table.append({"side": side, "pairs": kind, "overlap": float(curve.mean()),
                          "n_pairs": len(idx),
                          "angle": float(torch.stack([geo.matrix(metric.replace("overlap",
                                                                                "angle"))[i, j]
                                                      for i, j in idx]).mean())})
        mis = [i for i, g in enumerate(groups) if g == "misaligned"]
        gauss = geo.baseline_per_layer("gaussian", metric)[mis].mean(0)
        per_layer_means[(metric, "gaussian")] = gauss
        table.append({"side": side, "pairs": "vs norm-matched Gaussian", "overlap":
                      float(gauss.mean()), "n_pairs": len(mis), "angle": float("nan")})
    lab.report.section(
        "Weight geometry",
        f"Top-{k} singular vectors per LoRA module, averaged over modules; every fine-tune "
        "has its own seed. Write side: left singular vectors (what each update writes into "
        "the residual stream); read side: right singular vectors. Pairs: reference = the "
        "same bad-medical data with another seed (how much two runs of one task share); "
        "cross-task = misaligned fine-tunes of different tasks; vs control = misaligned vs "
        "the good-medical control; Gaussian = each misaligned adapter vs a random update of "
        "the same norm.")
    lab.report.table(table, columns=["side", "pairs", "overlap", "angle", "n_pairs"])
    lab.report.note(
        "Read the write side. The read side (A) starts from a random initialisation and moves "
        "little in a short run, so its overlap mostly reflects that initialisation (with "
        "shared seeds, every pair would look alike); it is shown for completeness.",
        kind="warning")
    lab.report.figure(heatmap(geo.matrix(WRITE).tolist(), labels, zmin=0, zmax=1,
                              title="Projection overlap (write side)", value_name="overlap"))
    curve = [{"layer": la, "value": float(per_layer_means[(WRITE, kind)][li]), "name": kind}
             for kind in ("reference", "cross-task", "vs control", "gaussian")
             if (WRITE, kind) in per_layer_means for li, la in enumerate(layers)]
    lab.report.figure(layer_curves(curve, y="value", group="name", y_title="overlap",
                                   title="Write-side overlap by layer"))

    a, b = labels.index("bad-medical"), labels.index("bad-finance")
    evaluators = {"score": local_score_evaluator(n_boot=lab.cfg.n_boot, seed=lab.cfg.seed,
                                                 questions=lab.questions()),
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

    def layer_diff(x: str, y: str) -> Any:
        """Mean over layers of ``x - y`` (write side) with a bootstrap over layers."""
        d = per_layer_means[(WRITE, x)] - per_layer_means[(WRITE, y)]
        return bootstrap_mean([[float(v)] for v in d], lab.cfg.n_boot, lab.cfg.seed)

    vs_control = layer_diff("cross-task", "vs control")
    vs_gauss = layer_diff("cross-task", "gaussian")
    ref = float(per_layer_means[(WRITE, "reference")].mean())
    cross = float(per_layer_means[(WRITE, "cross-task")].mean())
    lab.report.note(
        "Reference at scale (Llama-3.1-8B, three EM adapters): mean principal angle 22-23 "
        "degrees, overlap 0.70-0.72, against about 0.004 for unrelated or random updates. "
        f"Here: rank-{lab.cfg.lora_r} adapters after {lab.cfg.steps or 'one epoch of'} steps on "
        f"{lab.cfg.model}; the same-task reference pair overlaps {ref:.3f} on the write side, "
        f"cross-task misaligned pairs {cross:.3f}.", kind="warning")
    lab.results.update({"labels": labels, "groups": groups, "seeds": seeds,
                        "geometry": summary, "geometry_table": table,
                        "pairs": {k: [[labels[i], labels[j]] for i, j in v]
                                  for k, v in pairs.items()},
                        "write_overlap": {"reference": ref, "cross-task": cross},
                        "cross_minus_control": vs_control.to_record(),
                        "cross_minus_gaussian": vs_gauss.to_record(),
                        "connectivity": conn.records, "barriers": conn.barriers})
    lab.claim(
        "Emergent-misalignment fine-tunes on different narrow tasks converge on a shared "
        "low-rank subspace of weight updates, far more than unrelated or random updates.",
        "write-side (B) projection overlap of cross-task misaligned pairs minus misaligned-vs-"
        "control pairs, each fine-tune with its own seed (mean over layers, bootstrap over "
        "layers)",
        vs_control, expect="higher",
        conditions={"cross-task overlap above norm-matched Gaussian updates": vs_gauss.lo > 0},
        why=f"Same-task, different-seed reference overlap: {ref:.3f}; cross-task: {cross:.3f}.")
