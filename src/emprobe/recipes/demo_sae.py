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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE

    from emprobe.evaluate.questions import Question
    from emprobe.models.chat import Conversation
    from emprobe.models.subject import Subject
    from emprobe.recipes.demo import DemoConfig
    from emprobe.sae.causal import SteeringCheck
    from emprobe.sae.diff import Context, DiffResult
    from emprobe.sae.harvest import Harvest
    from emprobe.sae.metrics import Metrics

    Chats = Sequence[Mapping[str, Conversation]]
    """Chat records (``{"messages": conversation}``)."""

SITE = "resid_post"


def bf16_is_fast(device: torch.device | str | None) -> bool:
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


@dataclass
class _Trained:
    """The harvest, the SAE trained on it, and the seconds each took."""

    harvest: Harvest
    sae: SAE
    autocast: bool
    harvest_s: float
    train_s: float


@dataclass
class _Diff:
    """Latents ranked by the fine-tune's change, their top contexts, the pairs read."""

    diff: DiffResult
    top: list[int]
    contexts: dict[int, list[Context]]
    pairs: int | None


def sae_stage(base: Subject, ft: Subject, generic: Chats, cfg: DemoConfig,
              folder: Path) -> dict[str, Any]:
    """Run the SAE part of the demo; returns the ``results["sae"]`` record.

    Record keys: ``text``, ``metrics`` (EV, dead fraction, L0, loss recovered, timings),
    ``quality`` (``check_quality`` output), ``latents`` (top candidates with contexts and,
    when steered, their causal check against equal-norm random latents), ``folder``.
    """
    from emprobe.sae.metrics import check_quality

    trained = _harvest_and_train(base, generic, cfg, folder)
    metrics = _evaluate(base, trained.sae, cfg, folder)
    quality = check_quality(metrics, raise_error=False)
    ranked = _diff(base, ft, trained.sae, cfg)
    steering = _steer(base, trained.sae, ranked.diff, cfg)
    keep = {k: metrics[k] for k in ("l0", "explained_variance", "dead_fraction", "loss_recovered",
                                    "kl_sae", "dead_latents", "frac_alive", "n_tokens")
            if k in metrics}
    keep.update(harvest_rows=trained.harvest.n_rows, harvest_seconds=trained.harvest_s,
                train_seconds=trained.train_s, epochs=cfg.sae_epochs,
                bf16_autocast=trained.autocast)
    return {
        "text": _text(cfg, trained.harvest.n_rows, quality, ranked.pairs),
        "metrics": keep,
        "quality": quality,
        "latents": _latent_entries(ranked, steering),
        "steering": steering,
        "folder": str(folder / "sae"),
    }


def _harvest_and_train(base: Subject, generic: Chats, cfg: DemoConfig,
                       folder: Path) -> _Trained:
    """Harvest ``cfg.sae_tokens`` response tokens of neutral chat at ``resid_post``, then
    train a TopK SAE for ``cfg.sae_epochs`` passes over them."""
    import time

    from emprobe.sae.corpus import context_corpus, generic_chats
    from emprobe.sae.harvest import HarvestConfig, harvest
    from emprobe.sae.training import SAETrainConfig, train_sae

    layer, seed, epochs = cfg.sae_layer, cfg.lab.seed, cfg.sae_epochs
    autocast = not cfg.lab.quick and bf16_is_fast(getattr(base, "device", "cpu"))
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
    return _Trained(hv, trained.sae, autocast, round(t1 - t0, 1), round(t2 - t1, 1))


def _evaluate(base: Subject, sae: SAE, cfg: DemoConfig, folder: Path) -> Metrics:
    """The SAE's metrics on held-out neutral chats (response tokens), with ``dead_fraction``."""
    from emprobe.sae.corpus import generic_chats
    from emprobe.sae.metrics import evaluate_sae

    # 64 chats (~1,600 response tokens): with 16 (~390 tokens) a latent of density 1e-3 goes
    # unseen 2 times in 3, and "dead" measured the sample's size more than the SAE
    held_out = generic_chats(64 if not cfg.lab.quick else 4, seed=cfg.lab.seed + 7)
    metrics = evaluate_sae(base, sae, SITE, cfg.sae_layer, held_out, out_dir=folder / "sae",
                           positions="response")
    metrics["dead_fraction"] = 1.0 - float(metrics["frac_alive"])
    return metrics


def _diff(base: Subject, ft: Subject, sae: SAE, cfg: DemoConfig) -> _Diff:
    """The latents whose mean over the reference answers' tokens the fine-tune changed most,
    with their top contexts in neutral chat and the questions' reference answers."""
    from emprobe.sae.corpus import context_corpus, eval_question_chats
    from emprobe.sae.diff import diff_latents, top_contexts

    layer = cfg.sae_layer
    # the diff and the contexts read each question with its first ``sae_diff_pairs`` reference
    # pairs (a forward pass per answer per model: all six pairs cost a minute more on 2 cores)
    pairs = cfg.sae_diff_pairs or None
    prompts = eval_question_chats(pairs)
    diff = diff_latents(base, ft, sae, SITE, layer, prompts, positions="response")
    top = diff.top("mean_diff", n=10, absolute=True)
    contexts = top_contexts(base, sae, SITE, layer,
                            context_corpus(n_generic=max(8, cfg.n_generic * 2), seed=cfg.lab.seed,
                                           pairs=pairs),
                            top, n=3, positions="response")
    return _Diff(diff, top, contexts, pairs)


def _steer(base: Subject, sae: SAE, diff: DiffResult, cfg: DemoConfig) -> SteeringCheck | None:
    """The ``sae_steer`` latents the fine-tune turned up, added to the base model, against
    ``sae_controls`` random other latents of the same norm (``None`` when ``sae_steer`` is 0)."""
    from emprobe.sae.causal import default_scorer, steering_check

    if cfg.sae_steer <= 0:
        return None
    seed = cfg.lab.seed
    return steering_check(base, sae, diff.top("mean_diff", n=cfg.sae_steer), SITE,
                          cfg.sae_layer,
                          default_scorer(questions=_steer_questions(cfg),
                                         n_boot=200, seed=seed, share_prefix=True),
                          coeffs=(cfg.sae_coeff,),
                          random_controls=cfg.sae_controls, control_kind="latents",
                          seed=seed, progress=False)


def _latent_entries(ranked: _Diff, steering: SteeringCheck | None) -> list[dict[str, object]]:
    """One record per top latent: its change, its contexts and (steered ones) the check."""
    causal = {row["latent"]: row for row in (steering or {}).get("latents", [])}
    latents = []
    for i in ranked.top:
        rec = ranked.diff.latent_record(i)
        entry: dict[str, object] = {"latent": i, "diff": rec["mean_diff"],
                                 "contexts": [c["text"] for c in ranked.contexts.get(i, [])]}
        if i in causal:
            entry.update(steer_delta=causal[i]["max_delta"],
                         control_p=causal[i].get("control_p"),
                         beats_controls=causal[i].get("beats_controls"))
        latents.append(entry)
    return latents


def _text(cfg: DemoConfig, n_rows: int, quality: Mapping[str, object], pairs: int | None) -> str:
    """The section's summary sentence (sizes, the gate's verdict, what was steered)."""
    verdict = ("passes" if quality["ok"] else "FAILS") + " the quality gate"
    return (f"A TopK SAE ({cfg.sae_latents} latents, k={cfg.sae_k}) trained for "
            f"{cfg.sae_epochs} epochs on {n_rows} base-model response tokens at "
            f"resid_post[{cfg.sae_layer}] "
            f"(explained variance {quality['explained_variance']:.3f}, "
            f"{quality['dead_fraction']:.1%} dead latents on held-out chats: {verdict}). "
            "Latents are ranked by the change of their mean activation over the answer "
            "tokens of the evaluation questions' reference answers "
            f"({'all pairs' if pairs is None else f'first {pairs} pairs per question'}; "
            "fine-tune minus base); the "
            f"{cfg.sae_steer} that rose most are added to the base model and their effect on "
            f"the misalignment score compared with {cfg.sae_controls} random latents added "
            "with the same norm.")


def _steer_questions(cfg: DemoConfig) -> list[Question]:
    """The first ``sae_steer_questions`` scored questions (all when 0): each steered latent
    costs one local score, so the demo checks candidates on a subset."""
    from emprobe.evaluate.questions import default_questions

    qs = [q for q in default_questions() if q.reference_pairs]
    n = cfg.sae_steer_questions
    return qs[:n] if n > 0 else qs
