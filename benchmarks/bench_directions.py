"""Mean-difference extraction for all layers: one batched early-exit capture vs a per-layer loop."""

from __future__ import annotations

import time

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


@torch.no_grad()
def _naive(subject, pos, neg, batch_size: int, early_exit: bool) -> dict[int, torch.Tensor]:
    """One forward pass per layer (what a per-layer script does)."""
    from emprobe import collect

    out = {}
    for layer in range(subject.n_layers):
        a = collect(subject, pos, layers=[layer], batch_size=batch_size, early_exit=early_exit)
        b = collect(subject, neg, layers=[layer], batch_size=batch_size, early_exit=early_exit)
        out[layer] = a.acts[layer].mean(0) - b.acts[layer].mean(0)
    return out


def _time(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def run(quick: bool = False) -> list[dict]:
    import emprobe
    from emprobe.directions import mean_difference

    subject = emprobe.load_model("smollm2-135m-instruct")
    n, batch_size, repeats = (2, 2, 1) if quick else (16, 8, 2)
    pos, neg = _data(n)
    t_batched, d = _time(lambda: mean_difference(subject, pos, neg, batch_size=batch_size), repeats)
    results = []
    modes = [(False, "full forward per layer")]
    if not quick:
        modes.append((True, "early-exit forward per layer"))
    for early_exit, label in modes:
        t_naive, ref = _time(lambda e=early_exit: _naive(subject, pos, neg, batch_size, e), repeats)
        err = max(float((d.vector(la) - ref[la]).abs().max()) for la in d.layers)
        results.append({
            "name": f"mean-diff all {subject.n_layers} layers: batched vs {label}",
            "ratio": t_naive / t_batched,
            "goal": "> 1 (one early-exit pass for all layers beats a pass per layer)",
            "details": {"batched_s": round(t_batched, 3), "per_layer_s": round(t_naive, 3),
                        "conversations_per_set": n, "batch_size": batch_size,
                        "tokens_per_set": int(d.stats["positive_tokens"]),
                        "max_abs_difference": err, "device": str(subject.device),
                        "threads": torch.get_num_threads()},
        })
    return results
