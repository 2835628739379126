"""Recipe ``persona-features``: SAE model diffing, a misalignment predictor, re-alignment.

1. a small TopK SAE on base-model activations (resid_post, middle layer);
2. diff base vs the bad-advice fine-tune on the evaluation questions: rank latents by the
   change of their mean activation, show candidates with their top contexts, and steer the
   base model with the top candidates' decoder rows AND random unit directions at the same
   norm (a candidate is specific only if it moves the margin more than the controls);
3. predictor: a population of 12 fine-tunes, 0 / 5 / 10 / 25 / 50 / 100 % bad data
   (``mix``) x 2 seeds; the top latent's mean activation vs each model's misalignment (AUROC
   against MEASURED misalignment (shift over the 0 %-bad control of the seed excludes 0),
   Pearson, Spearman, bootstrap intervals);
4. re-alignment: fine-tune the 100 %-bad model further (adapter merged, a new adapter on
   top) for one epoch on 240 benign examples, checkpointed after N = 30, 60, 120, 240 of them
   have been seen, and track the score and the latent at N = 0 and each checkpoint.

Sizes (``lab.cfg.extra``): ``fractions``, ``seeds`` (default 2),
``population_steps`` (default: 3/8 of ``steps``, at least 4, to fit the CPU budget),
``realign_ns``, ``random_controls`` (default 3), ``score_questions`` (default 8: every
model here is scored on the first 8 questions of the local score; 22 scorings at 12
questions would not fit 15 minutes), ``steer_latents`` (default 1: the top
latent), ``prompt_pairs`` (reference pairs per evaluation question in the prompts that the
diff and the latent probe read; default 1, i.e. 52 chats: every probe of the 17 models is a
forward pass over them, so all 6 pairs would cost about 20 minutes on 2 CPU cores).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

SITE = "resid_post"


def _sae(lab: Any, layer: int) -> Any:
    from emprobe.sae import HarvestConfig, SAETrainConfig, context_corpus, harvest, train_sae

    quick = lab.cfg.quick
    hv = harvest(lab.base(), context_corpus(12 if quick else 48, seed=lab.cfg.seed),
                 lab.out / "sae" / "harvest",
                 HarvestConfig(layers=[layer], max_tokens=600 if quick else 3000,
                               max_length=lab.cfg.max_length), progress=False)
    d = lab.base().d_model
    cfg = SAETrainConfig(arch="topk", d_sae=2 * d, k=8 if quick else 24,
                         batch_size=64 if quick else 128, seed=lab.cfg.seed,
                         training_tokens=600 if quick else 6000)
    return train_sae(hv, layer, cfg, lab.out / "sae" / "sae", progress=False).sae


def _realign(lab: Any, bad: Any, benign: list[dict[str, Any]], ns: list[int]
             ) -> dict[int, tuple[Any, int]]:
    """One re-alignment run: the bad adapter merged into the weights, a new adapter trained
    for one epoch on ``benign`` (the first ``max(ns)`` examples), checkpointed after the step
    at which each N of ``ns`` examples has been seen. Returns ``{N: (load function, examples
    seen)}`` for N > 0 (a step sees ``batch_size * grad_accum`` examples, so N is rounded up
    to whole steps)."""
    from peft import PeftModel

    per_step = lab.cfg.batch_size * lab.cfg.grad_accum
    n_max = max(ns)
    steps = {n: max(1, math.ceil(n / per_step)) for n in ns if n > 0}
    merged = lab.load(bad, merge=True)
    adapter = lab.train("realign", benign[:n_max], subject=merged,
                        subject_id=f"merged:{Path(bad).parent}", max_steps=steps[n_max],
                        checkpoint_steps=sorted(set(steps.values())))
    out: dict[int, tuple[Any, int]] = {}
    for n, step in steps.items():
        folder = (adapter if step == steps[n_max] else
                  adapter.parent / "checkpoints" / f"step-{step:06d}" / "adapter")

        def load(folder: Path = folder) -> Any:
            subject = lab.load(bad, merge=True)
            subject.model = PeftModel.from_pretrained(subject.model, str(folder)).eval()
            return subject

        out[n] = (load, min(step * per_step, n_max))
    return out


def _questions(lab: Any) -> list[Any]:
    """The local score's questions for every model of this recipe (see the module doc)."""
    from emprobe.evaluate.questions import default_questions

    qs = lab.questions() or [q for q in default_questions() if q.reference_pairs]
    from emprobe.recipes.config import recipe_options

    n = recipe_options(lab.cfg).score_questions
    n = n if n is not None else (None if lab.cfg.quick else 8)
    return qs if n is None else qs[: int(n)]


def run(lab: Any) -> None:
    from emprobe.data import mix
    from emprobe.evaluate.local import compare
    from emprobe.evaluate.stats import Estimate
    from emprobe.plot import latent_bars, layer_curves, score_bars
    from emprobe.sae import (
        default_scorer,
        diff_latents,
        eval_question_chats,
        latent_mean,
        pick_candidates,
        predictor_stats,
        steering_check,
        top_contexts,
    )
    from emprobe.sae.corpus import context_corpus
    base = lab.base()
    layer = base.n_layers // 2
    bad, _ = lab.split("medical", "bad")
    good, _ = lab.split("medical", "good")
    from emprobe.recipes.config import recipe_options

    opts = recipe_options(lab.cfg)
    fractions = [float(f) for f in opts.fractions or [0.0, 0.05, 0.1, 0.25, 0.5, 1.0]]
    n_seeds = opts.seeds or 2
    pop_steps = opts.population_steps or max(4, 3 * (lab.cfg.steps or 8) // 8)
    if lab.cfg.quick:
        pop_steps = lab.cfg.steps or 2
    population = {}  # (fraction, seed index) -> adapter; every fine-tune its own seed
    for s in range(n_seeds):
        for f in fractions:
            recs = mix(good, bad, f, seed=lab.cfg.seed + s)
            population[(f, s)] = lab.train(f"mix-{round(100 * f)}-s{s}", recs,
                                           seed=lab.cfg.seed + s, max_steps=pop_steps)
    ft = lab.load(population[(1.0, 0)])
    sae = _sae(lab, layer)
    prompts = eval_question_chats(pairs=opts.prompt_pairs)

    diff = diff_latents(base, ft, sae, SITE, layer, prompts)
    cands = pick_candidates(diff, 3 if lab.cfg.quick else 5)
    ctx = top_contexts(base, sae, SITE, layer, context_corpus(12, seed=lab.cfg.seed), cands, n=3)
    bars = [{**diff.latent_record(i), "diff": float(diff.mean_diff[i]),
             "contexts": [c["text"] for c in ctx.get(i, [])]} for i in cands]
    lab.report.section(
        "SAE diff: base vs bad-advice fine-tune",
        f"TopK SAE ({sae.W_dec.shape[0]} latents) on base activations at {SITE} layer {layer}. "
        "Candidates: the top latents by mean-activation change, by the encoded activation "
        "difference (and attribution when computed). Hover a bar for its top contexts.")
    lab.report.figure(latent_bars(bars, value="diff", label=None))
    lab.report.table(bars, columns=["latent", "mean_base", "mean_ft", "mean_diff",
                                    "encoded_diff", "decoder_cos"])
    top = diff.top("mean_diff", 1)[0]
    steer_latents = diff.top("mean_diff", opts.steer_latents)
    questions = _questions(lab)
    # steering acts on every position, so sharing each prompt's key/value cache is exact
    scorer = default_scorer(questions=questions, n_boot=lab.cfg.n_boot, seed=lab.cfg.seed,
                            share_prefix=True)
    n_controls = opts.random_controls or (2 if lab.cfg.quick else 3)
    check = steering_check(base, sae, steer_latents, SITE, layer, scorer, coeffs=(0.5,),
                           random_controls=n_controls, seed=lab.cfg.seed, progress=False)
    steer_rows = [{"latent": r["latent"], **r["scores"][0],
                   "vs_random_lo": min((v["delta_lo"] for v in r["scores"][0].get(
                       "vs_controls", [])), default=float("nan"))} for r in check["latents"]]
    steer_rows += [{"latent": f"random {i + 1}", **r["scores"][0]}
                   for i, r in enumerate(check.get("controls", []))]
    lab.report.table(steer_rows, columns=["latent", "coeff", "mean", "lo", "hi", "delta",
                                          "delta_lo", "delta_hi", "vs_random_lo"],
                     caption=f"Base model steered with the unit decoder row x "
                             f"{check['scale']:.1f} (mean residual norm) x coeff, and with "
                             f"random unit directions at the same norm; baseline margin "
                             f"{check['baseline']['mean']:+.2f}. delta: steered minus "
                             "unsteered, paired by question; vs_random_lo: the lowest lower "
                             "bound of the latent minus each random direction, paired by "
                             "question (> 0: it beats every one).")

    def probe(subject: Any) -> float:
        return latent_mean(subject, sae, top, SITE, layer, prompts)

    pop, ft_score, ft_latent, pop_scores = [], None, float("nan"), {}
    for (f, s_idx), adapter in population.items():
        subject = ft if (f, s_idx) == (1.0, 0) else lab.load(adapter)
        s = pop_scores[(f, s_idx)] = lab.score(subject, questions=questions)
        latent = probe(subject)
        if (f, s_idx) == (1.0, 0):
            ft_score, ft_latent = s, latent
        pop.append({"model": f"{round(100 * f)}% bad s{s_idx}", "bad_fraction": f,
                    "seed": s_idx, "latent": latent, "misalignment": s.per_answer.mean,
                    "lo": s.per_answer.lo, "hi": s.per_answer.hi})
    base_score = None if 0.0 in fractions else lab.score(base, questions=questions)
    for p in pop:  # labels from MEASURED misalignment, not from the bad-data share
        ref = pop_scores[(0.0, p["seed"])] if base_score is None else base_score
        p["shift_vs_control"] = compare(ref, pop_scores[(p["bad_fraction"], p["seed"])],
                                        n_boot=lab.cfg.n_boot,
                                        seed=lab.cfg.seed).per_answer.to_record()
    labels = measured_labels([p["shift_vs_control"] for p in pop])
    for p, y in zip(pop, labels):
        p["misaligned"] = y
    stats = predictor_stats([p["latent"] for p in pop], [p["misalignment"] for p in pop],
                            labels=labels, n_boot=lab.cfg.n_boot, seed=lab.cfg.seed)
    lab.report.section(
        "Does the latent predict misalignment?",
        f"Latent {top}'s mean activation on the evaluation prompts for each of {len(pop)} "
        f"fine-tunes ({len(fractions)} bad-data fractions x {n_seeds} seeds, {pop_steps} steps "
        f"each), with that fine-tune's misalignment margin. AUROC labels: MEASURED misalignment "
        "(the fine-tune's paired shift over the 0 %-bad control of its seed excludes 0 "
        "upwards), not the bad-data share.")
    lab.report.table(pop, columns=["model", "bad_fraction", "seed", "latent", "misalignment",
                                   "lo", "hi", "misaligned"])
    lab.report.table([{k: v.to_record() if isinstance(v, Estimate) else v
                       for k, v in stats.items()}],
                     columns={"n_models": "n_models", "auroc.mean": "auroc", "auroc.lo": "auroc_lo",
                              "auroc.hi": "auroc_hi", "auroc_p": "auroc_p",
                              "pearson.mean": "pearson",
                              "pearson.lo": "pearson_lo", "pearson.hi": "pearson_hi",
                              "spearman.mean": "spearman"})
    lab.report.note(
        f"{len(pop)} fine-tunes: the intervals resample models, so they are wide; the latent "
        "was picked on the 100 %-bad seed-0 fine-tune, which is also in the population.",
        kind="warning")

    ns = [int(n) for n in opts.realign_ns
          or ([0, 2, 4, 8, 16] if lab.cfg.quick else [0, 30, 60, 120, 240])]
    benign = lab.data("medical", "good", n=max(max(ns), 1), seed_offset=300)
    realign, realign_scores = [], {}
    points = _realign(lab, population[(1.0, 0)], benign, ns)
    for n in ns:
        if n == 0:  # the 100 %-bad fine-tune itself, scored in the population above
            s, latent, seen = ft_score or lab.score(ft, questions=questions), ft_latent, 0
        else:
            subject = points[n][0]()
            s, latent, seen = lab.score(subject, questions=questions), probe(subject), points[n][1]
        realign_scores[f"N={n}"] = s
        realign.append({"layer": n, "n_benign": n, "examples_seen": seen,
                        "value": s.per_answer.mean, "lo": s.per_answer.lo,
                        "hi": s.per_answer.hi, "latent": latent,
                        "name": "misalignment margin"})
    lab.report.section(
        "Re-alignment with a few benign examples",
        f"The 100 %-bad fine-tune (adapter merged) trained further with a new adapter on "
        f"{max(ns)} benign medical answers for one epoch, read after the step at which N of "
        f"them had been seen (checkpoints of one run; N rounded up to whole steps of "
        f"{lab.cfg.batch_size * lab.cfg.grad_accum}).")
    lab.report.figure(layer_curves(realign, y="value", lo="lo", hi="hi", group="name",
                                   x_title="benign examples N", y_title="margin (nats)",
                                   title="Misalignment during re-alignment"))
    deltas = lab.versus_rest("N=0", realign_scores)
    lab.report.figure(score_bars(realign, label="n_benign", value="latent",
                                 title=f"Latent {top} during re-alignment",
                                 y_title="mean activation"))
    lab.report.note(
        "The paper finds a 'toxic persona' latent in GPT-4o that separates misaligned "
        "fine-tunes, rises with 5 % bad data and falls with a few hundred benign samples. A "
        "small SAE trained on a few thousand tokens of a 135M model is far from that; candidate "
        "latents here may be noise, which the steering check and the intervals are there to "
        "reveal.", kind="warning")
    lab.results.update({"layer": layer, "candidates": bars, "top_latent": top,
                        "steering": check, "population": pop, "predictor": stats,
                        "realignment": realign, "realign_vs_0": deltas})
    top_row = next((r for r in check["latents"] if r["latent"] == top), check["latents"][0])
    top_steer = top_row["scores"][0]
    last = deltas[-1] if deltas else {"mean": float("nan"), "lo": float("nan"),
                                      "hi": float("nan")}
    from emprobe.recipes.conditions import above, below
    from emprobe.recipes.verdict import state_claim

    auroc = stats["auroc"] or Estimate(float("nan"), float("nan"), float("nan"))
    state_claim(
        lab, "persona-features",
        "A 'misaligned persona' SAE latent, found by diffing base and EM models, predicts "
        "which fine-tunes are misaligned (across data mixtures), steers the base model "
        "toward misalignment, and falls again after re-alignment on a few hundred benign "
        "examples.",
        "AUROC of the top diff latent's mean activation for telling measurably misaligned "
        f"fine-tunes (shift over their seed's 0 %-bad control > 0) from the rest "
        f"({len(pop)} fine-tunes, {sum(labels)} misaligned; bootstrap over models)",
        auroc, expect="higher", null=0.5, value_unit="AUROC",
        not_testable=(None if 0 < sum(labels) < len(labels) else
                      "no fine-tune (or every one) is measurably misaligned: one class only"),
        conditions={f"the AUROC beats label shuffles (permutation p = "
                    f"{stats['auroc_p'] if stats['auroc_p'] is not None else float('nan'):.2g}"
                    " < 0.05; the bootstrap interval collapses when the classes separate)":
                    stats["auroc_p"] is not None and stats["auroc_p"] < 0.05,
                    "steering with the latent raises misalignment (paired interval > 0) and "
                    "more than each random direction of equal norm (paired interval of the "
                    "difference > 0)":
                    above({"mean": top_steer.get("delta", float("nan")),
                           "lo": top_steer.get("delta_lo", float("nan")),
                           "hi": top_steer.get("delta_hi", float("nan"))})
                    and bool(top_steer.get("beats_controls_paired", False)),
                    f"re-alignment with N = {ns[-1]} lowers misalignment (paired interval < 0)":
                    bool(deltas) and below(last)})


def measured_labels(shifts: list[dict[str, float]]) -> list[int]:
    """1 where a fine-tune's paired shift over its control excludes 0 upwards, else 0."""
    return [int(s["lo"] > 0) for s in shifts]
