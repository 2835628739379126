"""Local score on the embedded model: shared-prompt KV cache vs whole sequences vs one at a time.

The reference pairs' answers are about as long as their chat-formatted prompts, so scoring
each prompt once and reusing its key/value cache for every answer roughly halves the tokens
a score runs. Measured side by side in one run; the margins must agree.
"""

from __future__ import annotations

import time

from emprobe import load_model
from emprobe.evaluate.local import answer_logprobs, local_score
from emprobe.evaluate.questions import default_questions


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(quick: bool = False) -> list[dict]:
    subject = load_model("smollm2-135m-instruct")
    qs = [q for q in default_questions() if q.reference_pairs]
    if quick:
        qs = qs[:4]
    answer_logprobs(subject, [qs[0].messages(0) + [{"role": "assistant", "content": "Hi."}]])
    t_shared, shared = _timed(lambda: local_score(subject, qs, n_boot=0))
    t_whole, whole = _timed(lambda: local_score(subject, qs, n_boot=0, share_prefix=False))
    few = qs[:2]
    t_single, _ = _timed(lambda: local_score(subject, few, batch_size=1, n_boot=0,
                                              share_prefix=False))
    t_batched_few, _ = _timed(lambda: local_score(subject, few, n_boot=0, share_prefix=False))
    n_answers = 2 * shared.meta["n_pairs"]
    drift = max(abs(a["margin"] - b["margin"]) for a, b in zip(shared.pairs, whole.pairs))
    tokens = sum(p["n_tokens_aligned"] + p["n_tokens_misaligned"] for p in shared.pairs)
    return [
        {
            "name": "evaluate: local score, shared-prompt KV cache vs whole sequences (batch 8)",
            "ratio": t_whole / t_shared,
            "goal": ">= 1.5x; margins equal to 0.05 nats; full embedded score < 60 s on 2 cores",
            "details": {
                "questions": len(qs), "answers_scored": n_answers,
                "response_tokens": tokens,
                "shared_s": round(t_shared, 2), "whole_s": round(t_whole, 2),
                "response_tokens_per_s_shared": round(tokens / t_shared, 1),
                "response_tokens_per_s_whole": round(tokens / t_whole, 1),
                "max_margin_difference_nats": drift,
                "margin_per_answer": str(shared.per_answer),
            },
        },
        {
            "name": "evaluate: whole sequences batched (8) vs one answer at a time",
            "ratio": t_single / t_batched_few,
            "goal": ">= 1.5x",
            "details": {"questions": len(few), "batched_s": round(t_batched_few, 2),
                        "unbatched_s": round(t_single, 2)},
        },
    ]
