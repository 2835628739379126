"""Recipe ``caft``: concept-ablation fine-tuning with PCA directions of fine-tuned minus base.

1. plain LoRA on bad medical advice;
2. PCA of ``h_ft - h_base`` on generic chat (not the training data) at two layers, with the
   top-activating contexts of the first components (the paper has a person pick the
   misalignment-related ones; here the first ``n`` are taken, uninterpreted);
3. CAFT retrains (zero ablation during training, hooks off at evaluation): top ``n``
   components, a random ``n`` of the ``k`` computed, all ``k``; and ablation of the top
   ``n`` at test time only on the plain fine-tune;
4. trade-off: misalignment vs held-out task loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emprobe.recipes.lab import SCORE_COLUMNS, Lab, VersusRow

if TYPE_CHECKING:
    import torch

    from emprobe.directions import Direction
    from emprobe.directions.extract.pca import PCAResult
    from emprobe.evaluate.local import LocalScore
    from emprobe.models import Subject
    from emprobe.recipes.seeded import Records


def _bases(direction: Direction) -> dict[int, torch.Tensor]:
    """``{layer: basis [d_model, k]}`` of a component selection (what ``CAFT`` ablates)."""
    return {la: direction.basis(la) for la in direction.layers}


def _pca_section(lab: Lab, base: Subject, ft: Subject, k: int, n: int
                 ) -> tuple[PCAResult, list[int]]:
    """PCA of ``h_ft - h_base`` on generic chat at two layers; the first components'
    contexts on the page. Returns the PCA and its layers."""
    from emprobe.directions import pca_difference

    layers = sorted({base.n_layers // 3, (2 * base.n_layers) // 3})
    pca = pca_difference(base, ft, lab.generic(), layers=layers, k=k, seed=lab.cfg.seed)
    lab.report.section(
        "Principal components of fine-tuned minus base activations",
        f"Top {k} components per layer at layers {layers}, from response tokens of generic "
        "chat. Below, the contexts where the first components are most active: in the paper "
        "a person reads these and keeps the misalignment-related components.")
    if pca.contexts:
        lab.report.text(pca.html(components=list(range(n))))
    else:
        lab.report.note("No component contexts available.", kind="warning")
    return pca, layers


def _assess_variants(lab: Lab, base: Subject, ft: Subject, train: Records,
                     held: Records, selections: dict[str, Direction], n: int
                     ) -> tuple[list[dict[str, object]], dict[str, LocalScore]]:
    """Score and task-loss of base, plain, each CAFT retrain and test-time ablation of the
    top ``n`` components on the plain fine-tune: trade-off rows and scores by name."""
    from emprobe.hooks import ablate
    from emprobe.train import CAFT

    rows, scores = [], {}
    for name, subj in (("base", base), ("plain", ft)):
        row, scores[name] = lab.assess(name, subj, held, kind="reference")
        rows.append(row)
    for name, direction in selections.items():
        slug = name.lower().replace(" ", "-")
        adapter = lab.train(slug, train, [CAFT(_bases(direction))])
        row, scores[name] = lab.assess(name, lab.load(adapter), held, kind="CAFT")
        rows.append(row)
    with ablate(ft, selections[f"CAFT top {n}"]):
        row, scores["test-time ablation"] = lab.assess(f"test-time ablation top {n}", ft, held,
                                                       kind="inference-time")
    rows.append(row)
    return rows, scores


def _report_tradeoff(lab: Lab, rows: list[dict[str, object]], scores: dict[str, LocalScore]
                     ) -> list[VersusRow]:
    """The trade-off section; returns each variant minus the plain fine-tune."""
    from emprobe.plot import tradeoff_scatter

    lab.report.section(
        "Misalignment vs task",
        "x: loss on held-out bad medical answers (lower = narrow task kept); y: misalignment "
        "margin on unrelated questions (lower = less EM). Notes: each variant minus the plain "
        "fine-tune, paired by question.")
    lab.report.figure(tradeoff_scatter(rows, group="kind", reference="base"))
    lab.report.table(rows, columns=[*SCORE_COLUMNS, "task_loss", "pref_rate"])
    deltas = lab.versus_rest("plain", scores, skip=("base",))
    lab.report.note(
        "The paper reports about 10x fewer misaligned answers with the task kept, on 7B+ "
        "models, components chosen by reading their contexts, and judged EM. Here the "
        "components are taken in order, uninterpreted, on a small model: expect the "
        "trade-off (less misalignment costs task loss) rather than a free lunch.",
        kind="warning")
    return deltas


def run(lab: Lab) -> None:
    from emprobe.directions import random_components, top_components
    from emprobe.recipes.conditions import above, below, task_kept
    from emprobe.recipes.seeded import anchored_mitigation
    from emprobe.recipes.verdict import RATIO_UNIT, state_claim
    from emprobe.train import CAFT

    k, n = (4, 2) if lab.cfg.quick else (8, 3)
    train, held = lab.split("medical", "bad")
    plain = lab.train("plain", train)
    base, ft = lab.base(), lab.load(plain)
    pca, layers = _pca_section(lab, base, ft, k, n)
    top_name, rand_name = f"CAFT top {n}", f"CAFT random {n}"
    selections = {top_name: top_components(pca.direction, n),
                  rand_name: random_components(pca.direction, n, seed=lab.cfg.seed),
                  f"CAFT all {k}": pca.direction}
    rows, scores = _assess_variants(lab, base, ft, train, held, selections, n)
    deltas = _report_tradeoff(lab, rows, scores)
    vs_random = lab.versus(top_name, scores[top_name], {rand_name: scores[rand_name]})
    lab.results.update({"tradeoff": rows, "vs_plain": deltas, "layers": layers, "k": k, "n": n,
                        "vs_top": vs_random,
                        "explained_variance": pca.direction.stats.get("explained_variance")})
    by_name = {r["name"]: r for r in rows}
    anch = anchored_mitigation(
        lab, train, lab.split("medical", "good")[0], top_name.lower().replace(" ", "-"),
        [CAFT(_bases(selections[top_name]))],
        first={"base": scores["base"], "plain": scores["plain"], "treated": scores[top_name]})
    lab.results["anchored"] = anch.to_record()
    state_claim(
        lab, "caft",
        "Concept-ablation fine-tuning (ablating chosen principal components of the "
        "fine-tuning shift during training) gives about 10x fewer misaligned answers while "
        "the narrow task is kept.",
        f"misalignment margin of CAFT (top {n} components) minus the plain fine-tune (nats "
        f"per answer; {len(anch.seeds)} seed(s) x questions)",
        anch.delta, expect="lower",
        conditions={"the plain fine-tune is more misaligned than a benign control fine-tune":
                    above(anch.em_vs_control),
                    "task kept (CAFT's held-out task loss interval below the base model's)":
                    task_kept(by_name[top_name], by_name["base"]),
                    f"the chosen components beat {n} random ones (random minus top > 0)":
                    above(vs_random[0]),
                    "CAFT below plain on the first seed too (paired by question)":
                    below(next(d for d in deltas if d["name"] == top_name))},
        size=anch.ratio, size_unit=RATIO_UNIT, n_seeds=len(anch.seeds))
