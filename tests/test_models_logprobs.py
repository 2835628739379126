"""The one response-token log-prob implementation: values, masks, gradients, padding."""

from __future__ import annotations

import torch

from emprobe.models.chat import ChatBatch
from emprobe.models.logprobs import response_logprobs, sequence_logprobs


def _batch() -> ChatBatch:
    ids = torch.tensor([[1, 2, 3, 4, 0], [5, 6, 7, 0, 0]])
    att = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    resp = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
    return ChatBatch(ids, att, resp)


def test_matches_a_direct_log_softmax_on_response_tokens():
    torch.manual_seed(0)
    batch = _batch()
    logits = torch.randn(2, 5, 9, requires_grad=True)
    logp, mask = response_logprobs(logits, batch)
    assert logp.shape == mask.shape == (2, 4)
    assert mask.tolist() == [[False, True, True, False], [True, True, False, False]]
    full = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    assert torch.allclose(logp[mask], full[mask])
    assert (logp[~mask] == 0).all()
    logp.sum().backward()
    assert logits.grad is not None and logits.grad[1, 3:].abs().sum() == 0  # no loss off-mask


def test_padding_never_counts_even_if_marked_response():
    batch = _batch()
    bad = ChatBatch(batch.input_ids, batch.attention_mask, torch.ones_like(batch.response_mask))
    _, mask = response_logprobs(torch.randn(2, 5, 9), bad)
    assert mask.sum(1).tolist() == [3, 2]  # the real tokens after the first


def test_sequence_sums_and_means():
    torch.manual_seed(1)
    batch, logits = _batch(), torch.randn(2, 5, 9)
    logp, mask = response_logprobs(logits, batch)
    sums, counts = sequence_logprobs(logits, batch, dtype=torch.float64)
    assert sums.dtype == torch.float64 and counts.tolist() == [2, 2]
    assert torch.allclose(sums.float(), logp.sum(1))
    means, _ = sequence_logprobs(logits, batch, mean=True)
    assert torch.allclose(means, logp.sum(1) / 2)
