"""Crosscoder: the relative decoder norm separates planted shared and model-specific features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from emprobe.errors import DataError, FormatError
from emprobe.hooks.shards import ShardWriter
from emprobe.io import write_json
from emprobe.sae.crosscoder import (
    CrosscoderConfig,
    classify_latents,
    load_crosscoder,
    paired_provider,
    train_crosscoder,
)
from emprobe.sae.figures import norm_ratio_figure, save_figure

pytestmark = pytest.mark.usefixtures("one_thread")



def _fake_harvest(folder, x, rows_per_shard=1000):
    with ShardWriter(folder / "resid_post", [0], x.shape[1], rows_per_shard=rows_per_shard) as w:
        w.add({0: x})
    write_json(folder / "harvest.json", {"config": {"layers": [0], "sites": ["resid_post"]},
                                         "complete": True, "d_model": x.shape[1],
                                         "model": folder.name})


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Base and fine-tune share 6 feature directions; 3 exist only in the fine-tune, 2 only
    in the base. Sparse non-negative feature activations, orthonormal directions."""
    torch.manual_seed(0)
    d, n = 16, 4000
    dirs = torch.linalg.qr(torch.randn(d, d))[0].T
    shared, ft_only, base_only = dirs[:6], dirs[6:9], dirs[9:11]

    def acts(k):
        return (torch.rand(n, k) < 0.15).float() * (1 + torch.rand(n, k))

    a_shared = acts(6)
    xb = a_shared @ shared + acts(2) @ base_only
    xf = a_shared @ shared + acts(3) @ ft_only
    root = tmp_path_factory.mktemp("cc")
    _fake_harvest(root / "base", xb)
    _fake_harvest(root / "ft", xf)
    return root, {"shared": shared, "ft": ft_only, "base": base_only}


@pytest.mark.parametrize("arch", ["batchtopk", "l1"])
def test_norm_ratio_separates_shared_and_specific(planted, tmp_path, arch):
    root, feats = planted
    cfg = CrosscoderConfig(arch=arch, d_sae=32, k=3, batch_size=200, training_tokens=4000 * 8,
                           lr=3e-3, l1_coefficient=0.5)
    tc = train_crosscoder(root / "base", root / "ft", 0, cfg, tmp_path / "cc", progress=False)
    assert tc.record["explained_variance_last_tenth"] > 0.85
    rel = tc.model.relative_norm()
    w = tc.model.W_dec.detach()
    for kind, model_idx, lo, hi in (("shared", 1, 0.3, 0.7), ("ft", 1, 0.7, 1.01),
                                    ("base", 0, -0.01, 0.3)):
        cos = F.normalize(w[:, model_idx], dim=-1) @ feats[kind].T  # [d_sae, n_feats]
        best = cos.argmax(0)
        assert (cos.max(0).values > 0.8).all(), f"{kind} features not learned"
        assert ((rel[best] > lo) & (rel[best] < hi)).all(), f"{kind}: {rel[best].tolist()}"
    # save / load round trip
    back = load_crosscoder(tmp_path / "cc")
    torch.testing.assert_close(back.model.relative_norm(), rel)
    torch.testing.assert_close(back.scales, tc.scales)
    assert back.record["counts"]["ft"] >= 3 and back.record["layer"] == 0
    fig = norm_ratio_figure(rel)
    assert save_figure(fig, tmp_path / "fig.html").is_file()


def test_crosscoder_input_checks(planted, tmp_path):
    root, _ = planted
    assert classify_latents(torch.tensor([0.1, 0.5, 0.9])) == ["base", "shared", "ft"]
    with pytest.raises(DataError):
        CrosscoderConfig(arch="topk").check()
    with pytest.raises(DataError):
        CrosscoderConfig(low=0.8, high=0.2).check()
    _fake_harvest(tmp_path / "other", torch.randn(4000, 16), rows_per_shard=700)
    from emprobe.sae.harvest import load_harvest

    with pytest.raises(FormatError):
        next(paired_provider(load_harvest(root / "base").reader(),
                             load_harvest(tmp_path / "other").reader(), 0, 100))
    with pytest.raises(FormatError):
        load_crosscoder(tmp_path)
