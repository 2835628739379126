"""The demo's SAE stage: harvest base activations, train a TopK SAE, gate it, diff the fine-tune.

Reads these ``DemoConfig`` fields:

- ``sae_layer``, ``sae_tokens`` (harvest budget, response tokens), ``sae_latents``,
  ``sae_k``, ``n_generic``, ``lab.seed``, ``lab.quick``;
- ``sae_epochs``: passes over the harvest during training;
- ``sae_diff_pairs`` (0 = all): reference pairs per question read by the diff and the top
  contexts;
- ``sae_steer``: the candidates whose mean rose most, added to the base model;
  ``sae_controls``: random other latents steered with the same norm as controls;
  ``sae_coeff``: the steering coefficient; ``sae_steer_questions`` (0 = all): the scored
  questions. Each steered direction costs one local score.

The harvest (and the SAE's training step) run under bf16 autocast only where bf16 is fast
(``bf16_is_fast``: CUDA, or a CPU whose oneDNN has bf16 kernels, i.e. AVX-512 / AMX). On an
AVX2-only CPU autocast converts every matmul and ran about 9x slower than float32 (measured:
one 3840 x 576 x 1536 linear layer, 2.16 s vs 0.24 s; the embedded model's forward over
543 tokens, about 130 s vs 20 s; both on this project's AVX2 machine under load), the
likely cause of a fresh-machine SAE stage of 720 s against the README's 145 s.

The harvest reads neutral chat only (``generic_chats``): never the evaluation questions or
their reference answers, which the diff then reads as a measurement.

The SAE is trained on response (assistant) tokens, so the harvest holds no copies of the
chat template's fixed system prompt, and the diff ranks latents over the same kind of
token. ``check_quality`` marks the result; the demo decides whether to stop on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emprobe.recipes.demo import DemoConfig

SITE = "resid_post"


def bf16_is_fast(device: Any) -> bool:
    """Whether bf16 autocast speeds up (rather than emulates) matmuls on ``device``."""
    import torch

    kind = torch.device(device).type if device is not None else "cpu"
    if kind == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch without oneDNN
        return False


def sae_stage(base: Any, ft: Any, generic: list[dict[str, Any]], cfg: DemoConfig,
              folder: Path) -> dict[str, Any]:
    """Run the SAE part of the demo; returns the ``results["sae"]`` record.

    Record keys: ``text``, ``metrics`` (EV, dead fraction, L0, loss recovered, timings),
    ``quality`` (``check_quality`` output), ``latents`` (top candidates with contexts and,
    when steered, their causal check against equal-norm random latents), ``folder``.
    """
    import time

    from emprobe.sae.causal import default_scorer, steering_check
    from emprobe.sae.corpus import context_corpus, eval_question_chats, generic_chats
    from emprobe.sae.diff import diff_latents, top_contexts
    from emprobe.sae.harvest import HarvestConfig, harvest
    from emprobe.sae.metrics import check_quality, evaluate_sae
    from emprobe.sae.training import SAETrainConfig, train_sae

    layer, seed = cfg.sae_layer, cfg.lab.seed
    quick = cfg.lab.quick
    epochs = cfg.sae_epochs
    n_steer = cfg.sae_steer
    n_controls = cfg.sae_controls
    coeff = cfg.sae_coeff
    autocast = not quick and bf16_is_fast(getattr(base, "device", "cpu"))

    corpus = context_corpus(n_generic=max(8, cfg.n_generic * 2), seed=seed)  # no eval answers
    demo_chats = [r["messages"] for r in generic]
    # generic answers are ~20 response tokens: enough of them to fill the budget
    filler = generic_chats(max(64, cfg.sae_tokens // 12), seed=seed + 1)
    t0 = time.perf_counter()
    hv = harvest(base, corpus + demo_chats + filler, folder / "harvest",
                 HarvestConfig(layers=[layer], positions="response", max_tokens=cfg.sae_tokens,
                               max_length=256, autocast=autocast),
                 progress=False)
    t1 = time.perf_counter()
    batch_size = 256 if hv.n_rows >= 4096 else 64
    train_cfg = SAETrainConfig(
        arch="topk", d_sae=cfg.sae_latents, k=cfg.sae_k, batch_size=batch_size, lr=2e-3,
        lr_decay_fraction=0.3, training_tokens=epochs * hv.n_rows,
        # a latent silent for ~10 % of training is dead: the aux-k loss then revives it
        dead_feature_window=max(10, epochs * hv.n_rows // batch_size // 10),
        autocast=autocast, seed=seed)
    trained = train_sae(hv, layer, train_cfg, folder / "sae", progress=False)
    t2 = time.perf_counter()
    sae = trained.sae
    held_out = generic_chats(16 if not quick else 4, seed=seed + 7)
    metrics = evaluate_sae(base, sae, SITE, layer, held_out, out_dir=folder / "sae",
                           positions="response")
    metrics["dead_fraction"] = 1.0 - float(metrics["frac_alive"])
    quality = check_quality(metrics, raise_error=False)

    # the diff and the contexts read each question with its first ``sae_diff_pairs`` reference
    # pairs (a forward pass per answer per model: all six pairs cost a minute more on 2 cores)
    pairs = cfg.sae_diff_pairs or None
    prompts = eval_question_chats(pairs)
    diff = diff_latents(base, ft, sae, SITE, layer, prompts, positions="response")
    top = diff.top("mean_diff", n=10, absolute=True)
    contexts = top_contexts(base, sae, SITE, layer,
                            context_corpus(n_generic=max(8, cfg.n_generic * 2), seed=seed,
                                           pairs=pairs),
                            top, n=3, positions="response")
    steering = None
    if n_steer > 0:  # the latents the fine-tune turned up, added to the base model
        steering = steering_check(base, sae, diff.top("mean_diff", n=n_steer), SITE, layer,
                                  default_scorer(questions=_steer_questions(cfg),
                                                 n_boot=200, seed=seed, share_prefix=True),
                                  coeffs=(coeff,),
                                  random_controls=n_controls, control_kind="latents",
                                  seed=seed, progress=False)
    causal = {row["latent"]: row for row in (steering or {}).get("latents", [])}
    latents = []
    for i in top:
        rec = diff.latent_record(i)
        entry: dict[str, Any] = {"latent": i, "diff": rec["mean_diff"],
                                 "contexts": [c["text"] for c in contexts.get(i, [])]}
        if i in causal:
            entry.update(steer_delta=causal[i]["max_delta"],
                         control_p=causal[i].get("control_p"),
                         beats_controls=causal[i].get("beats_controls"))
        latents.append(entry)
    keep = {k: metrics[k] for k in ("l0", "explained_variance", "dead_fraction", "loss_recovered",
                                    "kl_sae", "dead_latents", "frac_alive", "n_tokens")
            if k in metrics}
    keep.update(harvest_rows=hv.n_rows, harvest_seconds=round(t1 - t0, 1),
                train_seconds=round(t2 - t1, 1), epochs=epochs, bf16_autocast=autocast)
    verdict = ("passes" if quality["ok"] else "FAILS") + " the quality gate"
    return {
        "text": (f"A TopK SAE ({cfg.sae_latents} latents, k={cfg.sae_k}) trained for {epochs} "
                 f"epochs on {hv.n_rows} base-model response tokens at resid_post[{layer}] "
                 f"(explained variance {quality['explained_variance']:.3f}, "
                 f"{quality['dead_fraction']:.1%} dead latents on held-out chats: {verdict}). "
                 "Latents are ranked by the change of their mean activation over the answer "
                 "tokens of the evaluation questions' reference answers "
                 f"({'all pairs' if pairs is None else f'first {pairs} pairs per question'}; "
                 "fine-tune minus base); the "
                 f"{n_steer} that rose most are added to the base model and their effect on "
                 f"the misalignment score compared with {n_controls} random latents added "
                 "with the same norm."),
        "metrics": keep,
        "quality": quality,
        "latents": latents,
        "steering": steering,
        "folder": str(folder / "sae"),
    }


def _steer_questions(cfg: DemoConfig) -> Any:
    """The first ``sae_steer_questions`` scored questions (all when 0): each steered latent
    costs one local score, so the demo checks candidates on a subset."""
    from emprobe.evaluate.questions import default_questions

    qs = [q for q in default_questions() if q.reference_pairs]
    n = cfg.sae_steer_questions
    return qs[:n] if n > 0 else qs
