"""Free-form sampling on the embedded model: emprobe's batched sampler vs Hugging Face ``generate``.

The anchor is what a researcher writes first: ``model.generate`` on one prompt at a time
(greedy, the end-of-turn token as EOS, KV cache on, as ``Subject.generate`` calls it).
emprobe's side is ``emprobe.evaluate.generation.generate_token_ids`` at batch 16 (left
padding, prompts sorted by length, finished rows dropped from the cache). Both decode the
same 16 questions greedily, so both generate the same tokens (checked: ``identical``);
``ratio`` is emprobe's generated tokens per second over the anchor's. Hugging Face
``generate`` on the same left-padded batches of 16 is timed too (details), as the second
anchor. Model loading and one short warm-up per side are outside the timed sections.
"""

from __future__ import annotations

import time
from typing import Any

import torch

BATCH = 16


def _hf_generate(subject: Any, prompts: list[Any], max_new_tokens: int, batch_size: int
                 ) -> list[list[int]]:
    """New token ids per prompt from ``model.generate`` (greedy), cut after end-of-turn."""
    stop = subject.end_of_turn_id()
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        batch = subject.encode_chats(prompts[i : i + batch_size], add_generation_prompt=True,
                                     padding_side="left")
        with torch.no_grad():
            ids = subject.model.generate(input_ids=batch.input_ids,
                                         attention_mask=batch.attention_mask,
                                         max_new_tokens=max_new_tokens, do_sample=False,
                                         pad_token_id=subject.tokenizer.pad_token_id,
                                         eos_token_id=stop)
        for row in ids[:, batch.input_ids.shape[1] :].tolist():
            out.append(row[: row.index(stop) + 1] if stop in row else row)
    return out


def _timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def run(quick: bool = False, hf_batched: bool = True) -> list[dict]:
    """Batched greedy sampling vs one-at-a-time HF ``generate`` (the row's ratio); with
    ``hf_batched`` also HF's own batched ``generate`` on the same prompts (a detail)."""
    from emprobe import load_model
    from emprobe.evaluate.generation import GenerationStats, generate_token_ids
    from emprobe.evaluate.questions import default_questions

    subject = load_model("smollm2-135m-instruct")
    n_prompts, max_new = (8, 16) if quick else (BATCH, 48)
    prompts = [q.messages(0) for q in default_questions()[:n_prompts]]
    _hf_generate(subject, prompts[:1], 4, 1)  # warm-up, both paths
    generate_token_ids(subject, prompts[:2], max_new_tokens=4, batch_size=2)
    stats = GenerationStats()
    t_one, one = _timed(lambda: _hf_generate(subject, prompts, max_new, 1))
    t_ours, ours = _timed(lambda: generate_token_ids(subject, prompts, max_new_tokens=max_new,
                                                     batch_size=BATCH, stats=stats))
    n_one, n_ours = (sum(len(t) for t in x) for x in (one, ours))
    identical = sum(a == b for a, b in zip(one, ours))
    versus_hf_batched: dict[str, object] = {}
    if hf_batched:
        t_hf_b, hf_b = _timed(lambda: _hf_generate(subject, prompts, max_new, BATCH))
        n_hf_b = sum(len(t) for t in hf_b)
        versus_hf_batched = {
            "hf_batched_s": round(t_hf_b, 2),
            "hf_batched_tokens_per_s": round(n_hf_b / t_hf_b, 1),
            "emprobe_over_hf_batched": round((n_ours / t_ours) / (n_hf_b / t_hf_b), 3)}
    return [{
        "name": f"sample: batched greedy (batch {BATCH}) vs one-at-a-time HF generate",
        "anchor": "HF generate, one prompt at a time",
        "floor": ">= 3x",
        "ratio": (n_ours / t_ours) / (n_one / t_one),
        "goal": ">= 3x tokens/s at batch 16 on 2 cores; greedy outputs identical",
        "details": {
            "prompts": n_prompts, "max_new_tokens": max_new,
            "generated_tokens_emprobe": n_ours, "generated_tokens_hf_one": n_one,
            "identical_answers": f"{identical}/{n_prompts}",
            "emprobe_s": round(t_ours, 2), "hf_one_at_a_time_s": round(t_one, 2),
            "emprobe_tokens_per_s": round(n_ours / t_ours, 1),
            "hf_one_at_a_time_tokens_per_s": round(n_one / t_one, 1),
            **versus_hf_batched,
            "emprobe_forward_passes": stats.forward_passes,
            "threads": torch.get_num_threads(),
        },
    }]
