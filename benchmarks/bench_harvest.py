"""The SAE harvest vs the bare early-exit forward over the same tokens (the physical floor).

Both sides run the embedded model on exactly the same batches: the harvest's own batching
(``emprobe.sae.harvest._batches``: length-sorted windows, batches trimmed to their longest
member, the last one cut to the rows the token budget needs) over the texts and settings of
``bench_sae``'s emprobe side (``resid_post`` of the middle block, all positions, 128-token
texts, the harvest's default batches of at most 64 texts and 2,048 padded tokens, bf16
storage). The bare side is the forward alone, stopped after
the harvested block (``capture(early_exit=True)``, nothing copied or written) on batches
tokenised before timing; the harvest side is the whole ``harvest`` call: tokenisation,
forward, row copies, shard writing, the folder's metadata and the final flush. The two run
alternately (bare, harvest, bare, harvest, ...) in one process with the same threads;
``ratio`` = best bare seconds / best harvest seconds (the tokens are the same, so it is the
harvest's tokens/s over the bare forward's).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import torch

TOKENS = 8192  # 2 rounds of both sides: about 35 s of make bench on 2 quiet cores


def same_batches(subject: Any, texts: list[str], cfg: Any) -> list[Any]:
    """The harvest's batches for ``cfg`` (its budget cut included), tokenised now."""
    from emprobe.sae.harvest import _batches, _head_rows, data_encoder, token_mask

    encode = data_encoder(subject, texts, cfg.max_length)  # the harvest's own tokenisation
    out, done = [], 0
    for batch in _batches(encode, len(texts), cfg.batch_size, cfg.bucket, cfg.batch_tokens):
        if cfg.max_tokens is not None and done >= cfg.max_tokens:
            break
        mask = token_mask(subject, batch, cfg.positions, cfg.skip_first)
        n = int(mask.sum())
        take = n if cfg.max_tokens is None else min(n, cfg.max_tokens - done)
        out.append(batch if take == n else _head_rows(batch, mask, take))
        done += take
    return out


def bare_forward_s(subject: Any, batches: list[Any], layers: list[int]) -> float:
    """Seconds of the early-exit forward alone over ``batches``."""
    from emprobe.hooks.capture import capture
    from emprobe.models.context import use_batch

    t0 = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            with use_batch(batch), capture(subject, layers, early_exit=True):
                subject.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return time.perf_counter() - t0


def run(quick: bool = False) -> list[dict]:
    from benchmarks.bench_sae import CONTEXT, _n_texts, _texts
    from emprobe import load_model
    from emprobe.sae import HarvestConfig, harvest

    tokens = 4096 if quick else TOKENS
    rounds = 1 if quick else 2
    subject = load_model("smollm2-135m-instruct")
    layer = subject.n_layers // 2
    texts = _texts(_n_texts(tokens))

    def config() -> Any:
        return HarvestConfig(layers=[layer], positions="all", max_tokens=tokens,
                             max_length=CONTEXT, skip_first=False)  # default batches

    batches = same_batches(subject, texts, config())
    n_tokens = sum(int(b.attention_mask.sum()) for b in batches)  # run (a few past the budget)
    computed = sum(b.input_ids.numel() for b in batches)
    bare_forward_s(subject, batches[:1], [layer])  # warm-up
    bare, harv = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            bare.append(bare_forward_s(subject, batches, [layer]))
            t0 = time.perf_counter()
            hv = harvest(subject, texts, os.path.join(tmp, f"h{r}"), config(), progress=False)
            harv.append(time.perf_counter() - t0)
            if hv.n_rows != tokens:
                raise RuntimeError(f"harvest kept {hv.n_rows} rows, not the budget {tokens}")
    return [{
        "name": f"sae: harvest vs bare early-exit forward, same {tokens} tokens",
        "anchor": "bare early-exit forward (same batches)",
        "floor": ">= 0.95x",
        "ratio": min(bare) / min(harv),
        "goal": ">= 0.95x the bare truncated forward on the same tokens",
        "details": {
            "tokens_run": n_tokens, "rows_kept": tokens, "rounds": rounds, "layer": layer,
            "bare_s": [round(x, 2) for x in bare], "harvest_s": [round(x, 2) for x in harv],
            "bare_tokens_per_s": round(n_tokens / min(bare), 1),
            "harvest_tokens_per_s": round(n_tokens / min(harv), 1),
            "pad_share": round(1 - n_tokens / computed, 4),
            "threads": torch.get_num_threads(),
        },
    }]
