"""SAE input normalisation the SAELens way (``expected_average_only_in``): the estimate,
scale-invariant training, and folders that tell SAELens the truth."""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import asdict

import pytest
import torch

from emprobe.errors import FormatError
from emprobe.hooks.shards import ShardWriter
from emprobe.io import write_json
from emprobe.sae.folder import load_sae
from emprobe.sae.harvest import LAYER_CONVENTION, HarvestConfig, load_harvest
from emprobe.sae.metrics import reconstruction_metrics
from emprobe.sae.normalise import FOLDED_KEY, estimate_norm_scaling_factor
from emprobe.sae.training import SAETrainConfig, memory_provider, train_sae

pytestmark = pytest.mark.usefixtures("one_thread")

D = 32


def _sparse_rows(n: int = 2048, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    """``[n, D]`` rows: sums of about 4 of 64 unit features with random weights, times
    ``scale`` (a model whose residual norms are ``scale`` times another's)."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(64, D, generator=g), dim=1)
    codes = (torch.rand(n, 64, generator=g) < 4 / 64) * torch.rand(n, 64, generator=g) * 2
    return scale * (codes @ feats + 0.01 * torch.randn(n, D, generator=g))


def _harvest_of(rows: torch.Tensor, folder):
    """A harvest folder holding ``rows`` as layer 0 of ``resid_post`` (float32)."""
    folder.mkdir(parents=True)
    cfg = HarvestConfig(layers=[0], dtype="float32")
    writer = ShardWriter(folder / "resid_post", [0], D, rows_per_shard=len(rows),
                         dtype=torch.float32)
    writer.add({0: rows})
    writer.close()
    write_json(folder / "harvest.json", {
        "model": "synthetic", "d_model": D, "n_layers": 1, "layer_convention": LAYER_CONVENTION,
        "config": asdict(cfg), "complete": True, "n_rows": len(rows)})
    return load_harvest(folder)


def _cfg(norm: str, arch: str = "standard") -> SAETrainConfig:
    return SAETrainConfig(arch=arch, d_sae=128, k=4, batch_size=64, training_tokens=6144,
                          lr=3e-3, normalize_activations=norm)


def test_estimate_is_saelens_activation_scaler():
    from sae_lens.training.activation_scaler import ActivationScaler

    rows = _sparse_rows(1024, scale=700.0)
    ours = estimate_norm_scaling_factor(memory_provider(rows, 64, seed=3), D, 5)
    theirs = ActivationScaler()
    theirs.estimate_scaling_factor(D, memory_provider(rows, 64, seed=3), 5)
    assert ours == theirs.scaling_factor
    # sqrt(d_in) / mean norm: the scaled rows have mean norm sqrt(D) (over the sample)
    assert float((rows * ours).norm(dim=-1).mean()) == pytest.approx(D**0.5, rel=0.05)


def test_normalised_training_is_scale_invariant_unnormalised_is_not(tmp_path):
    """The same hyper-parameters on activations 10,000 times apart: with the SAELens scaling
    the runs match (the folded SAEs differ only by the scale); without it the small-norm run
    learns nothing under the same L1 coefficient."""
    results = {}
    for scale in (0.01, 100.0):
        rows = _sparse_rows(scale=scale)
        hv = _harvest_of(rows, tmp_path / f"h{scale}")
        for norm in ("none", "expected_average_only_in"):
            tr = train_sae(hv, 0, _cfg(norm), tmp_path / f"{norm}{scale}", progress=False)
            results[norm, scale] = (reconstruction_metrics(tr.sae, [rows]), tr, rows)
    small, big = (results["expected_average_only_in", s][0] for s in (0.01, 100.0))
    assert small["explained_variance"] > 0.2
    assert small["explained_variance"] == pytest.approx(big["explained_variance"], abs=1e-3)
    assert small["l0"] == pytest.approx(big["l0"], rel=1e-3)
    # the two folded SAEs give the same latents on their own inputs: the inputs agree to
    # float rounding, which training amplifies here and there (a latent near its ReLU
    # threshold; SAELens' own trainer shows it on other data seeds), so all but < 1 %
    sae_s, sae_b = (results["expected_average_only_in", s][1].sae for s in (0.01, 100.0))
    rows_s, rows_b = (results["expected_average_only_in", s][2] for s in (0.01, 100.0))
    with torch.no_grad():
        a, b = sae_s.encode(rows_s[:256]), sae_b.encode(rows_b[:256])
    assert float(((a - b).abs() > 1e-3 + 1e-3 * b.abs()).float().mean()) < 0.01
    raw_small = results["none", 0.01][0]
    assert raw_small["explained_variance"] < small["explained_variance"] - 0.2
    factors = [results["expected_average_only_in", s][1].record["norm_scaling_factor"]
               for s in (0.01, 100.0)]
    assert factors[0] == pytest.approx(factors[1] * 1e4, rel=1e-4)
    assert results["none", 0.01][1].record["norm_scaling_factor"] is None


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_saved_sae_reads_raw_activations_as_trained(tmp_path, monkeypatch, arch):
    """The folder SAELens loads reconstructs raw rows exactly as the SAE did in training on
    the scaled rows (snapshot taken by SAELens' fold, just before it folds)."""
    import sae_lens
    from sae_lens.saes.sae import SAE

    seen = {}
    real_fold = SAE.fold_activation_norm_scaling_factor

    def spy(self, scaling_factor):
        if "snapshot" not in seen:
            seen["snapshot"], seen["factor"] = copy.deepcopy(self), scaling_factor
        return real_fold(self, scaling_factor)

    monkeypatch.setattr(SAE, "fold_activation_norm_scaling_factor", spy)
    rows = _sparse_rows(scale=5000.0)
    hv = _harvest_of(rows, tmp_path / "h")
    tr = train_sae(hv, 0, _cfg("expected_average_only_in", arch), tmp_path / "sae",
                   progress=False)
    factor = tr.record["norm_scaling_factor"]
    assert seen["factor"] == factor
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["normalize_activations"] == "none"  # folded: nothing left to apply
    assert cfg["metadata"][FOLDED_KEY] == factor
    x = rows[:200]
    # the SAE as trained (unfolded, on scaled rows), converted for inference by SAELens
    # (BatchTopK becomes JumpReLU); SAELens' load_from_disk applies no scaling itself
    seen["snapshot"].save_inference_model(str(tmp_path / "unfolded"))
    trained = sae_lens.SAE.load_from_disk(str(tmp_path / "unfolded"))
    assert trained.cfg.normalize_activations == "expected_average_only_in"
    with torch.no_grad():
        expected = trained.decode(trained.encode(x * factor)) / factor
        for loaded in (sae_lens.SAE.load_from_disk(str(tmp_path / "sae")),
                       load_sae(tmp_path / "sae")):
            got = loaded.decode(loaded.encode(x))
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * 5000)
    assert reconstruction_metrics(tr.sae, [rows])["explained_variance"] > 0.2


def _foreign_scaled_folder(folder, meta_factor):
    """A SAELens standard SAE saved unfolded with ``expected_average_only_in``."""
    import sae_lens

    torch.manual_seed(0)
    cfg = sae_lens.StandardSAEConfig(d_in=D, d_sae=64, normalize_activations="expected_average_only_in")
    cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    if meta_factor is not None:
        cfg.metadata.norm_scaling_factor = meta_factor
    sae = sae_lens.StandardSAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
    sae.save_model(folder)
    return sae


def test_foreign_unfolded_folder_gets_its_factor_folded(tmp_path):
    factor = 0.004
    original = _foreign_scaled_folder(tmp_path / "f", factor)
    sae = load_sae(tmp_path / "f")
    assert sae.cfg.normalize_activations == "none"
    x = _sparse_rows(100, scale=250.0)
    with torch.no_grad():
        expected = original.decode(original.encode(x * factor)) / factor
        torch.testing.assert_close(sae.decode(sae.encode(x)), expected, rtol=1e-4, atol=1e-3)


def test_foreign_unfolded_folder_without_factor_warns(tmp_path):
    _foreign_scaled_folder(tmp_path / "f", None)
    with pytest.warns(UserWarning, match="no norm_scaling_factor"):
        load_sae(tmp_path / "f")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _foreign_scaled_folder(tmp_path / "g", 0.5)
        load_sae(tmp_path / "g")


@pytest.mark.parametrize("bad", [-1.0, 0, "0.5"])
def test_bad_scaling_factor_is_one_line_format_error(tmp_path, bad):
    _foreign_scaled_folder(tmp_path / "f", 0.5)
    path = tmp_path / "f" / "cfg.json"
    raw = json.loads(path.read_text())
    raw["metadata"]["norm_scaling_factor"] = bad
    path.write_text(json.dumps(raw))
    with pytest.raises(FormatError, match=r"cfg\.json.*norm_scaling_factor") as err:
        load_sae(tmp_path / "f")
    assert "\n" not in str(err.value)
