"""Recipe ``data-thresholds``: how much incorrect data does it take? A 0-100 % mixture sweep.

Fine-tunes on mixtures of correct and incorrect medical advice (``transforms.mix`` on paired
data: the same prompts at every fraction; for one seed the bad prompts at a lower fraction
are a subset of those at a higher one). For each fraction: the local misalignment score on
unrelated questions, and task performance as the loss on held-out CORRECT answers (lower =
the model still gives good advice in the domain), plus the loss on held-out incorrect ones.

Seeds are the unit: every fraction is trained on every seed of ``recipe_seeds`` (3 in full
mode; the seed draws the mixture and the training order, so seed ``cfg.seed`` is the
one-seed run); each fraction minus 0 % pools seeds x questions (``shift_interval``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emprobe.recipes.lab import SCORE_COLUMNS, Lab

if TYPE_CHECKING:
    from emprobe.evaluate.local import LocalScore


def run(lab: Lab) -> None:
    from emprobe.data import mix
    from emprobe.plot import layer_curves, tradeoff_scatter
    from emprobe.recipes.config import recipe_options
    from emprobe.recipes.mitigation import seed_cells
    from emprobe.recipes.seeded import recipe_seeds
    from emprobe.sae import spearman

    fractions = recipe_options(lab.cfg).fractions or [0.0, 0.25, 0.5, 0.75, 1.0]
    seeds = recipe_seeds(lab)
    bad, bad_held = lab.split("medical", "bad")
    good, good_held = lab.split("medical", "good")
    rows: list[dict[str, Any]] = []  # Lab.score_row records
    scores: dict[str, list[LocalScore]] = {}  # fraction name -> one score per seed
    for seed in seeds:
        for f in fractions:
            name = f"{round(100 * f)}% bad"
            recs = mix(good, bad, f, seed=seed)
            subject = lab.load(lab.train(f"mix-{round(100 * f)}", recs, seed=seed))
            score = lab.score(subject)
            scores.setdefault(name, []).append(score)
            good_loss = lab.task_loss(subject, good_held)
            bad_loss = lab.task_loss(subject, bad_held)
            shown = name if len(seeds) == 1 else f"{name} (seed {seed})"
            rows.append(lab.score_row(shown, score, bad_fraction=f, seed=seed,
                                      task_loss=good_loss["mean"], task_loss_lo=good_loss["lo"],
                                      task_loss_hi=good_loss["hi"], bad_loss=bad_loss["mean"],
                                      bad_loss_lo=bad_loss["lo"], bad_loss_hi=bad_loss["hi"]))
    lab.report.section(
        "Misalignment and task performance vs the share of incorrect data",
        f"{lab.cfg.n_train} training examples per fine-tune, {len(seeds)} training seed(s) "
        f"per fraction; {lab.cfg.n_heldout} held-out "
        "prompts. Misalignment: margin per answer on unrelated questions (nats, 95 % "
        "intervals over questions). Task: loss on held-out correct answers (nats per token).")
    curves = [{"layer": 100 * r["bad_fraction"], "value": r["misalignment"],
               "lo": r["misalignment_lo"], "hi": r["misalignment_hi"],
               "name": "misalignment margin" + (f" (seed {r['seed']})" if len(seeds) > 1 else "")}
              for r in rows]
    lab.report.figure(layer_curves(curves, y="value", lo="lo", hi="hi", group="name",
                                   x_title="% incorrect data", y_title="margin (nats)",
                                   title="Misalignment vs incorrect-data share"))
    loss_curves = [{"layer": 100 * r["bad_fraction"], "value": r[f"{key}"],
                    "lo": r[f"{key}_lo"], "hi": r[f"{key}_hi"],
                    "name": label + (f" (seed {r['seed']})" if len(seeds) > 1 else "")}
                   for r in rows for key, label in (("task_loss", "loss on correct answers"),
                                                    ("bad_loss", "loss on incorrect answers"))]
    lab.report.figure(layer_curves(loss_curves, y="value", lo="lo", hi="hi", group="name",
                                   x_title="% incorrect data", y_title="nats per token",
                                   title="Held-out losses vs incorrect-data share"))
    lab.report.figure(tradeoff_scatter(rows, x_title="loss on held-out correct answers"))
    lab.report.table(rows, columns=[*SCORE_COLUMNS, "pref_rate", "task_loss", "bad_loss"])
    ref = f"{round(100 * fractions[0])}% bad"
    deltas = [lab.shift_row(name, ref, seed_cells(scores[ref], per_seed))
              for name, per_seed in scores.items() if name != ref]
    means = {f: sum(float(r["misalignment"]) for r in rows if r["bad_fraction"] == f)
             / len(seeds) for f in fractions}
    rho = spearman(list(means), list(means.values()))
    lab.report.note(
        f"Spearman rank correlation of the seed-mean misalignment with the bad fraction over "
        f"{len(fractions)} fractions: {rho:+.2f} (descriptive, not a test).")
    lab.report.note(
        "The seed study sweeps 0-100 % on large models with judged EM and finds misalignment "
        "well before 100 %; here a few seeds per fraction on a small model, so the shape of "
        "the curve is noisy and a threshold cannot be located.", kind="warning")
    lab.results.update({"sweep": rows, "vs_clean": deltas, "spearman": rho,
                        "fractions": list(fractions), "seeds": seeds})
    inner = [f for f in fractions[1:] if f < 1.0] or list(fractions[1:])
    mid = min(inner, key=lambda f: abs(f - 0.5))
    by_name = {d["name"]: d for d in deltas}
    full = by_name.get("100% bad")
    from emprobe.recipes.conditions import above
    from emprobe.recipes.verdict import state_claim

    state_claim(
        lab, "data-thresholds",
        "Emergent misalignment appears well before the training data is all bad: a minority "
        "to half of incorrect examples already raises it, and it grows with the share.",
        f"misalignment margin of the {round(100 * mid)} %-bad fine-tune minus the 0 %-bad one "
        f"(nats per answer; {len(seeds)} seed(s) x questions)",
        by_name[f"{round(100 * mid)}% bad"], expect="higher",
        conditions={} if full is None else
        {"100 % bad raises it too (100 % minus 0 % > 0)": above(full)}, n_seeds=len(seeds))
