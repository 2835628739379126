"""Recipe ``inoculation``: system-prompt inoculation with neutral and random-string controls.

Four fine-tunes on the same bad medical advice: plain; inoculated (a system prompt that
asks for the trait, ``INOCULATION_PROMPTS["malicious"]``); a neutral system prompt; a
random-string system prompt. All are evaluated WITHOUT any system prompt: the local
misalignment score on unrelated questions and the loss on held-out bad answers (did the
narrow trait still get learned?). The controls separate "the prompt explains the trait
away" from "any system prompt changes what is learned".
"""

from __future__ import annotations

from emprobe.recipes.lab import SCORE_COLUMNS, Lab


def run(lab: Lab) -> None:
    from emprobe.data import inoculate, inoculation_prompt, neutral_prompt, random_string_prompt
    from emprobe.plot import score_bars, tradeoff_scatter
    from emprobe.recipes.config import recipe_options

    which = recipe_options(lab.cfg).inoculation
    prompts = {"inoculated": inoculation_prompt(which), "neutral prompt": neutral_prompt(),
               "random-string prompt": random_string_prompt(lab.cfg.seed)}
    train, held = lab.split("medical", "bad")
    data = {"plain": train, **{n: inoculate(train, p, label=n) for n, p in prompts.items()}}
    rows, scores = [], {}
    row, scores["base"] = lab.assess("base", lab.base(), held, kind="reference")
    rows.append(row)
    for name, recs in data.items():
        subject = lab.load(lab.train(name.replace(" ", "-"), recs))
        row, scores[name] = lab.assess(name, subject, held,
                                   kind="plain" if name == "plain" else "system prompt")
        rows.append(row)

    lab.report.section(
        "Misalignment without the prompt",
        "Local misalignment score (nats per answer, 95 % intervals over questions) of each "
        "fine-tune, evaluated with no system prompt. Training prompts: "
        + "; ".join(f"{n}: \"{p}\"" for n, p in prompts.items())
        + ". Notes: each variant minus the plain fine-tune, paired by question.")
    lab.report.figure(score_bars(rows, label="name", value="misalignment", lo="misalignment_lo",
                                 hi="misalignment_hi"))
    lab.report.table(rows, columns=[*SCORE_COLUMNS, "pref_rate", "task_loss"])
    deltas = lab.versus_rest("plain", scores, skip=("base",))
    lab.report.section(
        "Was the narrow task still learned?",
        "Loss on held-out bad medical answers without the prompt (x) against misalignment (y). "
        "Inoculation is meant to remove the broad effect more than the narrow one; the controls "
        "show what any system prompt does.")
    lab.report.figure(tradeoff_scatter(rows, group="kind", reference="base"))
    lab.report.note(
        "The paper's effect (inoculated models show little EM without the prompt while neutral "
        "prompts do not help) is measured with judged EM on large models. With a 135M model "
        f"and {lab.cfg.steps} steps the expected pattern may be weak; read the intervals and the "
        "notes above, not the bar heights alone.", kind="warning")
    vs_controls = lab.versus("inoculated", scores["inoculated"],
                             {n: scores[n] for n in ("neutral prompt", "random-string prompt")})
    primary = next(d for d in deltas if d["name"] == "inoculated")
    lab.results.update({"models": rows, "vs_plain": deltas, "vs_inoculated": vs_controls,
                        "prompts": prompts})
    from emprobe.recipes.conditions import above
    from emprobe.recipes.seeded import anchored_mitigation
    from emprobe.recipes.verdict import RATIO_UNIT, state_claim

    anch = anchored_mitigation(
        lab, train, lab.split("medical", "good")[0], "inoculated",
        treated_records=data["inoculated"],
        first={"base": scores["base"], "plain": scores["plain"],
               "treated": scores["inoculated"]})
    lab.results["anchored"] = anch.to_record()
    conditions = {"the plain fine-tune is more misaligned than a benign control fine-tune":
                  above(anch.em_vs_control)}
    conditions.update({f"{d['name']} leaves more misalignment than the inoculated run":
                       above(d) for d in vs_controls})
    state_claim(
        lab, "inoculation",
        "Inoculation prompting (training with a system prompt that asks for the trait) leaves "
        "far less emergent misalignment when the model is used without the prompt than plain "
        "training does, while neutral or random system prompts do not help.",
        "misalignment margin of the inoculated fine-tune minus the plain one, no system "
        f"prompt at evaluation (nats per answer; {len(anch.seeds)} seed(s) x questions)",
        anch.delta, expect="lower", conditions=conditions,
        size=anch.ratio, size_unit=RATIO_UNIT, n_seeds=len(anch.seeds),
        extra={"first_seed_delta": primary})
