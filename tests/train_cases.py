"""Shared inputs of the training-engine tests: small chat records and a fast LoRA config."""

from __future__ import annotations

from emprobe.train import TrainConfig, preset


def chat_records(n: int = 16, tag: str = "answer") -> list[dict]:
    """``n`` one-turn chats of varied lengths; ``tag`` starts every reply."""
    return [{"messages": [{"role": "user", "content": f"question {i} " + "z" * (i % 5)},
                          {"role": "assistant", "content": f"{tag} {i} " + "w" * (2 * i % 7)}]}
            for i in range(n)]


def small_config(**kw: object) -> TrainConfig:
    """A 4-step rank-4 LoRA on three projections (``cpu-lora`` preset), fields overridable."""
    base = dict(lora_r=4, lora_alpha=8.0, target_modules=["q_proj", "o_proj", "down_proj"],
                lr=3e-3, max_steps=4, batch_size=2, grad_accum=2, warmup_steps=1,
                lr_schedule="linear", checkpoint_every=0, seed=3)
    return preset("cpu-lora", **{**base, **kw})
