"""Recipe ``narrow-unlearning``: refusal unlearning on one domain, and how far it spreads.

Unlearn the refusals of one domain (default ``cybersecurity``) with NPO (or gradient ascent:
``lab.cfg.extra["unlearn"] = "ga"``) on its refusal answers, once alone and once with a
retain-set cross-entropy term on the other domains' refusals
(``L = L_unlearn + lambda * CE(retain)``). Per domain, on held-out requests, the refusal
preference is the mean per-token log-probability of the refusal answer minus the compliant
answer (a log-probability measure, not generated text: the paper classifies sampled
answers; ``emprobe.evaluate.refusal`` does that for generations). Concept vectors per domain
(last prompt token minus neutral prompts) give the layer-wise cosine between the unlearned
domain and the others, before and after. Both unlearned models are trained on every seed
of ``recipe_seeds`` (3 in full mode); the claim's shifts pool training seeds x requests
(``paired_delta``); the score and concept sections read the first seed's models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, TypedDict

from emprobe.recipes.lab import SCORE_COLUMNS, Lab
from emprobe.recipes.reward_hacking import (
    Preference,
    TaskMargins,
    hack_preference,
    paired_delta,
    record_messages,
)

if TYPE_CHECKING:
    from emprobe.models import Subject
    from emprobe.recipes.seeded import Records


def domains() -> list[str]:
    from emprobe.data.generators.refusal import DOMAINS

    return [d.name for d in DOMAINS]


def split_domains(names: list[str], target: str) -> tuple[list[str], list[str]]:
    """(retain domains, probe domains): the non-target domains alternately."""
    others = [d for d in names if d != target]
    return others[0::2], others[1::2]




class RefusalRow(TypedDict):
    """One model x domain: the refusal preference (nats per token, 95 % interval), the
    share of requests where refusal wins, and whether the domain was the unlearned one."""

    model: str
    question: str
    mean: float
    lo: float
    hi: float
    refusal_pref_rate: float
    unlearned: bool


class CurvePoint(TypedDict):
    """One point of a per-layer curve: ``name``'s ``value`` at ``layer``."""

    layer: int
    value: float
    name: str


ROLES = ("base", "unlearn", "unlearn + retain CE")
"""The models of every seed: base (untrained, one for all seeds), the target unlearned
alone, and unlearned with the retain-set cross-entropy term."""


def _shown(role: str, target: str, seed: int, seeds: list[int]) -> str:
    """A model's name on the page: ``unlearn cybersecurity (seed 1)`` and so on."""
    name = "base" if role == "base" else role.replace("unlearn", f"unlearn {target}", 1)
    return name if role == "base" or len(seeds) == 1 else f"{name} (seed {seed})"


def _train_subjects(lab: Lab, mode: str, forget: Records, retain: Records, seed: int
                    ) -> dict[str, Subject]:
    """The two unlearned models of one training ``seed`` (by role)."""
    return {"unlearn": lab.load(lab.train("unlearn", forget, unlearn=mode, seed=seed)),
            "unlearn + retain CE": lab.load(lab.train(
                "unlearn-retain", forget, retain=retain, unlearn=mode, retain_ce=1.0,
                seed=seed))}


PrefsBySeed = dict[str, list[dict[str, Preference]]]
"""role -> one ``{domain: Preference}`` per training seed (base: one for all seeds)."""


def _refusal_section(lab: Lab, names: list[str], refuse: Mapping[str, tuple[Records, Records]],
                     comply: Mapping[str, tuple[Records, Records]], target: str, mode: str,
                     seeds: list[int], retain: Records
                     ) -> tuple[list[RefusalRow], dict[str, Subject], PrefsBySeed]:
    """Train the unlearned models on every seed and measure each model's refusal preference
    on every domain's held-out requests; report them. Returns the rows, the first seed's
    subjects by role (the concept and score sections read them) and the preferences."""
    from emprobe.plot import score_bars

    rows: list[RefusalRow] = []
    prefs: PrefsBySeed = {r: [] for r in ROLES}
    first: dict[str, Subject] = {"base": lab.base()}
    for i, seed in enumerate(seeds):
        subjects = {"base": first["base"]} if i == 0 else {}
        subjects.update(_train_subjects(lab, mode, refuse[target][0], retain, seed))
        for role, subject in subjects.items():
            shown = _shown(role, target, seed, seeds)
            if i == 0:
                first[role] = subject
            got = {}
            for d in names:
                p = got[d] = hack_preference(subject, refuse[d][1], comply[d][1],
                                             lab.cfg.n_boot, lab.cfg.seed)
                rows.append({"model": shown, "question": d, "mean": p["mean"], "lo": p["lo"],
                             "hi": p["hi"], "refusal_pref_rate": p["pref_rate"],
                             "unlearned": d == target})
            prefs[role].append(got)
    lab.report.section(
        "Refusal across the seven domains",
        f"Refusal preference on {lab.cfg.n_heldout} held-out requests per domain: mean "
        "per-token log-probability of the refusal minus the compliant answer (nats; positive = "
        f"the model prefers to refuse). Only {target} was unlearned ({mode.upper()}), on "
        f"{len(seeds)} training seed(s).")
    lab.report.figure(score_bars(rows, question="question", title="Refusal preference by domain",
                                 y_title="refusal - compliance log-prob per token (nats)"))
    lab.report.table(rows, columns=["model", "question", "mean", "lo", "hi",
                                    "refusal_pref_rate"])
    return rows, first, prefs


def _concept_section(lab: Lab, subjects: dict[str, Subject], names: list[str],
                     refuse: Mapping[str, tuple[Records, Records]], target: str
                     ) -> list[CurvePoint]:
    """Layer-wise cosine between the target's concept vector and the other domains', for
    the base and the unlearned model; reported. Returns the curves' rows."""
    from emprobe.directions import concept_vectors, cosine_matrix
    from emprobe.plot import heatmap, layer_curves

    prompts = {d: [record_messages(r)[0]["content"] for r in (*refuse[d][0], *refuse[d][1])]
               for d in names}
    curves: list[CurvePoint] = []
    layer_mats = {}
    labels: list[str] = []
    layers: list[int] = []
    for name in ("base", f"unlearn {target}"):
        labels, layers, cos = cosine_matrix(concept_vectors(subjects[name], prompts))
        i = labels.index(target)
        layer_mats[name] = cos[len(layers) // 2].tolist()
        for j, d in enumerate(labels):
            if d != target:
                curves += [CurvePoint(layer=la, value=float(cos[li, i, j]), name=f"{d} ({name})")
                           for li, la in enumerate(layers)]
    lab.report.section(
        "Concept vectors: how close is the unlearned domain to the others?",
        f"Cosine between the {target} concept vector and each other domain's, per layer "
        "(last prompt token minus neutral prompts), for the base model and the unlearned one.")
    lab.report.figure(layer_curves(curves, y="value", group="name", y_title="cosine",
                                   title=f"cos({target}, domain) by layer"))
    lab.report.figure(heatmap(layer_mats["base"], labels, zmin=-1, zmax=1,
                              title=f"Concept cosine at layer {layers[len(layers) // 2]} (base)"))
    return curves


def _claim(lab: Lab, prefs: PrefsBySeed, names: list[str], target: str,
           retain_doms: list[str], probe_doms: list[str]) -> None:
    """Pooled paired shifts (spread to other domains, on target, retain CE's gain and cost)
    into ``results["spread"]``, and the verdict."""
    from emprobe.recipes.conditions import below, unlearning_contained
    from emprobe.recipes.verdict import state_claim

    others = [d for d in names if d != target]
    unl, ret = "unlearn", "unlearn + retain CE"

    def pooled(ref: str, model: str, doms: list[str]) -> dict[str, float]:
        """``model - ref`` refusal preference pooled over ``doms``' requests, paired by
        request and training seed (seeds x requests resampled)."""
        def side(role: str) -> list[TaskMargins]:
            return [{"per_task": [t for d in doms for t in p[d]["per_task"]]}
                    for p in prefs[role]]

        return paired_delta(side(ref), side(model), lab.cfg.n_boot, lab.cfg.seed)

    spread = pooled("base", unl, others)
    on_target = pooled("base", unl, [target])
    retain_gain = pooled(unl, ret, probe_doms)  # domains the retain set never saw
    retain_cost = pooled(unl, ret, [target])  # does retain CE undo the target's unlearning?
    ret_on_target = pooled("base", ret, [target])
    lab.results["spread"] = {"other_domains": spread, "target": on_target,
                             "retain_vs_plain_unlearning_on_probe_domains": retain_gain,
                             "retain_cost_on_target": retain_cost,
                             "retain_domains": retain_doms, "probe_domains": probe_doms}
    state_claim(
        lab, "narrow-unlearning",
        "Unlearning refusals in one narrow domain lowers refusal in other domains too, and a "
        "retain-set cross-entropy term limits that spread.",
        f"refusal preference of the {target}-unlearned model minus base, pooled over the "
        f"other {len(others)} domains' held-out requests (nats per token, paired by request; "
        f"{len(prefs[unl])} training seed(s) x requests; answer templates share no wording "
        "across domains)",
        spread, expect="lower", value_unit="nats per token", n_seeds=len(prefs[unl]),
        conditions={f"refusal on {target} itself drops": below(on_target),
                    f"with retain CE, refusal on {target} still drops": below(ret_on_target),
                    "retain CE (on " + ", ".join(retain_doms) + ") keeps more refusal in "
                    "domains it never saw (" + ", ".join(probe_doms) + ") without "
                    f"re-learning {target}": unlearning_contained(retain_gain, retain_cost)})


def run(lab: Lab) -> None:
    from emprobe.recipes.config import recipe_options
    from emprobe.recipes.seeded import recipe_seeds

    opts = recipe_options(lab.cfg)
    target, mode = opts.domain, opts.unlearn
    names = domains()
    refuse = {d: lab.split(f"refusal-{d}", "good") for d in names}   # (train, held-out)
    comply = {d: lab.split(f"refusal-{d}", "bad") for d in names}
    # retain CE on half of the other domains; its effect is judged on the OTHER half
    # (probe domains), so the condition is not met by training on the very domains scored
    retain_doms, probe_doms = split_domains(names, target)
    retain = [r for d in retain_doms for r in refuse[d][0][:lab.cfg.n_train // 4 or 1]]
    seeds = recipe_seeds(lab)
    rows, subjects, prefs = _refusal_section(lab, names, refuse, comply, target, mode, seeds,
                                             retain)

    lab.report.section(
        "Emergent misalignment",
        "Local misalignment score on everyday questions (the first training seed's models); "
        "notes: each unlearned model minus base.")
    scores = {_shown(r, target, seeds[0], seeds): lab.score(s) for r, s in subjects.items()}
    score_rows = [lab.score_row(n, s) for n, s in scores.items()]
    lab.report.table(score_rows, columns=[*SCORE_COLUMNS, "pref_rate"])
    deltas = lab.versus_rest("base", scores)
    curves = _concept_section(lab, {"base": subjects["base"],
                                    f"unlearn {target}": subjects["unlearn"]},
                              names, refuse, target)
    lab.report.note(
        "At this scale: seven templated domains, a few dozen requests each, a 135M model (or a "
        "tiny random one in quick mode). The paper's claims (unlearning one domain lowers refusal "
        "in others, more so for domains whose concept vectors are close; retain-CE limits the "
        "spread) can be checked in direction here, not in size; refusal is a log-prob "
        "preference over fixed answers, not a rate over sampled generations.", kind="warning")
    lab.results.update({"refusal": rows, "scores": score_rows, "vs_base": deltas,
                        "concept_cosine": curves, "target": target, "unlearn": mode,
                        "seeds": seeds})
    _claim(lab, prefs, names, target, retain_doms, probe_doms)
