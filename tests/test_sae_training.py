"""SAE training through SAELens' trainer, SAELens-format folders, and metrics."""

from __future__ import annotations

import json

import pytest
import torch

from emprobe.errors import DataError, FormatError
from emprobe.sae.corpus import generic_chats
from emprobe.sae.harvest import HarvestConfig, harvest
from emprobe.sae.metrics import reconstruction_metrics, spliced_metrics
from emprobe.sae.training import (
    SAETrainConfig,
    load_sae,
    memory_provider,
    sae_hook_name,
    sae_site,
    shard_provider,
    site_from_hook_name,
    train_sae,
    train_saes,
)

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def tiny_harvest(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae") / "harvest"
    cfg = HarvestConfig(layers=[1, 2], batch_size=8, rows_per_shard=256)
    return harvest(tiny_llama, generic_chats(24), out, cfg, progress=False)


def _cfg(arch: str) -> SAETrainConfig:
    return SAETrainConfig(arch=arch, d_sae=128, k=8, batch_size=64, training_tokens=640,
                          lr=1e-3, l1_coefficient=1.0)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "standard"])
def test_each_architecture_trains_and_saelens_loads_it(tiny_harvest, tmp_path, arch):
    import sae_lens

    tr = train_sae(tiny_harvest, 2, _cfg(arch), tmp_path / arch, progress=False)
    assert tr.record["steps"] == 10 and tr.record["trained_tokens"] == 640
    folder = tmp_path / arch
    loaded = sae_lens.SAE.load_from_disk(str(folder))
    assert loaded.cfg.d_in == 64 and loaded.cfg.d_sae == 128
    md = loaded.cfg.metadata
    assert md.model_name == "tiny-llama" and md.emprobe_site == "resid_post"
    assert md.emprobe_layer == 2 and md.hook_name == "blocks.2.hook_resid_post"
    assert md.emprobe_hook_name_bridge == "blocks.2.hook_out"
    assert "decoder block" in md.emprobe_layer_convention
    assert sae_site(loaded) == ("resid_post", 2)
    rec = json.loads((folder / "emprobe.json").read_text())
    assert rec["site"] == "resid_post" and rec["layer"] == 2 and rec["config"]["arch"] == arch
    # the saved weights are the trained ones: same reconstruction on fresh inputs
    x = tiny_harvest.reader().load(2)[:32]
    trained = tr.training_sae.eval()
    expected = {k: v.clone() for k, v in trained.state_dict().items()}
    trained.process_state_dict_for_saving_inference(expected)  # SAELens' own conversion
    got = loaded.state_dict()
    assert sorted(got) == sorted(expected)
    for key in expected:
        torch.testing.assert_close(got[key].float(), expected[key].float())
    with torch.no_grad():
        if arch == "batchtopk":  # saved as JumpReLU with the learned threshold
            assert loaded.cfg.architecture() == "jumprelu"
            assert float(loaded.threshold[0]) == pytest.approx(float(trained.topk_threshold))
        else:
            torch.testing.assert_close(loaded.decode(loaded.encode(x)),
                                       trained.decode(trained.encode(x)), rtol=1e-4, atol=1e-4)
    # training reduces the error relative to the untrained start
    assert reconstruction_metrics(loaded, [x])["explained_variance"] > -1.0


def test_train_many_from_one_harvest(tiny_harvest, tmp_path):
    wide = SAETrainConfig(arch="topk", d_sae=256, k=8, batch_size=64, training_tokens=640)
    jobs = [("resid_post", 1, _cfg("topk")), ("resid_post", 2, _cfg("standard")),
            ("resid_post", 1, wide)]
    out = train_saes(tiny_harvest, jobs, tmp_path, progress=False)
    names = sorted(p.folder.name for p in out)
    assert names == ["resid_post.1.topk.k8.w128", "resid_post.1.topk.k8.w256",
                     "resid_post.2.standard"]
    assert load_sae(tmp_path / "resid_post.1.topk.k8.w256").cfg.d_sae == 256
    # the fixture's harvest kept its rows in RAM: no shard is read back; cost is amortised
    assert tiny_harvest.memory is not None and tiny_harvest.seconds > 0
    for tr in out:
        assert tr.record["data_source"] == "memory"
        share = tiny_harvest.seconds / 3
        assert tr.record["amortised_seconds"] == pytest.approx(tr.record["train_seconds"] + share)
    with pytest.raises(DataError):
        train_saes(tiny_harvest, [("resid_post", 1, _cfg("topk"))] * 2, tmp_path / "x",
                   progress=False)


def test_memory_and_shard_sources_train_alike(tiny_harvest, tmp_path):
    from emprobe.sae.harvest import load_harvest

    on_disk = load_harvest(tiny_harvest.folder)  # a reload has no in-memory rows
    assert on_disk.memory is None
    tr = train_sae(on_disk, 1, _cfg("topk"), tmp_path / "disk", progress=False)
    assert tr.record["data_source"] == "shards" and tr.record["trained_tokens"] == 640
    # the memory provider: float32 batches, every row once per epoch
    rows = torch.arange(10 * 3, dtype=torch.bfloat16).reshape(10, 3)
    it = memory_provider(rows, 5, seed=1)
    epoch = torch.cat([next(it), next(it)])
    assert epoch.dtype == torch.float32
    assert sorted(epoch[:, 0].tolist()) == rows[:, 0].float().tolist()
    with pytest.raises(DataError):
        next(memory_provider(rows, 11))


def test_hook_name_resolves_in_bridge_and_hooked_sae_transformer(tiny_llama, tiny_harvest,
                                                                 tmp_path):
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    from emprobe.hooks.bridges import to_transformer_lens
    from emprobe.hooks.capture import capture

    tr = train_sae(tiny_harvest, 1, _cfg("topk"), tmp_path / "sae", progress=False)
    hook = tr.sae.cfg.metadata.hook_name
    assert hook == sae_hook_name("resid_post", 1) == "blocks.1.hook_resid_post"
    # TransformerLens bridge: the name is an alias of emprobe's resid_post[1]
    bridge = to_transformer_lens(tiny_llama)
    assert hook in bridge.hook_dict
    batch = tiny_llama.encode_texts(["a short test sentence"])
    _, cache = bridge.run_with_cache(batch.input_ids, names_filter=lambda n: n == hook)
    with capture(tiny_llama, 1) as ours:
        tiny_llama.forward(batch)
    torch.testing.assert_close(cache[hook], ours["resid_post", 1], rtol=1e-4, atol=1e-4)
    # classic HookedSAETransformer (built offline from a config of the same width)
    classic = HookedSAETransformer(HookedTransformerConfig(
        n_layers=2, d_model=64, d_head=16, n_ctx=32, d_vocab=50, act_fn="relu"))
    classic.add_sae(tr.sae)
    assert list(classic.acts_to_saes) == [hook]
    assert sae_hook_name("mlp_out", 3) == "blocks.3.hook_mlp_out"


def test_shard_provider_cycles_fixed_batches(tiny_harvest):
    reader = tiny_harvest.reader()
    it = shard_provider(reader, 1, 100)
    n_batches = reader.n_rows // 100 + 3  # past one epoch
    batches = [next(it) for _ in range(n_batches)]
    assert all(b.shape == (100, 64) for b in batches)
    with pytest.raises(DataError):
        next(shard_provider(reader, 1, reader.n_rows + 1))


def test_load_foreign_saelens_folder_and_hook_names(tmp_path):
    import sae_lens

    cfg = sae_lens.StandardSAEConfig(d_in=8, d_sae=16)
    cfg.metadata.hook_name = "blocks.3.hook_resid_post"
    sae_lens.StandardSAE(cfg).save_model(tmp_path / "foreign")
    sae = load_sae(tmp_path / "foreign")
    assert sae_site(sae) == ("resid_post", 3)
    assert site_from_hook_name("blocks.4.mlp.hook_out") == ("mlp_out", 4)
    assert site_from_hook_name("blocks.0.hook_in") == ("resid_pre", 0)
    with pytest.raises(FormatError):
        site_from_hook_name("embed.hook_out")
    with pytest.raises(FormatError):
        load_sae(tmp_path / "missing")
    with pytest.raises(DataError):
        SAETrainConfig(arch="gated").check()


def _identity_sae(d: int):
    """A standard SAE with W_enc = [I, -I]: relu(x) - relu(-x) = x reconstructs exactly."""
    import sae_lens

    sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=d, d_sae=2 * d,
                                                          apply_b_dec_to_input=False))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_reconstruction_metrics_identity_and_dead_latents():
    d = 6
    sae = _identity_sae(d)
    x = torch.rand(200, d) + 0.1  # positive only: the -I half never fires
    m = reconstruction_metrics(sae, [x[:120], x[120:]])
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert m["dead_latents"] == d and m["frac_alive"] == pytest.approx(0.5)
    assert m["l0"] == pytest.approx(d) and m["n_tokens"] == 200
    with torch.no_grad():  # predicting the mean explains nothing
        sae.W_dec.zero_()
        sae.b_dec.copy_(x.mean(0))
    assert reconstruction_metrics(sae, [x])["explained_variance"] == pytest.approx(0.0, abs=1e-6)


def test_spliced_metrics_identity_recovers_all_loss(tiny_llama):
    data = generic_chats(4, seed=2)
    m = spliced_metrics(tiny_llama, _identity_sae(64), "resid_post", 1, data)
    assert m["ce_sae"] == pytest.approx(m["ce_clean"], abs=1e-4)
    assert m["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert m["kl_sae"] == pytest.approx(0.0, abs=1e-4)
    assert m["ce_zero"] != pytest.approx(m["ce_clean"])
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-5)


def test_quality_gate_flags_low_negative_and_dead():
    from emprobe.errors import QualityError
    from emprobe.sae.metrics import check_quality

    good = check_quality({"explained_variance": 0.82, "frac_alive": 0.95})
    assert good["ok"] and good["dead_fraction"] == pytest.approx(0.05) and not good["problems"]
    with pytest.raises(QualityError, match="negative explained variance"):
        check_quality({"explained_variance": -0.036, "frac_alive": 0.9})
    flagged = check_quality({"explained_variance": 0.5, "frac_alive": 1 - 766 / 1152},
                            raise_error=False)
    assert not flagged["ok"] and len(flagged["problems"]) == 2
    assert not check_quality({"explained_variance": float("nan"), "frac_alive": 1.0},
                             raise_error=False)["ok"]
    with pytest.raises(DataError):
        check_quality({"l0": 3.0})


def _train_with_and_without(harvest, tmp_path, flag: str, tol: tuple[float, float], **kw):
    """Train the same tiny TopK SAE with ``flag`` on (the default) and off; their weights
    must agree to ``tol`` (rtol, atol). Returns both training results."""
    base = dict(arch="topk", d_sae=128, k=8, batch_size=64, training_tokens=640, lr=1e-3, **kw)
    on = train_sae(harvest, 2, SAETrainConfig(**base), tmp_path / "on", progress=False)
    off = train_sae(harvest, 2, SAETrainConfig(**base, **{flag: False}), tmp_path / "off",
                    progress=False)
    a, b = on.training_sae.state_dict(), off.training_sae.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=tol[0], atol=tol[1])
    return on, off


def test_fused_adam_gives_saelens_update(tiny_harvest, tmp_path):
    """The fused kernel replaces only the kernel: same weights as SAELens' own Adam."""
    fused, plain = _train_with_and_without(tiny_harvest, tmp_path, "fused_adam", (1e-4, 1e-5),
                                           lr_decay_fraction=0.5)
    assert fused.record["fused_adam"] is True and plain.record["fused_adam"] is False


def test_use_fused_adam_keeps_the_schedule_and_refuses_a_started_trainer():
    import sae_lens
    from sae_lens.config import SAETrainerConfig

    from emprobe.sae.training import use_fused_adam

    sae = sae_lens.TrainingSAE.from_dict(
        sae_lens.TopKTrainingSAEConfig(d_in=8, d_sae=16, k=2).to_dict())
    cfg = SAETrainerConfig(total_training_samples=40, train_batch_size_samples=4, lr=1e-2,
                           lr_end=1e-3, lr_decay_steps=5)
    trainer = sae_lens.SAETrainer(cfg, sae, iter([torch.randn(4, 8) for _ in range(10)]))
    lrs_default = []
    for _ in range(10):
        lrs_default.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.lr_scheduler.step()
    trainer = sae_lens.SAETrainer(cfg, sae, iter([torch.randn(4, 8) for _ in range(10)]))
    assert use_fused_adam(trainer) is True
    assert trainer.optimizer.defaults["fused"] is True
    lrs_fused = []
    for _ in range(10):
        lrs_fused.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.lr_scheduler.step()
    assert lrs_fused == pytest.approx(lrs_default)
    assert use_fused_adam(trainer) is False  # already fused
    trainer = sae_lens.SAETrainer(cfg, sae, iter([]))
    trainer.n_training_steps = 1
    assert use_fused_adam(trainer) is False  # would lose Adam state


@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_sparse_topk_step_matches_saelens_step(rescale, apply_b_dec):
    """Same loss, activations and gradients as SAELens' dense TopK step."""
    import sae_lens
    from sae_lens.saes.sae import TrainStepInput

    from emprobe.sae.topk_step import sparse_topk_class

    cfg = sae_lens.TopKTrainingSAEConfig(d_in=24, d_sae=96, k=5, apply_b_dec_to_input=apply_b_dec,
                                         rescale_acts_by_decoder_norm=rescale)
    torch.manual_seed(3)
    dense = sae_lens.TrainingSAE.from_dict(cfg.to_dict())
    sparse = sparse_topk_class()(sae_lens.TopKTrainingSAEConfig.from_dict(cfg.to_dict()))
    sparse.load_state_dict(dense.state_dict())
    with torch.no_grad():  # non-trivial biases and decoder norms
        for m in (dense, sparse):
            torch.manual_seed(4)
            m.b_dec.normal_()
            m.b_enc.normal_(0, 0.1)
            m.W_dec.mul_(torch.rand(96, 1) + 0.5)
    x = torch.randn(32, 24) * 2

    def run(m, dead):
        m.zero_grad()
        out = m.training_forward_pass(TrainStepInput(
            sae_in=x, dead_neuron_mask=dead, coefficients={}, n_training_steps=0,
            is_logging_step=False))
        out.loss.backward()
        return out

    none_dead = torch.zeros(96, dtype=torch.bool)
    a, b = run(dense, none_dead), run(sparse, none_dead)
    assert sparse.sparse_steps == 1 and sparse.dense_steps == 0
    torch.testing.assert_close(b.loss, a.loss)
    torch.testing.assert_close(b.sae_out, a.sae_out)
    torch.testing.assert_close(b.feature_acts, a.feature_acts)
    assert set(b.losses) == set(a.losses)
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    # dead latents: SAELens' aux-k loss, sparse too; fewer dead than d_in // 2 (all of them
    # reconstruct, scaled down) and more (the top d_in // 2 per row)
    for n_dead in (10, 40):
        dead = none_dead.clone()
        dead[torch.randperm(96, generator=torch.Generator().manual_seed(n_dead))[:n_dead]] = True
        a, b = run(dense, dead), run(sparse, dead)
        assert sparse.dense_steps == 0
        assert float(a.losses["auxiliary_reconstruction_loss"]) > 0
        for key in ("mse_loss", "auxiliary_reconstruction_loss"):
            torch.testing.assert_close(b.losses[key], a.losses[key], msg=key)
        for (name, p), q in zip(dense.named_parameters(), sparse.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    if rescale:  # a zero decoder row: SAELens divides by its norm; its own step runs
        with torch.no_grad():
            for m in (dense, sparse):
                m.W_dec[7] = 0.0
        a, b = run(dense, none_dead), run(sparse, none_dead)
        assert sparse.dense_steps == 1
        torch.testing.assert_close(b.loss, a.loss, equal_nan=True)
    half = sparse_topk_class()(sae_lens.TopKTrainingSAEConfig.from_dict(
        {**cfg.to_dict(), "dtype": "bfloat16"}))  # no bf16 CSR kernels on the CPU
    half.training_forward_pass(TrainStepInput(sae_in=x.bfloat16(), dead_neuron_mask=none_dead,
                                              coefficients={}, n_training_steps=0,
                                              is_logging_step=False))
    assert half.dense_steps == 1 and half.sparse_steps == 0


def test_sparse_aux_loss_would_fail_without_its_gradients():
    """Null input for the aux-k comparison above: with the aux decode's gradient dropped the
    dead latents' encoder columns get none, so the check there can fail."""
    import sae_lens
    from sae_lens.saes.sae import TrainStepInput

    from emprobe.sae.topk_step import sparse_topk_class

    cfg = sae_lens.TopKTrainingSAEConfig(d_in=24, d_sae=96, k=5)
    torch.manual_seed(3)
    sae = sparse_topk_class()(cfg)
    dead = torch.zeros(96, dtype=torch.bool)
    dead[:40] = True
    out = sae.training_forward_pass(TrainStepInput(
        sae_in=torch.randn(32, 24), dead_neuron_mask=dead, coefficients={}, n_training_steps=0,
        is_logging_step=False))
    out.losses["auxiliary_reconstruction_loss"].backward()
    assert float(sae.W_enc.grad[:, :40].abs().sum()) > 0  # dead columns learn from aux only
    assert float(sae.W_enc.grad[:, 40:].abs().sum()) == 0


def test_train_sae_uses_the_sparse_topk_step(tiny_harvest, tmp_path):
    fast, ref = _train_with_and_without(tiny_harvest, tmp_path, "sparse_topk", (1e-3, 1e-4),
                                        dead_feature_window=1000)
    assert fast.record["sparse_topk_steps"] == 10 and ref.record["sparse_topk_steps"] == 0
    assert type(load_sae(tmp_path / "on")).__name__ == type(load_sae(tmp_path / "off")).__name__


def test_sparse_topk_step_under_bf16_autocast(tiny_harvest, tmp_path):
    cfg = SAETrainConfig(arch="topk", d_sae=128, k=8, batch_size=64, training_tokens=640,
                         lr=1e-3, autocast=True)
    tr = train_sae(tiny_harvest, 2, cfg, tmp_path / "bf16", progress=False)
    assert tr.record["sparse_topk_steps"] == 10
    assert all(torch.isfinite(p).all() for p in tr.training_sae.parameters())
