"""Model diffing with one SAE: a planted latent is recovered; attribution; contexts; steering."""

from __future__ import annotations

import pytest
import torch

from emprobe import load_model
from emprobe.errors import DataError, EmprobeError
from emprobe.hooks.capture import collect
from emprobe.hooks.core import add_site_hook
from emprobe.models.context import use_batch
from emprobe.sae.causal import as_interval, realignment_curve, steering_check
from emprobe.sae.corpus import generic_chats
from emprobe.sae.diff import (
    answer_attribution,
    diff_latents,
    pick_candidates,
    top_contexts,
    write_diff,
)

LAYER = 1
PLANTED = 37

pytestmark = pytest.mark.usefixtures("one_thread")



def _tied_sae(d: int = 64, d_sae: int = 96, seed: int = 0, bias: float = -0.5):
    """A standard SAE with unit decoder rows and a tied encoder (W_enc = W_dec.T)."""
    import sae_lens

    torch.manual_seed(seed)
    sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=d, d_sae=d_sae,
                                                          apply_b_dec_to_input=False))
    w = torch.nn.functional.normalize(torch.randn(d_sae, d), dim=-1)
    with torch.no_grad():
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_enc.fill_(bias)
        sae.b_dec.zero_()
    return sae


@pytest.fixture(scope="module")
def planted():
    """Base = tiny-llama; 'fine-tune' = the same weights plus a steering hook along a
    decoder row at the SAE's layer (its own Subject, so the shared fixture is untouched)."""
    sae = _tied_sae()
    base = load_model("tiny-llama")
    ft = load_model("tiny-llama")
    vec = sae.W_dec[PLANTED].detach() * 4.0
    handle = add_site_hook(ft, "resid_post", LAYER, lambda h: h + vec.to(h.dtype))
    yield base, ft, sae
    handle.remove()


def test_diff_recovers_planted_latent(planted, tmp_path):
    base, ft, sae = planted
    data = generic_chats(8, seed=4)
    res = diff_latents(base, ft, sae, "resid_post", LAYER, data)
    assert res.top("mean_diff", 1) == [PLANTED]
    assert res.top("encoded_diff", 1) == [PLANTED]
    assert float(res.decoder_cos[PLANTED]) == pytest.approx(1.0, abs=1e-4)
    assert res.n_tokens > 0 and res.meta["layer"] == LAYER
    rec = res.latent_record(PLANTED)
    assert rec["rank_mean_diff"] == 0 and rec["mean_ft"] > rec["mean_base"]
    ctx = top_contexts(ft, sae, "resid_post", LAYER, generic_chats(6, seed=5), [PLANTED], n=3)
    assert 1 <= len(ctx[PLANTED]) <= 3
    acts = [c["activation"] for c in ctx[PLANTED]]
    assert acts == sorted(acts, reverse=True) and all(a > 0 for a in acts)
    assert all("[[" in c["text"] and "]]" in c["text"] for c in ctx[PLANTED])
    assert PLANTED in pick_candidates(res, 3)
    path = write_diff(res, tmp_path, [PLANTED], ctx)
    assert path.name == "diff.json" and (tmp_path / "scores.safetensors").is_file()
    with pytest.raises(DataError):
        res.top("attribution")  # not computed yet


def test_diff_ranks_response_tokens_only(planted):
    """A change confined to prompt (template / system) tokens must not rank over responses."""
    from emprobe.models.context import active_batch

    base, _, sae = planted
    prompt_only = load_model("tiny-llama")
    vec = sae.W_dec[PLANTED].detach() * 4.0

    def on_prompt(h):
        batch = active_batch()
        mask = batch.prompt_mask.to(h.device).unsqueeze(-1)
        return h + mask * vec.to(h.dtype)

    handle = add_site_hook(prompt_only, "resid_post", LAYER, on_prompt)
    try:
        data = generic_chats(8, seed=4)
        assert diff_latents(base, prompt_only, sae, "resid_post", LAYER, data,
                            positions="all").top("mean_diff", 1) == [PLANTED]
        resp = diff_latents(base, prompt_only, sae, "resid_post", LAYER, data)
        assert resp.meta["positions"] == "response"
        assert resp.top("mean_diff", 1) != [PLANTED]
        assert float(resp.mean_diff.abs().max()) < 1e-4  # nothing changed on responses
    finally:
        handle.remove()


def test_attribution_is_first_order_loss_change(tiny_llama):
    """Removing eps * f_i * W_dec[i] at the scored positions changes the loss by ~ -eps * attr_i."""
    sae = _tied_sae(seed=1, bias=0.0)
    convs = generic_chats(3, seed=6)
    attr = answer_attribution(tiny_llama, sae, "resid_post", LAYER, convs)
    assert attr.shape == (96,)
    i = int(attr.abs().argmax())
    assert float(attr.abs()[i]) > 0
    eps = 1e-2
    batch = tiny_llama.encode_chats(convs)
    resp = batch.response_mask
    sel = torch.zeros_like(resp)
    sel[:, :-1] = resp[:, 1:]

    def loss(edit: bool) -> float:
        def fn(h):
            if not edit:
                return None
            f = sae.encode(h[sel])[:, i : i + 1]
            new = h.clone()
            new[sel] = h[sel] - eps * f * sae.W_dec[i]
            return new

        handle = add_site_hook(tiny_llama, "resid_post", LAYER, fn)
        try:
            with torch.no_grad(), use_batch(batch):
                logits = tiny_llama.model(input_ids=batch.input_ids,
                                          attention_mask=batch.attention_mask).logits
        finally:
            handle.remove()
        logp = torch.log_softmax(logits[:, :-1].double(), -1)
        nll = -logp.gather(-1, batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        return float(nll[resp[:, 1:]].sum())

    change = loss(True) - loss(False)
    assert change == pytest.approx(-eps * float(attr[i]), rel=0.05)


def test_steering_check_ranks_the_aligned_latent_first(planted):
    base, _, sae = planted
    target = sae.W_dec[PLANTED].detach()
    data = generic_chats(3, seed=8)

    def scorer(subject):  # mean projection of the steered layer's output on the target
        got = collect(subject, data, layers=[LAYER], positions="all")
        proj = got.acts[LAYER] @ target
        return (float(proj.mean()), float(proj.mean()) - 0.1, float(proj.mean()) + 0.1)

    check = steering_check(base, sae, [5, PLANTED, 60], "resid_post", LAYER, scorer,
                           coeffs=(0.5, 1.0), scale=2.0, random_controls=2, progress=False,
                           control_kind="gaussian")
    assert check["latents"][0]["latent"] == PLANTED
    assert len(check["controls"]) == 2 and check["controls"][0]["latent"] is None
    assert all(c["max_delta"] < check["latents"][0]["max_delta"] for c in check["controls"])
    top = check["latents"][0]["scores"]
    assert top[1]["delta"] == pytest.approx(2.0, rel=1e-3)  # coeff 1 x scale 2 x unit row
    assert top[0]["lo"] < top[0]["mean"] < top[0]["hi"]
    # latent controls: other latents' decoder rows, steered with the candidates' exact norm
    by_latent = steering_check(base, sae, [5, PLANTED], "resid_post", LAYER, scorer,
                               coeffs=(1.0,), scale=2.0, random_controls=6, progress=False,
                               control_kind="latents")
    ctrl = by_latent["controls"]
    assert len(ctrl) == 6 and all(c["control"] for c in ctrl)
    assert {c["latent"] for c in ctrl}.isdisjoint({5, PLANTED})
    assert all(c["norm"] == pytest.approx(2.0, rel=1e-5) for c in ctrl + by_latent["latents"])
    best, other = by_latent["latents"]
    assert best["latent"] == PLANTED and best["beats_controls"] and best["control_p"] == 1 / 7
    worse = sum(c["max_delta"] >= other["max_delta"] for c in ctrl)
    assert other["control_p"] == pytest.approx((1 + worse) / 7)
    assert other["beats_controls"] == (worse == 0)
    with pytest.raises(EmprobeError):
        steering_check(base, sae, [5], "resid_post", LAYER, scorer, scale=1.0,
                       random_controls=1, control_kind="nope", progress=False)


def test_intervals_and_realignment_driver():
    assert as_interval(0.5) == {"mean": 0.5, "lo": 0.5, "hi": 0.5}
    with pytest.raises(EmprobeError):
        as_interval("x")
    curve = realignment_curve(lambda n: {"n": n}, lambda s: (1.0 / (1 + s["n"]), 0.0, 1.0),
                              lambda s: 2.0 * s["n"], ns=(0, 30, 60), progress=False)
    assert [r["n_benign"] for r in curve] == [0, 30, 60]
    assert curve[0]["score"]["mean"] == 1.0 and curve[2]["latent_mean"] == 120.0


def test_steering_check_compares_candidates_with_each_control_paired(planted):
    from emprobe.evaluate.questions import default_questions
    from emprobe.sae.causal import default_scorer

    base, _, sae = planted
    qs = [q for q in default_questions() if q.reference_pairs][:4]
    scorer = default_scorer(questions=qs, n_boot=200, seed=0)
    check = steering_check(base, sae, [PLANTED], "resid_post", LAYER, scorer, coeffs=(4.0,),
                           scale=2.0, random_controls=2, progress=False)
    entry = check["latents"][0]["scores"][0]
    assert len(entry["vs_controls"]) == 2
    for vs, ctrl in zip(entry["vs_controls"], check["controls"], strict=True):
        # paired by question: the mean difference is the difference of the means
        assert vs["delta"] == pytest.approx(entry["mean"] - ctrl["scores"][0]["mean"], abs=1e-6)
        assert vs["delta_lo"] <= vs["delta"] <= vs["delta_hi"]
    assert entry["beats_controls_paired"] == all(v["delta_lo"] > 0 for v in entry["vs_controls"])
    plain = steering_check(base, sae, [PLANTED], "resid_post", LAYER, scorer, coeffs=(4.0,),
                           scale=2.0, progress=False)
    assert "vs_controls" not in plain["latents"][0]["scores"][0]  # nothing to compare with
