"""Recipe ``grasp``: the spurious factor from a naive LoRA's weights, gradient-projected retraining.

1. naive LoRA on bad medical advice;
2. the spurious factor = top-``k`` left singular vectors of its write-side updates
   (``o_proj``, ``down_proj``), found without supervision; its cosine with the
   mean-difference direction (fine-tune minus base on generic chat) per layer;
3. retrain from the base with GRASP (``B <- P B``, ``P = I - U_k U_k^T``);
4. baselines: CAFT and preventative steering with the mean-difference direction, and
   inference-time ablation of that direction on the naive fine-tune;
5. trade-off: misalignment (local score) vs held-out task loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from emprobe.recipes.lab import SCORE_COLUMNS, Lab, VersusRow

if TYPE_CHECKING:
    from emprobe.directions import Direction
    from emprobe.evaluate.local import LocalScore
    from emprobe.models import Subject
    from emprobe.recipes.seeded import Records
    from emprobe.train.interventions import Intervention

WRITE_MODULES = ("o_proj", "down_proj")


def _factor_section(lab: Lab, naive: Path, mean_diff: Direction, k: int
                    ) -> Sequence[Mapping[str, object]]:
    """The spurious factor read from the naive adapter's weights alone: how much of the
    mean-difference direction lies in each write-side update's top-``k`` left span
    (reported). Returns the alignment rows of the write-side modules."""
    from emprobe.geometry import direction_alignment
    from emprobe.plot import layer_curves

    align = [r for r in direction_alignment(naive, mean_diff, k=k)
             if r["module_type"] in WRITE_MODULES and r["side"] == "left"]
    curve = [{"layer": r["layer"], "value": r["subspace_cos"], "name": r["module_type"]}
             for r in align]
    curve += [{"layer": r["layer"], "value": r["random_expected"], "name": "random (sqrt(k/d))"}
              for r in align if r["module_type"] == "down_proj"]
    lab.report.section(
        "The spurious factor from the naive adapter's weights",
        f"Top-{k} left singular vectors of each write-side LoRA update (o_proj, down_proj) of "
        "the naive bad-medical fine-tune; no labels used. The curve shows how much of the "
        "mean-difference direction (fine-tune minus base on generic chat, resid_post of the "
        "same block) lies in that span, against the level expected for a random direction.")
    lab.report.figure(layer_curves(curve, y="value", group="name", y_title="|cos| (span)",
                                   title="Spurious factor vs mean-difference direction"))
    return align


def _assess_methods(lab: Lab, base: Subject, ft: Subject, train: Records,
                    held: Records, runs: dict[str, list[Intervention]],
                    mean_diff: Direction, layer: int
                    ) -> tuple[list[dict[str, object]], dict[str, LocalScore]]:
    """Score and task-loss of base, naive, each retrain of ``runs`` and the naive fine-tune
    with the mean-difference direction ablated at ``layer``: trade-off rows, scores by name."""
    from emprobe.hooks import ablate

    rows, scores = [], {}
    for name, subj in (("base", base), ("naive", ft)):
        row, scores[name] = lab.assess(name, subj, held, kind="reference")
        rows.append(row)
    for name, ivs in runs.items():
        slug = name.split(" ")[0].lower()
        row, scores[name] = lab.assess(name, lab.load(lab.train(slug, train, ivs)), held,
                                       kind="training-time")
        rows.append(row)
    with ablate(ft, mean_diff, layers=[layer]):
        row, scores["ablation at inference"] = lab.assess("ablation at inference", ft, held,
                                                          kind="inference-time")
    rows.append(row)
    return rows, scores


def _report_tradeoff(lab: Lab, rows: list[dict[str, object]], scores: dict[str, LocalScore],
                     layer: int) -> list[VersusRow]:
    """The trade-off section; returns each method minus the naive fine-tune."""
    from emprobe.plot import tradeoff_scatter

    lab.report.section(
        "Misalignment vs task",
        "Each retrain of the bad-medical task, and the naive fine-tune with the mean-difference "
        f"direction ablated at layer {layer} at inference. x: loss on held-out bad medical "
        "answers (the narrow task); y: misalignment margin on unrelated questions. Bottom left "
        "is best. Notes: each method minus the naive fine-tune (paired by question).")
    lab.report.figure(tradeoff_scatter(rows, group="kind", reference="base"))
    lab.report.table(rows, columns=[*SCORE_COLUMNS, "task_loss", "pref_rate"])
    deltas = lab.versus_rest("naive", scores, skip=("base",))
    lab.report.note(
        "Scale: the paper reports GRASP removing insecure-code EM and lowering bad-medical EM "
        "about 5x on 7B+ models with judged EM rates. Here a 135M model (or a tiny random one in "
        "quick mode), a handful of steps and a log-probability score: the pipeline and the "
        "trade-off are reproduced, not the size of the effect.", kind="warning")
    return deltas


# -- the recipe ----------------------------------------------------------------------------
def run(lab: Lab) -> None:
    from emprobe.directions import model_mean_difference
    from emprobe.recipes.conditions import above, task_kept
    from emprobe.recipes.seeded import anchored_mitigation
    from emprobe.recipes.verdict import RATIO_UNIT, state_claim
    from emprobe.train import CAFT, GRASP, PreventativeSteering

    k = 1 if lab.cfg.quick else 2
    train, held = lab.split("medical", "bad")
    naive = lab.train("naive", train)
    base, ft = lab.base(), lab.load(naive)
    layer = base.n_layers // 2
    mean_diff = model_mean_difference(base, ft, lab.generic())
    align = _factor_section(lab, naive, mean_diff, k)

    # retrain with GRASP and the baselines
    unit = {layer: mean_diff.vector(layer) / mean_diff.vector(layer).norm().clamp_min(1e-12)}
    runs: dict[str, list[Intervention]] = {
        "GRASP": [GRASP.from_adapter(naive, k=k)],
        "CAFT (mean diff)": [CAFT(unit)],
        "preventative steering": [PreventativeSteering({layer: mean_diff.vector(layer)})]}
    rows, scores = _assess_methods(lab, base, ft, train, held, runs, mean_diff, layer)
    deltas = _report_tradeoff(lab, rows, scores, layer)
    lab.results.update({"alignment": align, "tradeoff": rows, "vs_naive": deltas,
                        "layer": layer, "k": k})
    by_name = {r["name"]: r for r in rows}
    anch = anchored_mitigation(
        lab, train, lab.split("medical", "good")[0], "grasp", runs["GRASP"],
        first={"base": scores["base"], "plain": scores["naive"], "treated": scores["GRASP"]},
        plain_name="naive")
    lab.results["anchored"] = anch.to_record()
    state_claim(
        lab, "grasp",
        "Blocking the spurious factor read from a naive adapter's weights (GRASP gradient "
        "projection) lowers emergent misalignment several-fold while the narrow task is "
        "still learned.",
        "misalignment margin of the GRASP retrain minus the naive fine-tune (nats per "
        f"answer; {len(anch.seeds)} seed(s) x questions)",
        anch.delta, expect="lower",
        conditions={"the naive fine-tune is more misaligned than a benign control fine-tune":
                    above(anch.em_vs_control),
                    "GRASP still learns the task (held-out task loss interval below the "
                    "base model's)": task_kept(by_name["GRASP"], by_name["base"])},
        size=anch.ratio, size_unit=RATIO_UNIT, n_seeds=len(anch.seeds))
