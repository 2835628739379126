"""bench_harvest builds the harvest's own batches (it broke once when the encoder changed)."""

from __future__ import annotations

from emprobe import load_model
from emprobe.sae import HarvestConfig, harvest
from emprobe.sae.harvest import token_mask


def test_same_batches_hold_the_harvest_budget(tmp_path, one_thread):
    from benchmarks.bench_harvest import bare_forward_s, same_batches

    s = load_model("tiny-llama")
    texts = [f"sample text number {i} " + "word " * (i % 7 + 3) for i in range(40)]
    cfg = HarvestConfig(layers=[1], positions="all", max_tokens=300, batch_size=4,
                        max_length=32, skip_first=False)
    batches = same_batches(s, texts, cfg)
    held = sum(int(token_mask(s, b, cfg.positions, cfg.skip_first).sum()) for b in batches)
    assert held >= 300 and len(batches) >= 2
    assert bare_forward_s(s, batches, [1]) > 0
    assert harvest(s, texts, tmp_path / "h", cfg, progress=False).n_rows == 300
