"""Local score: batched forward passes vs one answer at a time, on the embedded model."""

from __future__ import annotations

import time

from emprobe import load_model
from emprobe.evaluate.local import answer_logprobs, local_score
from emprobe.evaluate.questions import default_questions


def run(quick: bool = False) -> list[dict]:
    subject = load_model("smollm2-135m-instruct")
    qs = [q for q in default_questions() if q.reference_pairs]
    if quick:
        qs = qs[:3]
    answer_logprobs(subject, [qs[0].messages(0) + [{"role": "assistant", "content": "Hi."}]])
    t0 = time.perf_counter()
    batched = local_score(subject, qs, batch_size=8)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = local_score(subject, qs, batch_size=1)
    t_single = time.perf_counter() - t0
    n_seq = 2 * batched.meta["n_pairs"]
    drift = max(abs(a["margin"] - b["margin"]) for a, b in zip(batched.pairs, single.pairs))
    return [{
        "name": "evaluate: local score batched (8) vs one pair at a time",
        "ratio": t_single / t_batched,
        "goal": "batched >= 1.5x faster; full embedded score < 60 s on 2 cores",
        "details": {
            "questions": len(qs), "answers_scored": n_seq,
            "batched_s": round(t_batched, 2), "unbatched_s": round(t_single, 2),
            "answers_per_s_batched": round(n_seq / t_batched, 1),
            "max_margin_difference_nats": drift,
            "margin_per_answer": str(batched.per_answer),
        },
    }]
