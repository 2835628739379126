"""Capture speed: early exit at the middle layer vs full forwards, TransformerLens and nnsight.

All variants run on the same batch of the embedded model, interleaved in rounds so
that machine noise hits them alike; tokens/s is the median over rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

TEXTS = [
    "The lighthouse keeper counted the ships that passed each night and wrote them in a ledger.",
    "A good recipe for bread needs flour, water, salt, yeast and a great deal of patience.",
    "When the committee met again, nobody remembered who had proposed the original plan.",
    "Rivers carry sediment downstream, building deltas where they finally meet the sea.",
] * 2


def _time(fn: Callable[[], object], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run(quick: bool = False) -> list[dict]:
    import emprobe
    from emprobe.hooks.bridges import to_nnsight, to_transformer_lens

    torch.manual_seed(0)
    subject = emprobe.load_model("smollm2-135m-instruct")
    layer = subject.n_layers // 2
    batch = subject.encode_texts(TEXTS)
    n_tokens = int(batch.attention_mask.sum())
    model = subject.model
    inner = model.model
    rounds = 3 if quick else 7

    @torch.no_grad()
    def full_hidden_states() -> torch.Tensor:
        return model(**{"input_ids": batch.input_ids, "attention_mask": batch.attention_mask},
                     output_hidden_states=True).hidden_states[layer + 1]

    @torch.no_grad()
    def early_exit() -> torch.Tensor:
        with emprobe.capture(subject, layers=layer, early_exit=True) as cache:
            subject.forward(batch)
        return cache["resid_post", layer]

    @torch.no_grad()
    def bare_truncated() -> torch.Tensor:
        # the same blocks with no hooks at all: the floor any capture can reach
        full = inner.layers
        inner.layers = full[: layer + 1]
        try:
            return inner(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        finally:
            inner.layers = full

    tl = to_transformer_lens(subject)
    from emprobe.hooks import tl_hook_name

    hook = tl_hook_name("resid_post", layer)

    @torch.no_grad()
    def tl_cache() -> torch.Tensor:
        _, cache = tl.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask,
                                     names_filter=lambda n: n == hook)
        return cache[hook]

    nn_model = to_nnsight(subject)

    @torch.no_grad()
    def nnsight_trace() -> torch.Tensor:
        with nn_model.trace({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}):
            saved = nn_model.model.layers[layer].output.save()
        return saved

    variants = {
        "early_exit": early_exit,
        "full_hidden_states": full_hidden_states,
        "bare_truncated": bare_truncated,
        "transformer_lens": tl_cache,
        "nnsight": nnsight_trace,
    }
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].extend(_time(fn, 1))
    tps = {k: n_tokens / statistics.median(v) for k, v in times.items()}
    details = {f"{k} tokens/s": round(v, 1) for k, v in tps.items()}
    details["tokens per batch"] = n_tokens
    details["layer"] = f"resid_post[{layer}] of {subject.n_layers}"
    return [
        {
            "name": "capture: early exit vs full forward (hidden_states)",
            "ratio": tps["early_exit"] / tps["full_hidden_states"],
            "goal": ">= 1.8x",
            "details": details,
        },
        {
            "name": "capture: early exit vs bare truncated forward",
            "ratio": tps["early_exit"] / tps["bare_truncated"],
            "goal": ">= 0.9x (overhead within 10 %)",
            "details": {},
        },
        {
            "name": "capture: early exit vs TransformerLens run_with_cache",
            "ratio": tps["early_exit"] / tps["transformer_lens"],
            "goal": "> 1x",
            "details": {},
        },
        {
            "name": "capture: early exit vs nnsight trace",
            "ratio": tps["early_exit"] / tps["nnsight"],
            "goal": "> 1x",
            "details": {},
        },
    ]
