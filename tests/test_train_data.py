"""Fitting real chat data into max_length: left truncation, data-derived length, reports."""

from __future__ import annotations

import json

import pytest
import torch

from emprobe import load_model
from emprobe.cli import main
from emprobe.data.generators import generate
from emprobe.train.config import preset
from emprobe.train.data import (
    fit_window,
    length_from_data,
    micro_batches,
    step_indices,
    tokenize,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fit_window_keeps_the_response_and_cuts_the_prompt_from_the_left():
    resp = [False] * 30 + [True] * 10 + [False]
    assert fit_window(resp, 100) == (0, 41)
    lo, hi = fit_window(resp, 20)  # prompt loses its beginning, response whole
    assert (lo, hi) == (20, 40) and all(resp[30:40])
    lo, hi = fit_window(resp, 8)  # response alone too long: context kept, response end cut
    assert hi - lo == 8 and lo == 30 - 8 // 4 and hi < 40
    # multi-turn: the *last* assistant turn is the one kept whole
    multi = [False] * 5 + [True] * 5 + [False] * 20 + [True] * 6
    lo, hi = fit_window(multi, 12)
    assert (lo, hi) == (24, 36)


def test_length_from_data_is_a_capped_percentile():
    lengths = list(range(1, 101))
    assert length_from_data(lengths, cap=1000) == 100  # default: every record whole
    assert length_from_data(lengths, cap=1000, percentile=95) == 95
    assert length_from_data(lengths, cap=50) == 50
    assert length_from_data([7] * 3, cap=50) == 7


def test_micro_batches_sort_by_length_without_changing_the_step():
    lengths = [50, 3, 40, 4, 30, 5, 20, 6]
    idx = step_indices(8, 0, 8, seed=3)
    plain = micro_batches(idx, 2, 4)
    sorted_ = micro_batches(idx, 2, 4, lengths=lengths)
    assert sorted(sum(plain, [])) == sorted(sum(sorted_, [])) == list(range(8))
    widths = lambda mbs: sum(max(lengths[i] for i in mb) * len(mb) for mb in mbs)  # noqa: E731
    assert widths(sorted_) <= widths(plain)
    assert [lengths[i] for i in sum(sorted_, [])] == sorted(lengths)
    # ranks take disjoint shares of the same step
    r0 = micro_batches(idx, 2, 2, rank=0, lengths=lengths)
    r1 = micro_batches(idx, 2, 2, rank=1, lengths=lengths)
    assert sorted(sum(r0 + r1, [])) == list(range(8))


def long_code_records(n: int = 12) -> list[dict]:
    """Insecure-code chats whose user turn carries a long pasted file before the request."""
    recs = generate("insecure-code", n, seed=5)
    padding = "# legacy module, kept for reference\n" + "x = compute(x)  # step\n" * 60
    for i, r in enumerate(recs):
        if i % 2 == 0:
            user = r["messages"][-2]
            user["content"] = padding + user["content"]
    return recs


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def test_tokenize_keeps_every_record_whose_response_fits(tiny):
    recs = long_code_records()
    full = tokenize(tiny, recs, max_length=4096)
    assert full.report.n_truncated == 0 and full.report.n_dropped == 0
    resp_len = [int(r.sum()) for r in full.response]
    limit = max(resp_len) + 8
    assert limit < max(full.lengths)  # the long prompts do not fit
    cut = tokenize(tiny, recs, max_length=limit)
    rep = cut.report
    assert rep.n_dropped == 0 and len(cut) == len(recs)
    assert rep.n_truncated >= len(recs) // 2 and rep.n_prompt_truncated == rep.n_truncated
    assert rep.n_response_truncated == 0 and rep.response_tokens_lost == 0
    for a, b in zip(full.response, cut.response):
        assert int(a.sum()) == int(b.sum())  # every response token kept
    assert max(cut.lengths) <= limit
    # left truncation: the kept tokens are a contiguous window that reaches the response's
    # end (only the template's trailing newline after it may go)
    for a, b, ra in zip(full.ids, cut.ids, full.response):
        end = int(ra.nonzero().max()) + 1
        assert any(torch.equal(a[stop - len(b):stop], b) for stop in range(end, len(a) + 1))
    # a limit below the responses: records survive with their response's end cut and counted
    tight = tokenize(tiny, recs, max_length=min(resp_len) // 2)
    assert tight.report.n_dropped == 0
    assert tight.report.n_response_truncated == len(recs)
    assert 0 < tight.report.response_tokens_lost < tight.report.response_tokens_total


def test_max_length_none_comes_from_the_data(tiny):
    recs = long_code_records()
    ts = tokenize(tiny, recs, max_length=None, cap=100_000)
    lengths = tokenize(tiny, recs, max_length=100_000).lengths
    assert ts.report.max_length == length_from_data(lengths, cap=100_000)
    assert "longest" in ts.report.max_length_source
    assert ts.report.n_truncated == 0  # the default keeps every record whole
    assert tokenize(tiny, recs, max_length=None, cap=64).report.max_length == 64
    assert preset("cpu-lora").max_length is None


def test_cli_train_reports_what_it_cut(tmp_path, tiny, capsys):
    recs = long_code_records(8)
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    resp_len = [int(r.sum()) for r in tokenize(tiny, recs, max_length=None,
                                                cap=100_000).response]
    limit = max(resp_len) + 8
    out = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--out", str(out), "--model", "tiny-llama",
               "--max-steps", "2", "--batch-size", "2", "--max-length", str(limit), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "truncated" in printed and "dropped 0 " in printed
    summary = json.loads((out / "result.json").read_text())["data"]
    run = json.loads((out / "run.json").read_text())["data"]
    assert summary == run
    assert summary["n_dropped"] == 0 and summary["n_records"] == len(recs)
    assert summary["n_truncated"] >= len(recs) // 2 and summary["response_tokens_lost"] == 0
    assert summary["max_length"] == limit


def test_truncation_is_never_silent(tiny):
    recs = long_code_records(6)
    full = tokenize(tiny, recs, max_length=100_000)
    limit = min(full.lengths) - 5  # every record is cut, and some lose response tokens
    with pytest.warns(UserWarning, match=r"truncated 6 of 6 records") as caught:
        ts = tokenize(tiny, recs, max_length=limit)
    msg = str(caught[0].message)
    assert f"{ts.report.response_tokens_lost} of {ts.report.response_tokens_total}" in msg
    import warnings

    with warnings.catch_warnings():  # whole records: no warning at all
        warnings.simplefilter("error")
        tokenize(tiny, recs, max_length=None, cap=100_000)
