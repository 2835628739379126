"""Sequence packing: attention isolated by position ids, assistant-only loss unchanged."""

from __future__ import annotations

import pytest
import torch

from emprobe import load_model
from emprobe.train.data import pack_rows, tokenize
from emprobe.train.objectives import sum_ce


def _records(n: int = 7):
    return [{"messages": [{"role": "user", "content": "tell me " + "x" * (3 * i)},
                          {"role": "assistant", "content": f"reply {i} " + "y" * (5 * i + 2)}]}
            for i in range(n)]


def test_pack_rows_first_fit_decreasing():
    rows = pack_rows([5, 9, 3, 7, 2], width=10)
    assert sorted(j for r in rows for j in r) == [0, 1, 2, 3, 4]
    lengths = [5, 9, 3, 7, 2]
    assert all(sum(lengths[j] for j in r) <= 10 for r in rows)
    assert len(rows) == 3  # 27 tokens need at least 3 rows of 10
    assert pack_rows([12, 3], width=10)[0] == [0]  # an over-long example alone in its row


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-qwen2"])
def test_packed_loss_equals_padded_loss(spec, one_thread):
    s = load_model(spec)
    ts = tokenize(s, _records(), max_length=None)
    idx = list(range(len(ts)))
    padded = ts.batch(idx)
    packed, pos = ts.packed_batch(idx, width=max(ts.lengths) * 2)
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0]  # it did pack
    assert int(packed.response_mask[:, 1:].sum()) == ts.n_loss_tokens(idx)
    with torch.no_grad():
        lp = s.model(input_ids=padded.input_ids, attention_mask=padded.attention_mask).logits
        lk = s.model(input_ids=packed.input_ids, position_ids=pos, use_cache=False).logits
    a, b = float(sum_ce(lp, padded)), float(sum_ce(lk, packed))
    assert abs(a - b) <= 1e-4 * abs(a)
    # without isolation (one long sequence, positions running on) the loss differs
    run_on = torch.arange(pos.shape[1]).expand_as(pos)
    with torch.no_grad():
        lj = s.model(input_ids=packed.input_ids, position_ids=run_on, use_cache=False).logits
    assert abs(float(sum_ce(lj, packed)) - a) > 1e-3 * abs(a)


class _IgnoresPositions(torch.nn.Module):
    """A causal LM that drops ``position_ids`` (so packed records see each other)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, input_ids, position_ids=None, **kw):
        del position_ids
        return self.inner(input_ids=input_ids, **kw)


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-gemma2",
                                  "tiny-gemma3", "tiny-olmo2", "tiny-phi", "tiny-phi3",
                                  "tiny-gpt2", "tiny-gpt-neox"])
def test_check_packing_passes_for_families_that_isolate(spec, one_thread):
    from emprobe.train.data import check_packing

    s = load_model(spec)
    ts = tokenize(s, _records(), max_length=None)
    assert check_packing(s.model, ts) <= 1e-4


def test_check_packing_fails_for_a_model_that_ignores_position_ids(one_thread):
    from emprobe.errors import ConfigError
    from emprobe.train.data import check_packing

    s = load_model("tiny-llama")
    ts = tokenize(s, _records(), max_length=None)
    with pytest.raises(ConfigError, match="does not isolate packed records"):
        check_packing(_IgnoresPositions(s.model), ts)


def test_check_packing_runs_once_per_model(one_thread):
    """A passed check is remembered per model object (no forwards on the next run); a new
    dtype checks again; a model that ignores position ids is never remembered as passing."""
    from emprobe.errors import ConfigError
    from emprobe.train.data import CHECK_TOKENS, check_packing

    s = load_model("tiny-llama")
    ts = tokenize(s, _records(), max_length=None)
    seen: list[int] = []
    handle = s.model.register_forward_hook(lambda m, a, kw: seen.append(1), with_kwargs=False)
    try:
        first = check_packing(s.model, ts)
        assert len(seen) == 3 and first <= 1e-4
        assert check_packing(s.model, ts) == first and len(seen) == 3
        s.model.double()
        check_packing(s.model, ts)
        assert len(seen) == 6
    finally:
        handle.remove()
        s.model.float()
    assert CHECK_TOKENS <= min(ts.lengths)  # the check reads only the records' starts
    wrapped = _IgnoresPositions(s.model)
    for _ in range(2):
        with pytest.raises(ConfigError, match="does not isolate packed records"):
            check_packing(wrapped, ts)


@pytest.mark.integration
def test_packing_is_exact_on_the_embedded_model(embedded, one_thread):
    """The embedded model (Llama-shaped SmolLM2, real chat template): ``check_packing``
    passes, and the assistant-only loss of packed rows equals the padded batch's."""
    from emprobe.train.data import check_packing

    ts = tokenize(embedded, _records(5), max_length=None)
    assert check_packing(embedded.model, ts) <= 1e-4
    idx = list(range(len(ts)))
    padded = ts.batch(idx)
    packed, pos = ts.packed_batch(idx, width=max(ts.lengths) * 2)
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0]
    with torch.no_grad():
        lp = embedded.model(input_ids=padded.input_ids, attention_mask=padded.attention_mask,
                            use_cache=False).logits
        lk = embedded.model(input_ids=packed.input_ids, position_ids=pos, use_cache=False).logits
    a, b = float(sum_ce(lp, padded)), float(sum_ce(lk, packed))
    assert abs(a - b) <= 1e-4 * abs(a)
