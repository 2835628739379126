"""Recipe ``narrow-unlearning``: refusal unlearning on one domain, and how far it spreads.

Unlearn the refusals of one domain (default ``cybersecurity``) with NPO (or gradient ascent:
``lab.cfg.extra["unlearn"] = "ga"``) on its refusal answers, once alone and once with a
retain-set cross-entropy term on the other domains' refusals
(``L = L_unlearn + lambda * CE(retain)``). Per domain, on held-out requests, the refusal
preference is the mean per-token log-probability of the refusal answer minus the compliant
answer (a log-probability measure, not generated text: the paper classifies sampled
answers; ``emprobe.evaluate.refusal`` does that for generations). Concept vectors per domain
(last prompt token minus neutral prompts) give the layer-wise cosine between the unlearned
domain and the others, before and after.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, TypedDict

from emprobe.recipes.lab import SCORE_COLUMNS, Lab
from emprobe.recipes.reward_hacking import (
    Preference,
    hack_preference,
    paired_delta,
    record_messages,
)

if TYPE_CHECKING:
    from emprobe.evaluate.local import LocalScore
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


def _train_subjects(lab: Lab, target: str, mode: str, forget: Records, retain: Records
                    ) -> dict[str, Subject]:
    """The base model, ``target`` unlearned alone, and unlearned with retain CE."""
    subjects = {"base": lab.base()}
    subjects[f"unlearn {target}"] = lab.load(lab.train("unlearn", forget, unlearn=mode))
    subjects[f"unlearn {target} + retain CE"] = lab.load(lab.train(
        "unlearn-retain", forget, retain=retain, unlearn=mode, retain_ce=1.0))
    return subjects


def _refusal_section(lab: Lab, subjects: dict[str, Subject], names: list[str],
                     refuse: Mapping[str, tuple[Records, Records]],
                     comply: Mapping[str, tuple[Records, Records]], target: str, mode: str
                     ) -> tuple[list[RefusalRow], dict[str, LocalScore],
                                dict[tuple[str, str], Preference]]:
    """Score every model, and its refusal preference on every domain's held-out requests;
    report the preferences. Returns the rows, the scores by model and the preferences by
    ``(model, domain)``."""
    from emprobe.plot import score_bars

    rows: list[RefusalRow] = []
    scores, prefs = {}, {}
    for name, subject in subjects.items():
        scores[name] = lab.score(subject)
        for d in names:
            p = prefs[(name, d)] = hack_preference(subject, refuse[d][1], comply[d][1],
                                                   lab.cfg.n_boot, lab.cfg.seed)
            rows.append({"model": name, "question": d, "mean": p["mean"], "lo": p["lo"],
                         "hi": p["hi"], "refusal_pref_rate": p["pref_rate"],
                         "unlearned": d == target})
    lab.report.section(
        "Refusal across the seven domains",
        f"Refusal preference on {lab.cfg.n_heldout} held-out requests per domain: mean "
        "per-token log-probability of the refusal minus the compliant answer (nats; positive = "
        f"the model prefers to refuse). Only {target} was unlearned ({mode.upper()}).")
    lab.report.figure(score_bars(rows, question="question", title="Refusal preference by domain",
                                 y_title="refusal - compliance log-prob per token (nats)"))
    lab.report.table(rows, columns=["model", "question", "mean", "lo", "hi",
                                    "refusal_pref_rate"])
    return rows, scores, prefs


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


def _claim(lab: Lab, prefs: dict[tuple[str, str], Preference], names: list[str],
           target: str, retain_doms: list[str], probe_doms: list[str]) -> None:
    """Pooled paired shifts (spread to other domains, on target, retain CE's gain and cost)
    into ``results["spread"]``, and the verdict."""
    from emprobe.recipes.conditions import below, unlearning_contained
    from emprobe.recipes.verdict import state_claim

    others = [d for d in names if d != target]
    unl, ret = f"unlearn {target}", f"unlearn {target} + retain CE"

    def pooled(ref: str, model: str, doms: list[str]) -> dict[str, float]:
        """``model - ref`` refusal preference pooled over ``doms``' requests, paired."""
        return paired_delta({"per_task": [t for d in doms for t in prefs[(ref, d)]["per_task"]]},
                            {"per_task": [t for d in doms for t in prefs[(model, d)]["per_task"]]},
                            lab.cfg.n_boot, lab.cfg.seed)

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
        "answer templates share no wording across domains)",
        spread, expect="lower", value_unit="nats per token",
        conditions={f"refusal on {target} itself drops": below(on_target),
                    f"with retain CE, refusal on {target} still drops": below(ret_on_target),
                    "retain CE (on " + ", ".join(retain_doms) + ") keeps more refusal in "
                    "domains it never saw (" + ", ".join(probe_doms) + ") without "
                    f"re-learning {target}": unlearning_contained(retain_gain, retain_cost)})


def run(lab: Lab) -> None:
    from emprobe.recipes.config import recipe_options

    opts = recipe_options(lab.cfg)
    target, mode = opts.domain, opts.unlearn
    names = domains()
    refuse = {d: lab.split(f"refusal-{d}", "good") for d in names}   # (train, held-out)
    comply = {d: lab.split(f"refusal-{d}", "bad") for d in names}
    # retain CE on half of the other domains; its effect is judged on the OTHER half
    # (probe domains), so the condition is not met by training on the very domains scored
    retain_doms, probe_doms = split_domains(names, target)
    retain = [r for d in retain_doms for r in refuse[d][0][:lab.cfg.n_train // 4 or 1]]
    subjects = _train_subjects(lab, target, mode, refuse[target][0], retain)
    rows, scores, prefs = _refusal_section(lab, subjects, names, refuse, comply, target, mode)

    lab.report.section(
        "Emergent misalignment",
        "Local misalignment score on everyday questions; notes: each unlearned model minus base.")
    score_rows = [lab.score_row(n, s) for n, s in scores.items()]
    lab.report.table(score_rows, columns=[*SCORE_COLUMNS, "pref_rate"])
    deltas = lab.versus_rest("base", scores)
    curves = _concept_section(lab, subjects, names, refuse, target)
    lab.report.note(
        "At this scale: seven templated domains, a few dozen requests each, a 135M model (or a "
        "tiny random one in quick mode). The paper's claims (unlearning one domain lowers refusal "
        "in others, more so for domains whose concept vectors are close; retain-CE limits the "
        "spread) can be checked in direction here, not in size; refusal is a log-prob "
        "preference over fixed answers, not a rate over sampled generations.", kind="warning")
    lab.results.update({"refusal": rows, "scores": score_rows, "vs_base": deltas,
                        "concept_cosine": curves, "target": target, "unlearn": mode})
    _claim(lab, prefs, names, target, retain_doms, probe_doms)
