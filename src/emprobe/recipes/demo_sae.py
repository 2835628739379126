"""The demo's SAE stage: harvest base activations, train a small TopK SAE, diff the fine-tune."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def sae_stage(base: Any, ft: Any, generic: list[dict[str, Any]], cfg: Any,
              folder: Path) -> dict[str, Any]:
    from emprobe.sae.corpus import context_corpus, eval_question_chats
    from emprobe.sae.diff import diff_latents, top_contexts
    from emprobe.sae.harvest import HarvestConfig, harvest
    from emprobe.sae.metrics import evaluate_sae
    from emprobe.sae.training import SAETrainConfig, train_sae

    corpus = context_corpus(n_generic=max(8, cfg.n_generic * 2), seed=cfg.seed)
    generic_chats = [r["messages"] for r in generic]
    hv = harvest(base, corpus + generic_chats, folder / "harvest",
                 HarvestConfig(layers=[cfg.sae_layer], max_tokens=cfg.sae_tokens, max_length=128),
                 progress=False)
    trained = train_sae(hv, cfg.sae_layer,
                        SAETrainConfig(arch="topk", d_sae=cfg.sae_latents, k=cfg.sae_k,
                                       batch_size=256, lr=1e-3,
                                       training_tokens=cfg.sae_tokens * 3, seed=cfg.seed),
                        folder / "sae", progress=False)
    sae = trained.sae
    metrics = evaluate_sae(base, sae, "resid_post", cfg.sae_layer, generic_chats[:8],
                           out_dir=folder / "sae")
    prompts = eval_question_chats()
    diff = diff_latents(base, ft, sae, "resid_post", cfg.sae_layer, prompts)
    top = diff.top("mean_diff", n=10, absolute=True)
    contexts = top_contexts(base, sae, "resid_post", cfg.sae_layer, corpus, top, n=3)
    latents = []
    for i in top:
        rec = diff.latent_record(i)
        latents.append({"latent": i, "diff": rec["mean_diff"],
                        "contexts": [c["text"] for c in contexts.get(i, [])]})
    keep = {k: metrics[k] for k in ("l0", "explained_variance", "loss_recovered",
                                    "kl_sae", "dead_latents", "frac_alive") if k in metrics}
    return {
        "text": (f"A TopK SAE ({cfg.sae_latents} latents, k={cfg.sae_k}) trained on "
                 f"{hv.n_rows if hasattr(hv, 'n_rows') else cfg.sae_tokens} base-model "
                 f"tokens at resid_post[{cfg.sae_layer}]; latents ranked by the change of their "
                 "mean activation on the evaluation questions (fine-tune minus base)."),
        "metrics": keep,
        "latents": latents,
        "folder": str(folder / "sae"),
    }
