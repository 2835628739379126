"""Harvesting: one pass over several sites/layers, bounded shards, exact resume."""

from __future__ import annotations

import pytest
import torch

from emprobe.errors import DataError, FormatError, SiteError
from emprobe.hooks.capture import collect
from emprobe.sae.corpus import generic_chats
from emprobe.sae.harvest import HarvestConfig, _Keep, _SiteRows, harvest, load_harvest

pytestmark = pytest.mark.usefixtures("one_thread")



def _expected(subject, data, layer, site, positions="all"):
    got = collect(subject, data, layers=[layer], site=site, positions=positions, batch_size=4,
                  max_length=256, early_exit=False)
    keep = got.token_index[:, 1] > 0
    return got.acts[layer][keep]


def test_harvest_matches_collect_over_sites_and_layers(tiny_llama, tmp_path):
    data = generic_chats(12)
    cfg = HarvestConfig(layers=[1, 3], sites=["resid_post", "mlp_out"], batch_size=4,
                        rows_per_shard=100, bucket=1, dtype="float32")
    hv = harvest(tiny_llama, data, tmp_path / "h", cfg, progress=False)
    assert hv.complete and hv.meta["model"] == "tiny-llama" and hv.d_model == 64
    for site in ("resid_post", "mlp_out"):
        reader = hv.reader(site)
        for layer in (1, 3):
            torch.testing.assert_close(reader.load(layer), _expected(tiny_llama, data, layer, site))
    shards = hv.reader("resid_post").manifest["shards"]
    assert all(s["rows"] <= 100 for s in shards)
    assert len(shards) == -(-hv.n_rows // 100)


def test_harvest_response_positions_and_budget(tiny_llama, tmp_path):
    data = generic_chats(10)
    cfg = HarvestConfig(layers=[2], positions="response", max_tokens=150, batch_size=3,
                        rows_per_shard=64, bucket=1, dtype="float32")
    hv = harvest(tiny_llama, data, tmp_path / "h", cfg, progress=False)
    full = _expected(tiny_llama, data, 2, "resid_post", positions="response")
    assert hv.n_rows == 150 < full.shape[0]
    torch.testing.assert_close(hv.reader().load(2), full[:150])


def test_length_buckets_keep_the_same_tokens(tiny_llama, tmp_path):
    data = generic_chats(12, seed=9)
    plain = harvest(tiny_llama, data, tmp_path / "a",
                    HarvestConfig(layers=[1], bucket=1, dtype="float32"), progress=False)
    sorted_ = harvest(tiny_llama, data, tmp_path / "b",
                      HarvestConfig(layers=[1], batch_size=4, bucket=3, dtype="float32"),
                      progress=False)
    a, b = plain.reader().load(1), sorted_.reader().load(1)
    assert a.shape == b.shape
    key_a, key_b = a.norm(dim=-1).sort().values, b.norm(dim=-1).sort().values
    torch.testing.assert_close(key_a, key_b, rtol=1e-4, atol=1e-4)


class _Boom(RuntimeError):
    pass


def test_harvest_resumes_exactly_after_interruption(tiny_llama, tmp_path):
    data = generic_chats(20, seed=3)
    cfg = HarvestConfig(layers=[0, 2], batch_size=2, rows_per_shard=70, bucket=4)
    calls = {"n": 0}

    def explode(mod, args):
        calls["n"] += 1
        if calls["n"] == 6:
            raise _Boom("interrupted")

    handle = tiny_llama.layers.blocks[0].register_forward_pre_hook(explode)
    try:
        with pytest.raises(_Boom):
            harvest(tiny_llama, data, tmp_path / "h", cfg, progress=False)
    finally:
        handle.remove()
    partial = load_harvest(tmp_path / "h")
    assert not partial.complete and 0 < partial.n_rows
    hv = harvest(tiny_llama, data, tmp_path / "h", cfg, progress=False)
    ref = harvest(tiny_llama, data, tmp_path / "ref", cfg, progress=False)
    assert hv.complete and hv.n_rows == ref.n_rows
    for layer in (0, 2):
        torch.testing.assert_close(hv.reader().load(layer), ref.reader().load(layer))
    # a complete harvest is returned as is; another config on the same folder is refused
    assert harvest(tiny_llama, data, tmp_path / "h", cfg, progress=False).n_rows == hv.n_rows
    with pytest.raises(FormatError):
        harvest(tiny_llama, data, tmp_path / "h", HarvestConfig(layers=[1]), progress=False)


def test_harvest_bad_input(tiny_llama, tmp_path):
    with pytest.raises(SiteError):
        harvest(tiny_llama, ["hi"], tmp_path / "a", HarvestConfig(layers=[9]), progress=False)
    with pytest.raises(SiteError):
        harvest(tiny_llama, ["hi"], tmp_path / "b", HarvestConfig(layers=[0], sites=["nope"]),
                progress=False)
    with pytest.raises(DataError):
        harvest(tiny_llama, [], tmp_path / "c", HarvestConfig(layers=[0]), progress=False)
    with pytest.raises(DataError):
        harvest(tiny_llama, ["hi"], tmp_path / "d", HarvestConfig(layers=[0], positions="last"),
                progress=False)


def test_buckets_cut_padding_and_keep_rows_in_memory(tiny_llama, tmp_path, monkeypatch):
    # items of very different lengths: sorted windows give batches of near-equal length
    data = [("word " * (3 + 17 * (i % 3))).strip() for i in range(24)]  # 3 lengths x 8 items
    computed = {"padded": 0, "real": 0}
    real_forward = tiny_llama.model.forward

    def counting(*args, **kwargs):
        computed["padded"] += kwargs["input_ids"].numel()
        computed["real"] += int(kwargs["attention_mask"].sum())
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(tiny_llama.model, "forward", counting)
    hv = harvest(tiny_llama, data, tmp_path / "h",
                 HarvestConfig(layers=[1], batch_size=4, bucket=6), progress=False)
    assert computed["padded"] == computed["real"]  # equal-length groups: no padded position
    computed.update(padded=0, real=0)
    harvest(tiny_llama, data, tmp_path / "h1",
            HarvestConfig(layers=[1], batch_size=4, bucket=1), progress=False)
    assert computed["padded"] > computed["real"]
    # bf16 storage by default, and the same rows kept in RAM
    assert hv.reader().manifest["dtype"] == "bfloat16"
    on_disk = hv.reader().shard(0)[1]
    assert on_disk.dtype == torch.bfloat16
    assert hv.memory is not None and hv.rows("resid_post", 1).dtype == torch.bfloat16
    torch.testing.assert_close(hv.rows("resid_post", 1).float(), hv.reader().load(1))
    assert hv.seconds is not None and hv.seconds > 0
    # bf16 rows are the float32 rows rounded
    ref = _expected(tiny_llama, data, 1, "resid_post")
    got = hv.reader().load(1)
    assert got.shape == ref.shape
    torch.testing.assert_close(got.norm(dim=-1).sort().values, ref.norm(dim=-1).sort().values,
                               rtol=1e-2, atol=1e-2)


def test_memory_limit_falls_back_to_shards(tiny_llama, tmp_path):
    data = generic_chats(8)
    hv = harvest(tiny_llama, data, tmp_path / "h",
                 HarvestConfig(layers=[1], memory_limit_mb=0), progress=False)
    assert hv.memory is None and hv.rows("resid_post", 1) is None and hv.n_rows > 0
    # past the limit the in-RAM copy is dropped (the shards still hold every row)
    written = []
    rows = _SiteRows("resid_post", [1], 64, torch.bfloat16, 4, _Keep(1000, None, 1, 128), None,
                     lambda site, blk: written.append(blk[1].clone()))
    x = torch.randn(1, 3, 64)
    rows.add({1: x}, [(0, 3)])
    assert len(rows.kept) == 0 and len(written) == 0  # a block of 4 rows is not full yet
    rows.add({1: x}, [(0, 3)])
    assert len(written) == 1 and rows.kept and rows.keep.used == 6 * 128
    more = _SiteRows("resid_post", [1], 64, torch.bfloat16, 4, rows.keep, None, lambda *a: None)
    more.add({1: torch.randn(1, 8, 64)}, [(0, 8)])
    assert not rows.keep.on and more.finish() is None and rows.finish() is None
    assert torch.cat(written).shape == (6, 64)  # the partial block went to the writer too
    # a token budget known not to fit keeps nothing from the start (no copy to drop later)
    assert not _Keep(1000, 8, 1, 128).on and _Keep(1024, 8, 1, 128).whole


def test_shard_write_failure_surfaces(tiny_llama, tmp_path, monkeypatch):
    from emprobe.hooks import shards

    def broken(self, acts):
        raise OSError("disk full")

    monkeypatch.setattr(shards.ShardWriter, "write_shard", broken)
    with pytest.raises(OSError, match="disk full"):
        harvest(tiny_llama, generic_chats(40), tmp_path / "h",
                HarvestConfig(layers=[1], batch_size=2), progress=False)


def test_bucket_windows_run_in_an_unbiased_fixed_order():
    from emprobe.models.chat import ChatBatch
    from emprobe.sae.harvest import _batches

    def encode(a, b):  # item i has length i % 7 + 1
        chunk = items[a:b]
        n = len(chunk)
        width = 7
        att = torch.zeros(n, width, dtype=torch.long)
        ids = torch.zeros(n, width, dtype=torch.long)
        for r, item in enumerate(chunk):
            att[r, : item % 7 + 1] = 1
            ids[r] = item
        return ChatBatch(ids, att, att.bool())

    items = list(range(70))
    first = list(_batches(encode, len(items), 5, 7))
    again = list(_batches(encode, len(items), 5, 7))
    seen = [int(i) for b in first for i in b.input_ids[:, 0]]
    assert sorted(seen) == items  # every item once
    assert [b.input_ids.tolist() for b in first] == [b.input_ids.tolist() for b in again]
    widths = [b.input_ids.shape[1] for b in first]
    assert all(len(set(b.attention_mask.sum(1).tolist())) <= 2 for b in first)  # bucketed
    assert widths[:7] != sorted(widths[:7])  # not shortest-first: a cut window is unbiased
    plain = list(_batches(encode, len(items), 5, 1))  # bucket 1 keeps the input order
    assert [int(i) for b in plain for i in b.input_ids[:, 0]] == items


def test_site_rows_copy_runs_into_shard_blocks_once():
    """Rows are copied straight from the activations (runs of the flattened token mask)
    into shard blocks; with a token budget that fits, the blocks are slices of one
    in-RAM buffer per layer, so the shards and the in-RAM rows share memory."""
    acts = {1: torch.randn(2, 5, 64), 2: torch.randn(2, 5, 64)}
    runs = [(1, 4), (6, 10)]  # 7 rows: row 0 positions 1-3, row 1 positions 1-4
    expect = {la: torch.cat([a.reshape(-1, 64)[1:4], a.reshape(-1, 64)[6:10]]).to(torch.bfloat16)
              for la, a in acts.items()}
    written = []
    keep = _Keep(10_000_000, 7, 2, 128)
    rows = _SiteRows("resid_post", [1, 2], 64, torch.bfloat16, 3, keep, 7,
                     lambda site, blk: written.append(blk))
    assert keep.whole and rows.whole is not None
    rows.add(acts, runs)
    kept = rows.finish()
    assert [b[1].shape[0] for b in written] == [3, 3, 1]
    for la in (1, 2):
        torch.testing.assert_close(kept[la], expect[la], rtol=0, atol=0)
        torch.testing.assert_close(torch.cat([b[la] for b in written]), expect[la], rtol=0, atol=0)
        assert all(b[la].untyped_storage().data_ptr() == kept[la].untyped_storage().data_ptr()
                   for b in written)
    # without a budget: fresh blocks, concatenated once at the end
    loose = _SiteRows("resid_post", [1, 2], 64, torch.bfloat16, 3, _Keep(10_000_000, None, 2, 128),
                      None, lambda site, blk: None)
    loose.add(acts, runs)
    torch.testing.assert_close(loose.finish()[2], expect[2], rtol=0, atol=0)


def test_token_runs_and_their_window():
    from emprobe.sae.harvest import _runs, _window

    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 1]], dtype=torch.bool)
    runs = _runs(mask)
    assert runs == [(1, 3), (4, 9), (11, 12)]
    flat = torch.arange(12)
    picked = torch.cat([flat[a:b] for a, b in runs])
    assert picked.tolist() == flat[mask.reshape(-1)].tolist()
    for skip, take in [(0, 8), (2, 5), (3, 8), (0, 1), (7, 8)]:
        win = _window(runs, skip, take)
        assert torch.cat([flat[a:b] for a, b in win]).tolist() == picked[skip:take].tolist()


def _reference_rows(subject, data, cfg):
    """The harvest's rows computed the plain way: the same batches in the same order, a full
    forward each, the chosen tokens in row-major order, cut at the budget."""
    from emprobe.hooks.capture import capture
    from emprobe.models.context import use_batch
    from emprobe.sae.harvest import _batches, token_mask

    def encode(a, b):
        chunk = list(data[a:b])
        if isinstance(chunk[0], str):
            return subject.encode_texts(chunk, max_length=cfg.max_length)
        return subject.encode_chats(chunk, max_length=cfg.max_length)

    out = {(s, la): [] for s in cfg.sites for la in cfg.layers}
    for batch in _batches(encode, len(data), cfg.batch_size, cfg.bucket, cfg.batch_tokens):
        mask = token_mask(subject, batch, cfg.positions, cfg.skip_first)
        with torch.no_grad(), use_batch(batch), capture(subject, cfg.layers, cfg.sites) as cache:
            subject.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        for key, parts in out.items():
            parts.append(cache[key][mask])
    return {k: torch.cat(v)[: cfg.max_tokens] for k, v in out.items()}


@pytest.mark.parametrize("case", ["texts-budget", "chats-response", "two-sites", "token-cap"])
def test_harvest_rows_are_the_plain_rows_in_the_same_order(tiny_llama, tmp_path, case):
    """Same rows, same order as the plain computation (the prefetching, single-copy,
    background-written harvest changes nothing but its speed)."""
    chats = generic_chats(30, seed=4)
    texts = [f"{c[0]['content']} {c[1]['content']}" for c in chats]
    data, cfg = {
        "texts-budget": (texts, HarvestConfig(layers=[2], max_tokens=333, batch_size=4, bucket=3,
                                              rows_per_shard=64, dtype="float32",
                                              skip_first=False)),
        "chats-response": (chats, HarvestConfig(layers=[0, 3], positions="response",
                                                batch_size=5, bucket=2, rows_per_shard=50,
                                                dtype="float32")),
        "two-sites": (chats, HarvestConfig(layers=[1], sites=["resid_post", "attn_out"],
                                           max_tokens=500, batch_size=3, rows_per_shard=1000,
                                           dtype="float32", memory_limit_mb=0)),
        "token-cap": (chats, HarvestConfig(layers=[2], batch_size=16, batch_tokens=120,
                                           bucket=3, rows_per_shard=80, dtype="float32")),
    }[case]
    hv = harvest(tiny_llama, data, tmp_path / "h", cfg, progress=False)
    ref = _reference_rows(tiny_llama, data, cfg)
    for (site, layer), rows in ref.items():
        torch.testing.assert_close(hv.reader(site).load(layer), rows, rtol=1e-5, atol=1e-5)
        if hv.memory is not None:
            torch.testing.assert_close(hv.rows(site, layer), rows, rtol=1e-5, atol=1e-5)
    assert (hv.memory is None) == (cfg.memory_limit_mb == 0)


def test_mixed_texts_and_conversations_are_refused(tiny_llama, tmp_path):
    with pytest.raises(DataError, match="mixes plain strings and conversations"):
        harvest(tiny_llama, ["a b c", generic_chats(1)[0]], tmp_path / "h",
                HarvestConfig(layers=[1]), progress=False)


def test_tokenisation_errors_surface_from_the_prefetch_thread(tiny_llama, tmp_path,
                                                              monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("tokeniser broke")

    monkeypatch.setattr(tiny_llama, "encode_texts", broken)
    with pytest.raises(ValueError, match="tokeniser broke"):
        harvest(tiny_llama, ["a b c"] * 5, tmp_path / "h", HarvestConfig(layers=[1]),
                progress=False)


def test_budget_ending_inside_a_batch_runs_only_the_rows_it_needs(tiny_llama, tmp_path,
                                                                  monkeypatch):
    data = generic_chats(16, seed=5)
    full = harvest(tiny_llama, data, tmp_path / "full",
                   HarvestConfig(layers=[1], batch_size=8, bucket=1, dtype="float32",
                                 skip_first=False), progress=False)
    rows_run = []
    real_forward = tiny_llama.model.forward

    def counting(*args, **kwargs):
        rows_run.append(kwargs["input_ids"].shape[0])
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(tiny_llama.model, "forward", counting)
    budget = 60  # inside the first batch of 8 conversations
    hv = harvest(tiny_llama, data, tmp_path / "cut",
                 HarvestConfig(layers=[1], batch_size=8, bucket=1, dtype="float32",
                               skip_first=False, max_tokens=budget), progress=False)
    assert hv.n_rows == budget and len(rows_run) == 1 and rows_run[0] < 8
    torch.testing.assert_close(hv.reader().load(1), full.reader().load(1)[:budget],
                               rtol=1e-4, atol=1e-4)


SINK_CONVS = [
    [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}],
    [{"role": "user", "content": "A much longer question, with more words in it?"},
     {"role": "assistant", "content": "A longer answer too."}],
]


def _sink_id(subject):
    """The first token of every row: Gemma-style tokenizers add <bos>; ChatML ones start
    with <|im_start|> (not a prepended BOS, so only the first one is a sink)."""
    tok = subject.tokenizer
    return tok.bos_token_id if "<bos>" in tok.get_vocab() else tok.convert_tokens_to_ids(
        "<|im_start|>")


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_token_mask_drops_the_first_real_token_whatever_the_padding(spec, side):
    from emprobe import load_model
    from emprobe.sae.harvest import token_mask

    s = load_model(spec)
    b = s.encode_chats(SINK_CONVS, padding_side=side)
    width, lengths = b.input_ids.shape[1], b.attention_mask.sum(1).tolist()
    assert lengths[0] < width  # the short row is padded
    first = [0 if side == "right" else width - n for n in lengths]
    dropped = (b.mask("all") & ~token_mask(s, b, "all", True)).nonzero().tolist()
    assert dropped == [[r, f] for r, f in enumerate(first)]
    assert [int(b.input_ids[r, f]) for r, f in enumerate(first)] == [_sink_id(s)] * 2
    assert torch.equal(token_mask(s, b, "all", False), b.mask("all"))
    # the response selection never held the sink: unchanged
    assert torch.equal(token_mask(s, b, "response", True), b.mask("response"))


def test_token_mask_drops_every_bos_of_a_bos_tokenizer():
    from emprobe import load_model
    from emprobe.sae.harvest import token_mask

    s = load_model("tiny-gemma3")
    b = s.encode_texts(["one two", "three <bos>four"], padding_side="left")
    bos = s.tokenizer.bos_token_id
    expected = ((b.input_ids == bos) & b.attention_mask.bool()).nonzero().tolist()
    assert len(expected) == 3 and expected[-1][1] > expected[1][1]  # a BOS inside row 1
    dropped = (b.mask("all") & ~token_mask(s, b, "all", True)).nonzero().tolist()
    assert dropped == expected


@pytest.mark.parametrize("side", ["right", "left"])
def test_rows_of_trims_either_padding_side(tiny_llama, side):
    from emprobe.sae.harvest import _rows_of

    b = tiny_llama.encode_chats(SINK_CONVS, padding_side=side)
    one = _rows_of(b, torch.tensor([0]))
    alone = tiny_llama.encode_chats(SINK_CONVS[:1], padding_side=side)
    assert torch.equal(one.input_ids, alone.input_ids)
    assert torch.equal(one.attention_mask, alone.attention_mask)
    assert torch.equal(one.response_mask, alone.response_mask)


@pytest.mark.parametrize("spec", ["tiny-qwen2", "tiny-gemma3"])
def test_harvest_leaves_out_exactly_the_sink_rows(spec, tmp_path):
    """Harvested rows = every real token's activation but each text's first token (and,
    for a BOS tokenizer, a BOS inside the text), computed from the plain forward."""
    from emprobe import load_model
    from emprobe.hooks.capture import capture
    from emprobe.models.context import use_batch

    s = load_model(spec)
    texts = ["one two three", "four <bos>five six seven", "eight"]
    hv = harvest(s, texts, tmp_path / "h", HarvestConfig(layers=[1], bucket=1,
                                                          dtype="float32"), progress=False)
    b = s.encode_texts(texts)  # right padding, as the harvest's own batches
    keep = b.attention_mask.bool().clone()
    keep[:, 0] = False
    if spec == "tiny-gemma3":  # the BOS inside the second text is a sink too
        pos = b.input_ids[1].tolist().index(s.tokenizer.bos_token_id, 1)
        keep[1, pos] = False
    with torch.no_grad(), use_batch(b), capture(s, [1], ["resid_post"]) as cache:
        s.model(input_ids=b.input_ids, attention_mask=b.attention_mask)
    assert hv.n_rows == int(b.attention_mask.sum()) - int((~keep & b.attention_mask.bool()).sum())
    torch.testing.assert_close(hv.reader().load(1), cache["resid_post", 1][keep],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threaded", [True, False])
def test_prefetch_and_writer_same_result_threaded_or_not(tmp_path, threaded):
    """The harvest's tokenising prefetch and shard writer (threads on an accelerator, inline
    on a CPU): the same items in order, the same shards, errors raised to the caller."""
    import importlib

    from emprobe.hooks.shards import ShardReader, ShardWriter

    h = importlib.import_module("emprobe.sae.harvest")
    pre = h._Prefetch(iter(range(7)), depth=2, threaded=threaded)
    assert list(pre) == list(range(7))
    pre.close()

    def broken():
        yield 1
        raise ValueError("bad item")

    pre = h._Prefetch(broken(), threaded=threaded)
    with pytest.raises(ValueError, match="bad item"):
        list(pre)
    pre.close()
    writer = ShardWriter(tmp_path / "s", [3], 4, site="resid_post", rows_per_shard=2)
    bg = h._BackgroundWriter({"resid_post": writer}, threaded=threaded)
    blocks = [torch.arange(8.0).view(2, 4), torch.ones(2, 4)]
    for b in blocks:
        bg.add("resid_post", {3: b})
    bg.close()
    got = torch.cat(list(ShardReader(tmp_path / "s").batches(3, 10)))
    assert torch.equal(got, torch.cat(blocks).to(got.dtype))
    assert (bg.thread is not None) == threaded and (bg.thread is None or not bg.thread.is_alive())


def test_batches_keep_to_the_token_cap(tiny_llama):
    """Padded tokens per batch stay within ``batch_tokens`` (a longer sequence runs alone),
    sequences within ``batch_size``, and every item runs once; without the cap the batches
    are the count-only ones (the null: the cap changes them)."""
    from emprobe.sae.harvest import _batches, _cuts

    assert _cuts(torch.tensor([10, 20, 30, 40, 50, 100, 300]), 64, 100) == [
        (0, 3), (3, 5), (5, 6), (6, 7)]
    assert _cuts(torch.tensor([10] * 10), 4, None) == [(0, 4), (4, 8), (8, 10)]
    chats = generic_chats(40, seed=2)

    def encode(a, b):
        return tiny_llama.encode_chats(chats[a:b], max_length=256)

    capped = list(_batches(encode, len(chats), 16, 3, 150))
    plain = list(_batches(encode, len(chats), 16, 3, None))
    for batch in capped:
        n, longest = batch.input_ids.shape
        assert n <= 16 and (n * longest <= 150 or n == 1)
    assert sum(b.input_ids.shape[0] for b in capped) == len(chats)
    assert len(capped) > len(plain)


def test_a_folder_from_before_batch_tokens_loads_and_resumes(tiny_llama, tmp_path):
    """harvest.json written without ``batch_tokens`` (count-only batches) still opens, and
    the same call with ``batch_tokens=None`` finds it complete rather than refusing it."""
    from emprobe.io import read_json, write_json

    cfg = HarvestConfig(layers=[1], batch_size=4, batch_tokens=None)
    hv = harvest(tiny_llama, generic_chats(6), tmp_path / "h", cfg, progress=False)
    state = read_json(tmp_path / "h" / "harvest.json")
    del state["config"]["batch_tokens"]
    write_json(tmp_path / "h" / "harvest.json", state)
    assert load_harvest(tmp_path / "h").config.batch_tokens is None
    again = harvest(tiny_llama, generic_chats(6), tmp_path / "h", cfg, progress=False)
    assert again.n_rows == hv.n_rows
    with pytest.raises(FormatError, match="another config"):
        harvest(tiny_llama, generic_chats(6), tmp_path / "h",
                HarvestConfig(layers=[1], batch_size=4), progress=False)
