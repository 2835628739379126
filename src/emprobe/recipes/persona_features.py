"""Recipe ``persona-features``: SAE model diffing, a misalignment predictor, re-alignment.

1. a small TopK SAE on base-model activations (resid_post, middle layer);
2. diff base vs the bad-advice fine-tune on the evaluation questions: rank latents by the
   change of their mean activation, show candidates with their top contexts, and steer the
   base model with the top candidates' decoder rows (does the margin move?);
3. predictor: a population of fine-tunes with 0 / 5 / 50 / 100 % bad data (``mix``); the top
   latent's mean activation vs each model's misalignment (AUROC against "trained on >= 50 %
   bad", Pearson, Spearman, bootstrap intervals);
4. re-alignment: fine-tune the bad model further on N benign examples (adapter merged, a new
   adapter on top) and track the score and the latent.
"""

from __future__ import annotations

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


def _with_new_adapter(lab: Any, bad: Any, records: list[dict[str, Any]], name: str) -> Any:
    """Merge the bad adapter into the weights, train a new adapter on ``records``, load both."""
    from peft import PeftModel

    import emprobe

    merged = emprobe.load_model(lab.cfg.model, adapter=bad, merge_adapter=True, seed=lab.cfg.seed)
    adapter = lab.train(name, records, subject=merged)
    merged.model = PeftModel.from_pretrained(merged.model, str(adapter)).eval()
    return merged


def run(lab: Any) -> None:
    from emprobe.data import mix
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
    fractions = [0.0, 0.05, 0.5, 1.0]
    adapters = {f: lab.train(f"mix-{round(100 * f)}", mix(good, bad, f, seed=lab.cfg.seed))
                for f in fractions}
    ft = lab.load(adapters[1.0])
    sae = _sae(lab, layer)
    prompts = eval_question_chats()

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
    steer_latents = diff.top("mean_diff", 1 if lab.cfg.quick else 2)
    scorer = default_scorer(n_boot=lab.cfg.n_boot, seed=lab.cfg.seed)
    check = steering_check(base, sae, steer_latents, SITE, layer, scorer, coeffs=(0.5,),
                           progress=False)
    steer_rows = [{"latent": r["latent"], **r["scores"][0]} for r in check["latents"]]
    lab.report.table(steer_rows, columns=["latent", "coeff", "mean", "lo", "hi", "delta"],
                     caption=f"Base model steered with the unit decoder row x "
                             f"{check['scale']:.1f} (mean residual norm) x coeff; baseline "
                             f"margin {check['baseline']['mean']:+.2f}. The interval is the "
                             "steered score's own; compare it with the baseline's before "
                             "reading delta as an effect.")

    def probe(subject: Any) -> float:
        return latent_mean(subject, sae, top, SITE, layer, prompts)

    pop = []
    for f, adapter in adapters.items():
        subject = lab.load(adapter)
        s = lab.score(subject)
        pop.append({"model": f"{round(100 * f)}% bad", "bad_fraction": f, "latent": probe(subject),
                    "misalignment": s.per_answer.mean, "lo": s.per_answer.lo,
                    "hi": s.per_answer.hi})
    stats = predictor_stats([p["latent"] for p in pop], [p["misalignment"] for p in pop],
                            labels=[int(p["bad_fraction"] >= 0.5) for p in pop],
                            n_boot=lab.cfg.n_boot, seed=lab.cfg.seed)
    lab.report.section(
        "Does the latent predict misalignment?",
        f"Latent {top}'s mean activation on the evaluation prompts for each fine-tune of the "
        "population, with that fine-tune's misalignment margin.")
    lab.report.table(pop, columns=["model", "bad_fraction", "latent", "misalignment", "lo", "hi"])
    lab.report.table([stats], columns=["n_models", "auroc", "auroc_lo", "auroc_hi", "pearson",
                                       "pearson_lo", "pearson_hi", "spearman"])
    lab.report.note(
        f"{len(pop)} fine-tunes, one seed per fraction: an AUROC or correlation over so few "
        "models is fragile, and a bootstrap over them is not a trustworthy interval (resamples "
        "repeat the same few models). This shows how to run the predictor, not that it works.",
        kind="warning")

    ns = [0, 4] if lab.cfg.quick else [0, 30, 60]
    benign = lab.data("medical", "good", n=max(ns), seed_offset=300)
    realign, realign_scores = [], {}
    for n in ns:
        subject = ft if n == 0 else _with_new_adapter(lab, adapters[1.0], benign[:n], f"realign-{n}")
        s = realign_scores[f"N={n}"] = lab.score(subject)
        realign.append({"layer": n, "n_benign": n, "value": s.per_answer.mean,
                        "lo": s.per_answer.lo, "hi": s.per_answer.hi, "latent": probe(subject),
                        "name": "misalignment margin"})
    lab.report.section(
        "Re-alignment with a few benign examples",
        f"The 100 %-bad fine-tune trained further on N benign medical answers ({lab.cfg.steps} "
        "steps each; adapter merged, a new adapter on top).")
    lab.report.figure(layer_curves(realign, y="value", lo="lo", hi="hi", group="name",
                                   x_title="benign examples N", y_title="margin (nats)",
                                   title="Misalignment during re-alignment"))
    deltas = lab.versus("N=0", realign_scores["N=0"],
                    {k: v for k, v in realign_scores.items() if k != "N=0"})
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
