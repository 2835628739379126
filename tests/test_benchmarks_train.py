"""The training floor of bench_train trains on exactly emprobe's tokens and objective."""

from __future__ import annotations

import torch

from benchmarks.bench_train import _records, floor_batches, packed_loss
from emprobe import load_model
from emprobe.train.data import step_indices, tokenize
from emprobe.train.objectives import sum_ce


def test_floor_batches_score_the_same_response_tokens_with_the_same_loss():
    subject = load_model("tiny-llama")
    data = tokenize(subject, _records(12), None, cap=96)
    width = 2 * max(data.lengths) + 7  # rows hold several records
    plan = [step_indices(len(data), s, 6, 0) for s in range(2)]
    steps = floor_batches(data, plan, width)
    model = subject.model.eval()
    for indices, micro in zip(plan, steps):
        ids, pos, targets = micro[0]
        assert ids.shape[0] < len(indices)  # packed: fewer rows than records
        count = int((targets >= 0).sum())
        assert count == data.n_loss_tokens(indices)
        batch = data.batch(indices)
        with torch.no_grad():
            ours = sum_ce(model(input_ids=batch.input_ids,
                                attention_mask=batch.attention_mask).logits, batch) / count
            floor = packed_loss(model, ids, pos, targets, count)
        assert torch.allclose(ours, floor, rtol=1e-4, atol=1e-5), (float(ours), float(floor))
