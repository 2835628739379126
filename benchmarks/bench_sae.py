"""End-to-end SAE training (harvest + train) on the embedded model: emprobe vs SAELens' runner.

Both sides train the same TopK SAE (same width, k, learning rate, batch size and token
budget) on the same texts (emprobe's own generic chat corpus rendered as plain text) at
the same site (``resid_post`` of the middle block = the HF decoder layer's output):

- emprobe: ``emprobe.sae.harvest`` (one early-exit pass, streamed to shards) then
  ``emprobe.sae.train_sae`` (SAELens' ``SAETrainer`` over the shards);
- SAELens: ``LanguageModelSAETrainingRunner`` with ``model_class_name="AutoModelForCausalLM"``
  (its ``HookedProxyLM`` around the same HF model, hook ``model.layers.{l}``, early stop
  at that layer) and an in-memory ``datasets.Dataset`` of the same texts (offline).

Each side runs in its own spawned process so its peak RSS (``ru_maxrss``) is its own;
model loading is excluded from the timed section on both sides. ``ratio`` is emprobe's
tokens/s over SAELens' (> 1: emprobe is faster).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import tempfile
import time
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


def _emprobe_side(tokens: int, threads: int, queue: Any) -> None:
    import torch

    torch.set_num_threads(threads)
    from emprobe import load_model
    from emprobe.sae import HarvestConfig, SAETrainConfig, harvest, train_sae

    subject = load_model("smollm2-135m-instruct")
    layer = subject.n_layers // 2
    texts = _texts(max(64, tokens // 12))
    rss_before = _peak_mb()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        hv = harvest(subject, texts, f"{tmp}/h",
                     HarvestConfig(layers=[layer], positions="all", max_tokens=tokens,
                                   batch_size=32, max_length=CONTEXT, rows_per_shard=4096,
                                   skip_first=False),
                     progress=False)
        t1 = time.perf_counter()
        tr = train_sae(hv, layer, SAETrainConfig(arch="topk", k=K, expansion=D_SAE_EXPANSION,
                                                 lr=LR, batch_size=BATCH, training_tokens=tokens,
                                                 normalize_activations="none"),
                       f"{tmp}/sae", progress=False)
        t2 = time.perf_counter()
    queue.put({"seconds": t2 - t0, "harvest_s": t1 - t0, "train_s": t2 - t1,
               "trained_tokens": tr.record["trained_tokens"], "harvested_tokens": hv.n_rows,
               "peak_rss_mb": _peak_mb(), "rss_after_load_mb": rss_before})


def _saelens_side(tokens: int, threads: int, queue: Any) -> None:
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
                         str(subject.path), hook, tokens)
    rss_before = _peak_mb()
    t0 = time.perf_counter()
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=ds, override_model=model)
    runner.run()
    t1 = time.perf_counter()
    queue.put({"seconds": t1 - t0, "trained_tokens": tokens, "peak_rss_mb": _peak_mb(),
               "rss_after_load_mb": rss_before})


def _runner_config(cfg_cls: Any, sae_cls: Any, d: int, path: str, hook: str, tokens: int) -> Any:
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
        logger=LoggingConfig(log_to_wandb=False),
        output_path=None,
    )


def _spawn(fn: Any, tokens: int, threads: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=fn, args=(tokens, threads, queue))
    proc.start()
    try:
        result = queue.get(timeout=1800)
    finally:
        proc.join(timeout=60)
    if proc.exitcode not in (0, None):
        raise RuntimeError(f"{fn.__name__} exited with {proc.exitcode}")
    return result


def run(quick: bool = False) -> list[dict]:
    tokens = 4096 if quick else 16384
    threads = int(os.environ.get("EMPROBE_BENCH_THREADS", "2"))
    ours = _spawn(_emprobe_side, tokens, threads)
    theirs = _spawn(_saelens_side, tokens, threads)
    ours_tps = ours["trained_tokens"] / ours["seconds"]
    theirs_tps = theirs["trained_tokens"] / theirs["seconds"]
    return [{
        "name": "sae: harvest+train TopK tokens/s vs SAELens runner",
        "ratio": ours_tps / theirs_tps,
        "goal": ">= 1 (at least as fast as LanguageModelSAETrainingRunner)",
        "details": {
            "tokens": tokens,
            "threads": threads,
            "emprobe_tokens_per_s": round(ours_tps, 1),
            "saelens_tokens_per_s": round(theirs_tps, 1),
            "emprobe_harvest_s": round(ours["harvest_s"], 2),
            "emprobe_train_s": round(ours["train_s"], 2),
            "saelens_total_s": round(theirs["seconds"], 2),
            "emprobe_peak_rss_mb": round(ours["peak_rss_mb"], 1),
            "saelens_peak_rss_mb": round(theirs["peak_rss_mb"], 1),
            "emprobe_rss_after_model_load_mb": round(ours["rss_after_load_mb"], 1),
            "saelens_rss_after_model_load_mb": round(theirs["rss_after_load_mb"], 1),
        },
    }]
