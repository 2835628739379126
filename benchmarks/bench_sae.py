"""End-to-end SAE training (harvest + train) on the embedded model: emprobe vs SAELens' runner.

Both sides train the same TopK SAE (same width, k, learning rate, batch size and token
budget) on the same texts (emprobe's own generic chat corpus rendered as plain text) at
the same site (``resid_post`` of the middle block = the HF decoder layer's output):

- emprobe: ``emprobe.sae.harvest`` (one early-exit pass over length-bucketed batches,
  bf16 shards written on a background thread, rows kept in RAM) then
  ``emprobe.sae.train_sae`` (SAELens' ``SAETrainer`` fed from those in-memory rows);
- SAELens: ``LanguageModelSAETrainingRunner`` with ``model_class_name="AutoModelForCausalLM"``
  (its ``HookedProxyLM`` around the same HF model, hook ``model.layers.{l}``, early stop
  at that layer) and an in-memory ``datasets.Dataset`` of the same texts (offline).

Each side runs in its own spawned process so its peak RSS (``ru_maxrss``) is its own;
model loading is excluded from the timed section on both sides. ``ratio`` is emprobe's
tokens/s over SAELens' (> 1: emprobe is faster). Both sides use float32 for the model and
the SAE; with ``precision="bf16"`` both run the model and the SAE step under bf16 autocast
(emprobe: ``HarvestConfig.autocast`` / ``SAETrainConfig.autocast``; SAELens: ``autocast_lm``
/ ``autocast``). The emprobe side also times the bare early-exit forward on the same batches
(no capture, no copies, no writes) to report the harvest's fraction of the forward limit.

Sizes: 16,384 tokens by default (part of ``make bench``); ``--only sae`` adds 262,144
(about 15 min on a quiet 2-core machine); ``--sae-tokens`` picks any list.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import tempfile
import time
from collections.abc import Sequence
from typing import Any

D_SAE_EXPANSION = 8
K = 32
LR = 1e-3
BATCH = 256
CONTEXT = 128


def _texts(n: int) -> list[str]:
    from emprobe.sae.corpus import generic_chats

    return [f"{c[0]['content']} {c[1]['content']}" for c in generic_chats(n, seed=0)]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _bare_forward_tps(subject: Any, texts: list[str], cfg: Any, tokens: int) -> float:
    """Tokens/s of the early-exit forward alone over the harvest's own batches."""
    import torch

    from emprobe.hooks.capture import capture
    from emprobe.models.context import use_batch
    from emprobe.sae.harvest import _batches

    def encode(chunk: Any) -> Any:
        return subject.encode_texts(list(chunk), max_length=cfg.max_length)

    batches = []
    n = 0
    for batch in _batches(encode, texts, cfg.batch_size, cfg.bucket):
        batches.append(batch)
        n += int(batch.attention_mask.sum())
        if n >= tokens:
            break
    t0 = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            with use_batch(batch), capture(subject, cfg.layers, early_exit=True):
                subject.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return n / (time.perf_counter() - t0)


def _emprobe_side(tokens: int, threads: int, bf16: bool, queue: Any) -> None:
    import torch

    torch.set_num_threads(threads)
    from emprobe import load_model
    from emprobe.sae import HarvestConfig, SAETrainConfig, harvest, train_sae

    subject = load_model("smollm2-135m-instruct")
    layer = subject.n_layers // 2
    texts = _texts(max(64, tokens // 12))
    cfg = HarvestConfig(layers=[layer], positions="all", max_tokens=tokens, batch_size=32,
                        max_length=CONTEXT, skip_first=False, autocast=bf16)
    forward_tps = _bare_forward_tps(subject, texts, cfg, min(tokens, 8192))
    rss_before = _peak_mb()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        hv = harvest(subject, texts, f"{tmp}/h", cfg, progress=False)
        t1 = time.perf_counter()
        tr = train_sae(hv, layer, SAETrainConfig(arch="topk", k=K, expansion=D_SAE_EXPANSION,
                                                 lr=LR, batch_size=BATCH, training_tokens=tokens,
                                                 normalize_activations="none", autocast=bf16),
                       f"{tmp}/sae", progress=False)
        t2 = time.perf_counter()
    queue.put({"seconds": t2 - t0, "harvest_s": t1 - t0, "train_s": t2 - t1,
               "trained_tokens": tr.record["trained_tokens"], "harvested_tokens": hv.n_rows,
               "data_source": tr.record["data_source"], "forward_tps": forward_tps,
               "peak_rss_mb": _peak_mb(), "rss_after_load_mb": rss_before})


def _saelens_side(tokens: int, threads: int, bf16: bool, queue: Any) -> None:
    import logging

    import torch

    torch.set_num_threads(threads)
    logging.getLogger("sae_lens").setLevel(logging.ERROR)
    import datasets
    from sae_lens import (
        LanguageModelSAERunnerConfig,
        LanguageModelSAETrainingRunner,
        TopKTrainingSAEConfig,
    )
    from sae_lens.load_model import HookedProxyLM

    from emprobe import load_model

    subject = load_model("smollm2-135m-instruct")
    layer = subject.n_layers // 2
    hook = f"model.layers.{layer}"
    d = subject.d_model
    model = HookedProxyLM(subject.model, subject.tokenizer, hook_names=[hook])
    ds = datasets.Dataset.from_dict({"text": _texts(max(64, tokens // 12))})
    cfg = _runner_config(LanguageModelSAERunnerConfig, TopKTrainingSAEConfig, d,
                         str(subject.path), hook, tokens, bf16)
    rss_before = _peak_mb()
    t0 = time.perf_counter()
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=ds, override_model=model)
    runner.run()
    t1 = time.perf_counter()
    queue.put({"seconds": t1 - t0, "trained_tokens": tokens, "peak_rss_mb": _peak_mb(),
               "rss_after_load_mb": rss_before})


def _runner_config(cfg_cls: Any, sae_cls: Any, d: int, path: str, hook: str, tokens: int,
                   bf16: bool) -> Any:
    from sae_lens import LoggingConfig

    return cfg_cls(
        sae=sae_cls(d_in=d, d_sae=D_SAE_EXPANSION * d, k=K),
        model_name=path,
        model_class_name="AutoModelForCausalLM",
        hook_name=hook,
        dataset_path="in-memory",
        is_dataset_tokenized=False,
        streaming=False,
        context_size=CONTEXT,
        prepend_bos=False,
        training_tokens=tokens,
        train_batch_size_tokens=BATCH,
        store_batch_size_prompts=16,
        n_batches_in_buffer=4,
        lr=LR,
        device="cpu",
        dtype="float32",
        autocast=bf16,
        autocast_lm=bf16,
        logger=LoggingConfig(log_to_wandb=False),
        output_path=None,
    )


def _spawn(fn: Any, tokens: int, threads: int, bf16: bool) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=fn, args=(tokens, threads, bf16, queue))
    proc.start()
    try:
        result = queue.get(timeout=1800)
    finally:
        proc.join(timeout=60)
    if proc.exitcode not in (0, None):
        raise RuntimeError(f"{fn.__name__} exited with {proc.exitcode}")
    return result


def run(quick: bool = False, sizes: Sequence[int] | None = None,
        precision: str = "fp32") -> list[dict]:
    """One result per token budget in ``sizes`` (default 16,384; quick: 4,096)."""
    if sizes is None:
        sizes = (4096,) if quick else (16384,)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision {precision!r}: use fp32 or bf16")
    bf16 = precision == "bf16"
    threads = int(os.environ.get("EMPROBE_BENCH_THREADS", "2"))
    results = []
    for tokens in sizes:
        ours = _spawn(_emprobe_side, tokens, threads, bf16)
        theirs = _spawn(_saelens_side, tokens, threads, bf16)
        ours_tps = ours["trained_tokens"] / ours["seconds"]
        theirs_tps = theirs["trained_tokens"] / theirs["seconds"]
        harvest_tps = ours["harvested_tokens"] / ours["harvest_s"]
        results.append({
            "name": f"sae: harvest+train TopK vs SAELens runner, {tokens} tokens, {precision}",
            "ratio": ours_tps / theirs_tps,
            "goal": ">= 1.5 with peak RSS no higher",
            "details": {
                "tokens": tokens,
                "threads": threads,
                "emprobe_tokens_per_s": round(ours_tps, 1),
                "saelens_tokens_per_s": round(theirs_tps, 1),
                "emprobe_harvest_s": round(ours["harvest_s"], 2),
                "emprobe_train_s": round(ours["train_s"], 2),
                "emprobe_train_data": ours["data_source"],
                "saelens_total_s": round(theirs["seconds"], 2),
                "harvest_tokens_per_s": round(harvest_tps, 1),
                "bare_forward_tokens_per_s": round(ours["forward_tps"], 1),
                "harvest_over_bare_forward": round(harvest_tps / ours["forward_tps"], 3),
                "emprobe_peak_rss_mb": round(ours["peak_rss_mb"], 1),
                "saelens_peak_rss_mb": round(theirs["peak_rss_mb"], 1),
                "peak_rss_ratio": round(ours["peak_rss_mb"] / theirs["peak_rss_mb"], 3),
                "emprobe_rss_after_model_load_mb": round(ours["rss_after_load_mb"], 1),
                "saelens_rss_after_model_load_mb": round(theirs["rss_after_load_mb"], 1),
            },
        })
    return results
