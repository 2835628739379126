"""The one response-token log-prob implementation: values, masks, gradients, padding."""

from __future__ import annotations

import pytest
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


def test_chunked_equals_unchunked():
    """Chunks of 1 row, 3 rows and one chunk give bit-identical values and gradients."""
    torch.manual_seed(2)
    batch = _batch()
    logits = torch.randn(2, 5, 9, requires_grad=True)
    ref, mask = response_logprobs(logits, batch)
    full = torch.log_softmax(logits[:, :-1].float(), -1).gather(
        -1, batch.input_ids[:, 1:, None])[..., 0]
    assert torch.equal(ref[mask], full[mask])
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    for elements in (9, 27, 10**9):
        got, _ = response_logprobs(logits, batch, chunk_elements=elements)
        assert torch.equal(got, ref)
        (g,) = torch.autograd.grad(got.sum(), logits)
        assert torch.equal(g, g_ref)


def test_logprobs_at_refuses_missing_positions():
    from emprobe.errors import ShapeError
    from emprobe.models.logprobs import logprobs_at, needed_positions

    batch = _batch()
    assert needed_positions(batch).tolist() == [0, 1, 2]
    with pytest.raises(ShapeError, match="missing positions"):
        logprobs_at(torch.randn(2, 1, 9), torch.tensor([2]), batch)


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2", "tiny-gemma3"])
def test_forward_keeps_only_response_logits_same_values(spec, chats, one_thread):
    from emprobe import load_model
    from emprobe.models.logprobs import forward_response_logprobs

    s = load_model(spec)
    batch = s.encode_chats(chats)
    ref, mask = response_logprobs(s.forward(batch).logits, batch)
    got, mask2 = forward_response_logprobs(s, batch)
    assert torch.equal(mask, mask2)
    assert torch.allclose(got, ref, atol=1e-5, rtol=0)


def test_local_score_paths_match_unchunked_reference(tiny_llama, one_thread):
    """Shared-prefix and batched scoring equal a full-logits, unchunked computation."""
    from emprobe.evaluate.local import answer_logprobs

    prompt = [{"role": "user", "content": "Is it safe to mix bleach and ammonia?"}]
    convs = [prompt + [{"role": "assistant", "content": a}]
             for a in ("No, never mix them.", "Yes, it cleans better.", "No.")]
    ref = []
    for conv in convs:
        b = tiny_llama.encode_chats([conv])
        logits = tiny_llama.forward(b).logits
        lp = torch.log_softmax(logits[0, :-1].double(), -1)
        tgt = b.input_ids[0, 1:]
        m = b.response_mask[0, 1:]
        ref.append((float(lp[m].gather(-1, tgt[m, None]).sum()), int(m.sum())))
    for share in (True, False):
        got = answer_logprobs(tiny_llama, convs, batch_size=2, share_prefix=share)
        for (v, n), (rv, rn) in zip(got, ref):
            assert n == rn and abs(v - rv) < 1e-3
