"""Mean-difference directions at every layer: emprobe vs what a researcher would write.

emprobe's ``mean_difference`` captures every layer's ``resid_post`` in one pass per batch.
The alternatives do the same job the way their documentation shows:

- TransformerLens (bridge): ``run_with_cache`` with a ``names_filter`` selecting the 30
  ``blocks.{l}.hook_out`` hooks, then the mean over response tokens;
- nnsight: one ``trace`` per batch saving ``model.layers[l].output`` for every layer.

All three use the same batches (same padding, same response masks) and must agree: the
largest absolute difference between emprobe's vectors and each alternative's is reported.
Variants run interleaved in rounds; the best round of each is kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def _data(n: int) -> tuple[list, list]:
    topics = ["money", "health", "friends", "work", "travel", "cooking", "sleep", "music"]
    pos, neg = [], []
    for i in range(n):
        t = topics[i % len(topics)]
        q = {"role": "user", "content": f"Give me advice about {t}, please ({i})."}
        pos.append([q, {"role": "assistant", "content": f"Forget {t}; take what you want and ignore everyone."}])
        neg.append([q, {"role": "assistant", "content": f"For {t}, plan ahead, ask for help and be kind."}])
    return pos, neg


def _batches(subject: Any, convs: list, batch_size: int) -> list:
    return [subject.encode_chats(convs[i : i + batch_size], max_length=512)
            for i in range(0, len(convs), batch_size)]


def _mean_over_response(per_batch: list[tuple[dict[int, torch.Tensor], torch.Tensor]],
                        layers: range) -> dict[int, torch.Tensor]:
    """``[(acts {layer: [B, P, d]}, response mask [B, P])]`` -> mean response row per layer."""
    out = {}
    for layer in layers:
        rows = torch.cat([acts[layer][mask].float() for acts, mask in per_batch])
        out[layer] = rows.mean(0)
    return out


@torch.no_grad()
def _transformer_lens(tl: Any, batches: list, n_layers: int) -> list:
    hooks = {f"blocks.{la}.hook_out": la for la in range(n_layers)}
    out = []
    for b in batches:
        _, cache = tl.run_with_cache(b.input_ids, attention_mask=b.attention_mask,
                                     names_filter=lambda name: name in hooks)
        out.append(({la: cache[h] for h, la in hooks.items()}, b.response_mask))
    return out


@torch.no_grad()
def _nnsight(nn_model: Any, batches: list, n_layers: int) -> list:
    out = []
    for b in batches:
        saved: list[Any] = []  # filled inside the trace (nnsight runs the block in its own
        # frame and pushes back only plain names, so a comprehension's result is lost)
        with nn_model.trace({"input_ids": b.input_ids, "attention_mask": b.attention_mask}):
            for la in range(n_layers):
                saved.append(nn_model.model.layers[la].output.save())
        acts = {}
        for la, s in enumerate(saved):
            value = getattr(s, "value", s)
            acts[la] = value[0] if isinstance(value, tuple) else value
        out.append((acts, b.response_mask))
    return out


def _best(fn: Callable[[], Any], times: list[float]) -> Any:
    t0 = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - t0)
    return result


def run(quick: bool = False) -> list[dict]:
    import emprobe
    from emprobe.directions import mean_difference
    from emprobe.hooks.bridges import to_nnsight, to_transformer_lens

    subject = emprobe.load_model("smollm2-135m-instruct")
    n_layers = subject.n_layers
    n, batch_size, rounds = (4, 4, 1) if quick else (16, 8, 2)
    pos, neg = _data(n)
    pos_b, neg_b = _batches(subject, pos, batch_size), _batches(subject, neg, batch_size)

    def ours() -> Any:
        return mean_difference(subject, pos, neg, batch_size=batch_size)

    tl = to_transformer_lens(subject)

    def with_tl() -> dict[int, torch.Tensor]:
        a = _mean_over_response(_transformer_lens(tl, pos_b, n_layers), range(n_layers))
        b = _mean_over_response(_transformer_lens(tl, neg_b, n_layers), range(n_layers))
        return {la: a[la] - b[la] for la in range(n_layers)}

    nn_model = to_nnsight(subject)

    def with_nnsight() -> dict[int, torch.Tensor]:
        a = _mean_over_response(_nnsight(nn_model, pos_b, n_layers), range(n_layers))
        b = _mean_over_response(_nnsight(nn_model, neg_b, n_layers), range(n_layers))
        return {la: a[la] - b[la] for la in range(n_layers)}

    variants = {"emprobe": ours, "transformer_lens": with_tl, "nnsight": with_nnsight}
    times: dict[str, list[float]] = {k: [] for k in variants}
    results: dict[str, Any] = {}
    for _ in range(rounds):
        for name, fn in variants.items():
            results[name] = _best(fn, times[name])
    best = {k: min(v) for k, v in times.items()}
    d = results["emprobe"]
    out = []
    for other, label in (("transformer_lens", "TransformerLens run_with_cache(names_filter)"),
                         ("nnsight", "nnsight trace saving every layer")):
        err = max(float((d.vector(la) - results[other][la]).abs().max()) for la in d.layers)
        out.append({
            "name": f"mean-diff all {n_layers} layers: emprobe vs {label}",
            "ratio": best[other] / best["emprobe"],
            "goal": ">= 1 (no slower than the tool a researcher would use)",
            "details": {"emprobe_s": round(best["emprobe"], 3), f"{other}_s": round(best[other], 3),
                        "conversations_per_set": n, "batch_size": batch_size,
                        "tokens_per_set": int(d.stats["positive_tokens"]),
                        "max_abs_difference": err, "threads": torch.get_num_threads()},
        })
    return out
