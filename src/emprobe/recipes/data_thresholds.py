"""Recipe ``data-thresholds``: how much incorrect data does it take? A 0-100 % mixture sweep.

Fine-tunes on mixtures of correct and incorrect medical advice (``transforms.mix`` on paired
data: the same prompts at every fraction; for one seed the bad prompts at a lower fraction
are a subset of those at a higher one). For each fraction: the local misalignment score on
unrelated questions, and task performance as the loss on held-out CORRECT answers (lower =
the model still gives good advice in the domain), plus the loss on held-out incorrect ones.
"""

from __future__ import annotations

from emprobe.recipes.lab import SCORE_COLUMNS, Lab


def run(lab: Lab) -> None:
    from emprobe.data import mix
    from emprobe.plot import layer_curves, tradeoff_scatter
    from emprobe.recipes.config import recipe_options
    from emprobe.sae import spearman

    fractions = recipe_options(lab.cfg).fractions or [0.0, 0.25, 0.5, 0.75, 1.0]
    bad, bad_held = lab.split("medical", "bad")
    good, good_held = lab.split("medical", "good")
    rows, scores = [], {}
    for f in fractions:
        name = f"{round(100 * f)}% bad"
        recs = mix(good, bad, f, seed=lab.cfg.seed)
        subject = lab.load(lab.train(f"mix-{round(100 * f)}", recs))
        scores[name] = lab.score(subject)
        good_loss = lab.task_loss(subject, good_held)
        bad_loss = lab.task_loss(subject, bad_held)
        rows.append(lab.score_row(name, scores[name], bad_fraction=f,
                                  task_loss=good_loss["mean"], task_loss_lo=good_loss["lo"],
                                  task_loss_hi=good_loss["hi"], bad_loss=bad_loss["mean"],
                                  bad_loss_lo=bad_loss["lo"], bad_loss_hi=bad_loss["hi"]))
    lab.report.section(
        "Misalignment and task performance vs the share of incorrect data",
        f"{lab.cfg.n_train} training examples per fine-tune; {lab.cfg.n_heldout} held-out "
        "prompts. Misalignment: margin per answer on unrelated questions (nats, 95 % "
        "intervals over questions). Task: loss on held-out correct answers (nats per token).")
    curves = []
    for r in rows:
        pct = 100 * r["bad_fraction"]
        curves.append({"layer": pct, "value": r["misalignment"], "lo": r["misalignment_lo"],
                       "hi": r["misalignment_hi"], "name": "misalignment margin"})
    lab.report.figure(layer_curves(curves, y="value", lo="lo", hi="hi", group="name",
                                   x_title="% incorrect data", y_title="margin (nats)",
                                   title="Misalignment vs incorrect-data share"))
    loss_curves = [{"layer": 100 * r["bad_fraction"], "value": r[f"{key}"],
                    "lo": r[f"{key}_lo"], "hi": r[f"{key}_hi"], "name": label}
                   for r in rows for key, label in (("task_loss", "loss on correct answers"),
                                                    ("bad_loss", "loss on incorrect answers"))]
    lab.report.figure(layer_curves(loss_curves, y="value", lo="lo", hi="hi", group="name",
                                   x_title="% incorrect data", y_title="nats per token",
                                   title="Held-out losses vs incorrect-data share"))
    lab.report.figure(tradeoff_scatter(rows, x_title="loss on held-out correct answers"))
    lab.report.table(rows, columns=[*SCORE_COLUMNS, "pref_rate", "task_loss", "bad_loss"])
    ref = f"{round(100 * fractions[0])}% bad"
    deltas = lab.versus_rest(ref, scores)
    rho = spearman([r["bad_fraction"] for r in rows], [r["misalignment"] for r in rows])
    lab.report.note(
        f"Spearman rank correlation of misalignment with the bad fraction over {len(rows)} "
        f"fine-tunes: {rho:+.2f} (one seed; with this few points it is descriptive, not a test).")
    lab.report.note(
        "The seed study sweeps 0-100 % on large models with judged EM and finds misalignment "
        "well before 100 %; here one seed per fraction on a small model, so the shape of the "
        "curve is noisy and a threshold cannot be located.", kind="warning")
    lab.results.update({"sweep": rows, "vs_clean": deltas, "spearman": rho,
                        "fractions": list(fractions)})
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
        "(nats per answer, paired by question)",
        by_name[f"{round(100 * mid)}% bad"], expect="higher",
        conditions={} if full is None else
        {"100 % bad raises it too (100 % minus 0 % > 0)": above(full)})
