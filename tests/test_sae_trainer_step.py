"""emprobe's SAELens trainer step (clipping inside fused Adam) against SAELens' own step."""

from __future__ import annotations

import pytest
import torch

from emprobe.sae.topk_step import _csr, _Transposed
from emprobe.sae.trainer_step import clip_and_step, fused_adam_in_use, trainer_class
from emprobe.sae.training import SAETrainConfig, _trainer_config, _training_sae, use_fused_adam

pytestmark = pytest.mark.usefixtures("one_thread")

D_IN, STEPS, BATCH = 16, 12, 32


def _batches() -> list[torch.Tensor]:
    """Batches whose scales vary by 300x, so the clipped gradient norm changes from step to
    step (Adam is blind to a constant factor: a varying one is what clipping changes)."""
    gen = torch.Generator().manual_seed(5)
    scales = [0.1, 30.0, 1.0, 10.0, 0.3, 3.0] * (STEPS // 6 + 1)
    return [torch.randn(BATCH, D_IN, generator=gen) * s for s in scales[:STEPS]]


def _trained(arch: str, trainer_type: type, fused: bool = True, dead_window: int = 1000,
             sparse: bool = True):
    """(SAE, trainer) after STEPS steps of ``trainer_type`` from one fixed initialisation."""
    cfg = SAETrainConfig(arch=arch, d_sae=64, k=4, batch_size=BATCH, lr=3e-2,
                         training_tokens=STEPS * BATCH, normalize_activations="none",
                         dead_feature_window=dead_window, fused_adam=fused, sparse_topk=sparse)
    torch.manual_seed(0)
    sae = _training_sae(cfg, D_IN, {})
    trainer = trainer_type(_trainer_config(cfg, STEPS), sae, iter(_batches()))
    if fused:
        assert use_fused_adam(trainer)
    trainer.fit()
    return sae, trainer


def _assert_same(a, b, tol=(1e-5, 1e-6)) -> None:
    (sa, ta), (sb, tb) = a, b
    for (name, p), q in zip(sa.named_parameters(), sb.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=tol[0], atol=tol[1], msg=name)
    assert torch.equal(ta.act_freq_scores, tb.act_freq_scores)
    assert torch.equal(ta.n_forward_passes_since_fired, tb.n_forward_passes_since_fired)
    assert ta.n_frac_active_samples == tb.n_frac_active_samples


@pytest.mark.parametrize("arch", ["topk", "standard", "batchtopk"])
def test_trainer_step_gives_saelens_weights_and_statistics(arch):
    import sae_lens

    ours, theirs = _trained(arch, trainer_class()), _trained(arch, sae_lens.SAETrainer)
    _assert_same(ours, theirs)
    if arch == "topk":  # the firing counts came from the chosen latents, not feature_acts
        assert ours[0].sparse_steps == STEPS and ours[0].last_fired is not None


def test_trainer_step_clips(monkeypatch):
    """Null input: SAELens' step without its clipping ends elsewhere, so the comparison
    above would catch a step that dropped or mis-scaled the clip."""
    import sae_lens

    ours = _trained("topk", trainer_class())
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: torch.tensor(0.0))
    unclipped = _trained("topk", sae_lens.SAETrainer)
    gap = max((p - q).abs().max().item() for p, q in
              zip(ours[0].parameters(), unclipped[0].parameters(), strict=True))
    assert gap > 1e-3


def test_trainer_step_with_dead_latents_matches_saelens():
    """A short dead window, so later steps carry the aux-k loss: emprobe's sparse SAE in
    emprobe's trainer against SAELens' own TopK SAE in SAELens' trainer; and SAELens' SAE in
    emprobe's trainer (firing counted from the dense activations)."""
    import sae_lens

    theirs = _trained("topk", sae_lens.SAETrainer, dead_window=2, sparse=False)
    assert bool(theirs[1].dead_neurons.any())
    ours = _trained("topk", trainer_class(), dead_window=2)
    assert ours[0].sparse_steps == STEPS
    _assert_same(ours, theirs, tol=(1e-4, 1e-5))
    _assert_same(_trained("topk", trainer_class(), dead_window=2, sparse=False), theirs)


def test_without_fused_adam_the_step_is_saelens_own():
    import sae_lens

    ours = _trained("topk", trainer_class(), fused=False)
    assert not fused_adam_in_use(ours[1].optimizer)
    _assert_same(ours, _trained("topk", sae_lens.SAETrainer, fused=False), tol=(0.0, 0.0))


def test_clip_and_step_returns_the_norm_and_leaves_no_scale():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([p], lr=0.1, fused=True)
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    assert clip_and_step(opt, [p]).item() == pytest.approx(5.0)
    assert getattr(opt, "grad_scale", None) is None and fused_adam_in_use(opt)
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8, 0.0]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ignores_out", [True, False])
@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("k", [6, 70])
def test_transposed_products_match_dense(monkeypatch, ignores_out, transposed, k):
    """Both weight-gradient products against the dense ``S.T @ X``: few entries per row
    (the CSR kernel for the transposed one, whichever way it treats the output buffer) and
    many (the per-latent sums and the blocked transpose, blocks smaller than the matrix)."""
    import emprobe.sae.topk_step as step

    monkeypatch.setattr(step, "_BETA0_IGNORES_OUT", ignores_out)
    monkeypatch.setattr(step, "_BLOCK", 64)
    gen = torch.Generator().manual_seed(1)
    n = 150
    idx = torch.rand(20, n, generator=gen).topk(k, dim=-1).indices.sort(dim=-1).values
    values, dense = torch.randn(20, k, generator=gen), torch.randn(20, 9, generator=gen)
    expected = _csr(idx, values, n).to_dense().t() @ dense  # [n, 9]
    got = _Transposed(idx, n).product(values, dense, transposed=transposed)
    torch.testing.assert_close(got, expected.t() if transposed else expected)
    assert got.is_contiguous()
