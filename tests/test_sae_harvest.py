"""Harvesting: one pass over several sites/layers, bounded shards, exact resume."""

from __future__ import annotations

import pytest
import torch

from emprobe.errors import DataError, FormatError, SiteError
from emprobe.hooks.capture import collect
from emprobe.sae.corpus import generic_chats
from emprobe.sae.harvest import HarvestConfig, harvest, load_harvest

pytestmark = pytest.mark.usefixtures("one_thread")



def _expected(subject, data, layer, site, positions="all"):
    got = collect(subject, data, layers=[layer], site=site, positions=positions, batch_size=4,
                  max_length=256, early_exit=False)
    keep = got.token_index[:, 1] > 0
    return got.acts[layer][keep]


def test_harvest_matches_collect_over_sites_and_layers(tiny_llama, tmp_path):
    data = generic_chats(12)
    cfg = HarvestConfig(layers=[1, 3], sites=["resid_post", "mlp_out"], batch_size=4,
                        rows_per_shard=100, bucket=1)
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
                        rows_per_shard=64, bucket=1)
    hv = harvest(tiny_llama, data, tmp_path / "h", cfg, progress=False)
    full = _expected(tiny_llama, data, 2, "resid_post", positions="response")
    assert hv.n_rows == 150 < full.shape[0]
    torch.testing.assert_close(hv.reader().load(2), full[:150])


def test_length_buckets_keep_the_same_tokens(tiny_llama, tmp_path):
    data = generic_chats(12, seed=9)
    plain = harvest(tiny_llama, data, tmp_path / "a", HarvestConfig(layers=[1], bucket=1),
                    progress=False)
    sorted_ = harvest(tiny_llama, data, tmp_path / "b",
                      HarvestConfig(layers=[1], batch_size=4, bucket=3), progress=False)
    a, b = plain.reader().load(1), sorted_.reader().load(1)
    assert a.shape == b.shape
    key_a, key_b = a.norm(dim=-1).sort().values, b.norm(dim=-1).sort().values
    torch.testing.assert_close(key_a, key_b, rtol=1e-4, atol=1e-4)


class _Boom(RuntimeError):
    pass


def test_harvest_resumes_exactly_after_interruption(tiny_llama, tmp_path):
    data = generic_chats(20, seed=3)
    cfg = HarvestConfig(layers=[0, 2], batch_size=2, rows_per_shard=70)
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
