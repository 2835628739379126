"""The sae / crosscoder CLI on tiny models, and the whole path on the embedded model."""

from __future__ import annotations

import json

import pytest

from emprobe.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cli_harvest_train_diff_crosscoder_tiny(tmp_path, capsys):
    import sae_lens

    assert main(["sae", "harvest", "--model", "tiny-llama", "--layers", "1,2",
                 "--sites", "resid_post,mlp_out", "--tokens", "600", "--out",
                 str(tmp_path / "h")]) == 0
    assert "600 tokens x 2 layers x 2 sites" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["sae", "train", "--model", "tiny-llama", "--layer", "2", "--arch",
                 "topk,standard", "--k", "8", "--expansion", "2", "--tokens", "800",
                 "--sae-batch-size", "64", "--eval-items", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "explained variance" in printed and "loss recovered" in printed
    sae_dir = out / "resid_post.2.topk.k8"
    sae = sae_lens.SAE.load_from_disk(str(sae_dir))
    assert sae.cfg.d_sae == 128 and sae.cfg.metadata.emprobe_layer == 2
    metrics = json.loads((sae_dir / "metrics.json").read_text())
    assert metrics["l0"] <= 8 + 1e-6 and 0 <= metrics["dead_latents"] <= 128
    assert (sae_dir / "latent_frequency.html").is_file()
    assert main(["sae", "diff", "--base", "tiny-llama", "--ft", "tiny-llama", "--sae",
                 str(sae_dir), "--out", str(tmp_path / "diff"), "--steer", "1",
                 "--questions", "2", "--coeffs", "1.0", "--n-boot", "50",
                 "--max-answers", "2", "--top", "2", "--contexts", "2"]) == 0
    diff = json.loads((tmp_path / "diff" / "diff.json").read_text())
    assert diff["layer"] == 2 and diff["candidates"]
    # the same model on both sides: every activation difference is zero
    assert all(c["mean_diff"] == 0 for c in diff["candidates"])
    assert "contexts" in diff["candidates"][0] and "rank_mean_diff" in diff["candidates"][0]
    steering = json.loads((tmp_path / "diff" / "steering.json").read_text())  # local score
    row = steering["latents"][0]
    assert row["latent"] == diff["candidates"][0]["latent"] and row["scores"][0]["coeff"] == 1.0
    b = steering["baseline"]
    assert b["lo"] <= b["mean"] <= b["hi"]
    s = row["scores"][0]  # paired interval of the change, from emprobe.evaluate.local.compare
    assert s["delta_lo"] <= s["delta"] <= s["delta_hi"]
    assert s["delta"] == pytest.approx(s["mean"] - b["mean"], abs=1e-6)
    assert main(["crosscoder", "train", "--base", "tiny-llama", "--ft", "tiny-llama",
                 "--layer", "1", "--tokens", "600", "--sae-batch-size", "100",
                 "--expansion", "2", "--out", str(tmp_path / "cc")]) == 0
    assert (tmp_path / "cc" / "crosscoder" / "crosscoder.safetensors").is_file()
    assert (tmp_path / "cc" / "crosscoder" / "norm_ratio.html").is_file()


def test_cli_bad_arch_is_one_line_error(tmp_path, capsys):
    code = main(["sae", "train", "--model", "tiny-llama", "--layer", "1", "--arch", "gated",
                 "--tokens", "200", "--out", str(tmp_path)])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert "gated" in err and len(err.splitlines()) == 1


@pytest.mark.integration
def test_embedded_harvest_train_load_metrics(embedded, tmp_path):
    """~3k tokens at a middle layer, a small TopK SAE, SAELens load, metrics JSON."""
    import sae_lens

    from emprobe.sae import (
        HarvestConfig,
        SAETrainConfig,
        evaluate_sae,
        generic_chats,
        harvest,
        train_sae,
    )

    layer = embedded.n_layers // 2
    hv = harvest(embedded, generic_chats(100), tmp_path / "h",
                 HarvestConfig(layers=[layer], max_tokens=3000, rows_per_shard=1024),
                 progress=False)
    assert hv.n_rows == 3000 and len(hv.reader().manifest["shards"]) == 3
    tr = train_sae(hv, layer, SAETrainConfig(arch="topk", k=16, expansion=2, batch_size=128,
                                             training_tokens=6000, lr=1e-3),
                   tmp_path / "sae", progress=False)
    sae = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"))
    assert sae.cfg.d_in == embedded.d_model and sae.cfg.metadata.emprobe_layer == layer
    m = evaluate_sae(embedded, sae, "resid_post", layer, generic_chats(4, seed=99),
                     out_dir=tr.folder)
    saved = json.loads((tr.folder / "metrics.json").read_text())
    assert saved["l0"] == pytest.approx(16.0, abs=1e-6)
    # a briefly trained SAE explains some variance and recovers part of the loss
    assert 0.0 < m["explained_variance"] < 1.0
    assert m["ce_clean"] < m["ce_sae"] < m["ce_zero"]
    assert 0.0 < m["loss_recovered"] < 1.0 and m["kl_sae"] > 0


def test_embedded_training_streams_the_shards(embedded, tmp_path):
    """The embedded model's harvest with nothing kept in RAM: training reads the bf16 shards
    batch by batch (uneven shards, batches across them); one epoch of the reader's
    shuffled batches is a permutation of every harvested row, and the SAE trains from them.
    The null: the unshuffled batches are the rows in order, the shuffled ones are not."""
    import torch

    from emprobe.sae import HarvestConfig, SAETrainConfig, generic_chats, harvest, train_sae

    layer = embedded.n_layers // 2
    hv = harvest(embedded, generic_chats(60), tmp_path / "h",
                 HarvestConfig(layers=[layer], max_tokens=1500, rows_per_shard=700,
                               memory_limit_mb=0), progress=False)
    assert hv.memory is None and len(hv.reader().manifest["shards"]) == 3
    reader = hv.reader()
    rows = reader.load(layer)
    shuffled = torch.cat(list(reader.batches(layer, 128, shuffle_seed=5)))
    assert torch.equal(torch.cat(list(reader.batches(layer, 128))), rows)
    assert not torch.equal(shuffled, rows)
    for a, b in zip(torch.unique(shuffled, dim=0, return_counts=True),
                    torch.unique(rows, dim=0, return_counts=True), strict=True):
        assert torch.equal(a, b)  # the same rows, each as often
    tr = train_sae(hv, layer, SAETrainConfig(arch="topk", k=8, expansion=2, batch_size=128,
                                             training_tokens=2560, lr=1e-3),
                   tmp_path / "sae", progress=False)
    assert tr.record["data_source"] == "shards" and tr.record["trained_tokens"] == 2560
