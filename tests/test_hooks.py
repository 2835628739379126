import pytest
import torch

import emprobe
from emprobe.errors import ShapeError, SiteError
from emprobe.hooks import (
    ablate,
    capture,
    collect,
    from_hf_hidden_index,
    from_persona_index,
    record_projections,
    steer,
    tl_hook_name,
    to_hf_hidden_index,
    to_persona_index,
)
from emprobe.hooks.patch import orthonormal_basis


def _n_hooks(subject):
    """Hooks beyond those transformers registers itself (it records outputs with hooks)."""
    count = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) for m in subject.model.modules()
    )
    base = _BASELINE.setdefault(id(subject.model), count)
    return count - base


_BASELINE: dict[int, int] = {}


@pytest.fixture(autouse=True)
def _baseline(request):
    for name in ("tiny_llama", "tiny_gpt2"):
        if name in request.fixturenames:
            _n_hooks(request.getfixturevalue(name))


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_capture_matches_hidden_states(fixture, request, chats):
    s = request.getfixturevalue(fixture)
    b = s.encode_chats(chats)
    with capture(s, layers=[0, 2, 3], sites=["resid_pre", "resid_post"]) as cache:
        out = s.forward(b, output_hidden_states=True)
    for layer in (0, 2, 3):
        hs_pre = out.hidden_states[to_hf_hidden_index(layer, "resid_pre", s.n_layers)]
        # the last HF hidden state is the final-norm output: no resid_post index
        if layer < s.n_layers - 1:
            hs_post = out.hidden_states[to_hf_hidden_index(layer, "resid_post", s.n_layers)]
            assert torch.allclose(cache["resid_post", layer], hs_post, atol=1e-5)
        assert torch.allclose(cache["resid_pre", layer], hs_pre, atol=1e-5)
    assert _n_hooks(s) == 0


def test_attn_mlp_sum_to_residual(tiny_llama, chats):
    s = tiny_llama
    b = s.encode_chats(chats)
    with capture(s, layers=1, sites=["resid_pre", "attn_out", "mlp_out", "resid_post"]) as c:
        s.forward(b)
    total = c["resid_pre", 1] + c["attn_out", 1] + c["mlp_out", 1]
    assert torch.allclose(total, c["resid_post", 1], atol=1e-5)


def test_early_exit_stops_forward(tiny_llama, chats):
    s = tiny_llama
    b = s.encode_chats(chats)
    seen = []
    h = s.layers.blocks[3].register_forward_hook(lambda *a: seen.append(1))
    try:
        with capture(s, layers=1, early_exit=True) as cache:
            s.forward(b)
    finally:
        h.remove()
    assert seen == []
    assert cache["resid_post", 1].shape == (2, b.input_ids.shape[1], 64)
    assert _n_hooks(s) == 0


def test_hooks_removed_on_exception(tiny_llama, chats):
    s = tiny_llama
    with pytest.raises(RuntimeError), capture(s, layers=[0, 1]):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError), steer(s, torch.ones(64), layers=[0]):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError), ablate(s, torch.ones(64), layers=[0]):
        raise RuntimeError("boom")
    assert _n_hooks(s) == 0


def test_collect_response_tokens(tiny_llama, chats):
    got = collect(tiny_llama, chats, layers=[1, 2], positions="response", batch_size=1)
    b = tiny_llama.encode_chats(chats)
    assert got.acts[1].shape == (int(b.response_mask.sum()), 64)
    assert got.token_index.shape == (int(b.response_mask.sum()), 2)
    means = collect(tiny_llama, chats, layers=2, positions="response", reduce="mean")
    assert means.acts[2].shape == (2, 64)
    first = got.acts[2][got.token_index[:, 0] == 0].mean(0)
    assert torch.allclose(first, means.acts[2][0], atol=1e-5)


def test_steer_adds_on_selected_tokens(tiny_llama, chats):
    s = tiny_llama
    b = s.encode_chats(chats)
    v = torch.randn(64)
    with capture(s, layers=1) as base:
        s.forward(b)
    with steer(s, v, coeff=2.0, layers=1, positions="response"), capture(s, layers=1) as st:
        s.forward(b)
    delta = st["resid_post", 1] - base["resid_post", 1]
    assert torch.allclose(delta[b.response_mask], (2 * v).expand(int(b.response_mask.sum()), 64), atol=1e-5)
    assert delta[~b.response_mask].abs().max() < 1e-6


def test_ablate_zero_and_mean(tiny_llama, chats):
    s = tiny_llama
    b = s.encode_chats(chats)
    q = orthonormal_basis(torch.randn(64, 3))
    with ablate(s, {1: q}), capture(s, layers=1) as c:
        s.forward(b)
    assert (c["resid_post", 1] @ q).abs().max() < 1e-5
    mu = torch.randn(64)
    with ablate(s, q, layers=1, mode="mean", mean=mu), capture(s, layers=1) as c:
        s.forward(b)
    # the component along Q equals mu's component
    assert torch.allclose(c["resid_post", 1] @ q, (mu @ q).expand_as(c["resid_post", 1] @ q), atol=1e-5)
    with pytest.raises(ValueError, match="mean="):
        with ablate(s, q, layers=1, mode="mean"):
            pass


def test_gradients_flow_through_interventions(tiny_llama, chats):
    s = tiny_llama
    b = s.encode_chats(chats)
    w = s.layers.blocks[0].mlp.up_proj.weight
    with steer(s, torch.ones(64), layers=2), ablate(s, torch.randn(64, 2), layers=1):
        loss = s.forward(b).logits.pow(2).mean()
    loss.backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    s.model.zero_grad(set_to_none=True)


def test_record_projections(tiny_llama, chats):
    s = tiny_llama
    b = s.encode_chats(chats)
    v = torch.randn(64)
    with record_projections(s, v, layers=[2]) as rec, capture(s, layers=2) as c:
        s.forward(b)
    expected = (c["resid_post", 2][b.response_mask] @ (v / v.norm())).mean()
    assert rec[2] == [pytest.approx(float(expected), abs=1e-5)]


def test_positions_need_batch_context(tiny_llama):
    s = tiny_llama
    x = torch.tensor([[5, 6, 7]])
    with pytest.raises(SiteError, match="needs the tokens' masks"):
        with steer(s, torch.ones(64), layers=0, positions="response"):
            s.model(x)
    with steer(s, torch.ones(64), layers=0, positions="last"):
        s.model(x)


def test_steering_during_generation(tiny_llama, chats):
    s = tiny_llama
    prompt = [chats[0][:1]]
    plain = s.generate(prompt, max_new_tokens=6)
    with steer(s, torch.randn(64) * 50, layers=[1, 2], positions="response"):
        steered = s.generate(prompt, max_new_tokens=6)
    assert plain != steered


def test_bad_input_errors(tiny_llama):
    s = tiny_llama
    with pytest.raises(SiteError, match="unknown site"):
        with capture(s, layers=0, sites="resid_mid"):
            pass
    with pytest.raises(SiteError, match="out of range"):
        with capture(s, layers=9):
            pass
    with pytest.raises(ShapeError, match="d_model is 64"):
        with steer(s, torch.ones(32), layers=0):
            pass
    with pytest.raises(ShapeError, match="d_model is 64"):
        with ablate(s, torch.ones(32, 2), layers=0):
            pass


def test_layer_conventions():
    assert to_hf_hidden_index(0, "resid_post", 4) == 1
    assert to_hf_hidden_index(3, "resid_pre", 4) == 3
    assert from_hf_hidden_index(1, 4) == ("resid_post", 0)
    assert from_hf_hidden_index(0, 4) == ("resid_pre", 0)
    assert to_persona_index(5, 30) == 6 and from_persona_index(6, 30) == 5
    # the last hidden state / persona row is the final-norm output, not resid_post[n - 1]
    with pytest.raises(SiteError, match="final-norm"):
        to_hf_hidden_index(3, "resid_post", n_layers=4)
    with pytest.raises(SiteError, match="final-norm"):
        from_hf_hidden_index(4, 4)
    with pytest.raises(SiteError, match="final-norm"):
        from_persona_index(30, 30)
    with pytest.raises(SiteError, match="final-norm"):
        to_persona_index(29, n_layers=30)
    assert to_hf_hidden_index(2, "resid_post", n_layers=4) == 3
    with pytest.raises(SiteError):
        from_persona_index(0, 30)
    with pytest.raises(SiteError):
        from_hf_hidden_index(5, 4)
    assert tl_hook_name("resid_post", 3) == "blocks.3.hook_out"
    assert tl_hook_name("mlp_out", 0) == "blocks.0.mlp.hook_out"
    with pytest.raises(SiteError):
        to_hf_hidden_index(1, "mlp_out", 4)
    with pytest.raises(SiteError, match="out of range"):
        to_hf_hidden_index(4, "resid_pre", 4)
    with pytest.raises(SiteError, match="out of range"):
        to_persona_index(-1, 30)
    with pytest.raises(TypeError):  # the layer count is required: no silent post-norm index
        to_hf_hidden_index(3, "resid_post")  # type: ignore[call-arg]


def test_public_api_exports():
    for name in ("load_model", "capture", "collect", "steer", "ablate", "Subject"):
        assert hasattr(emprobe, name)


@pytest.mark.integration
def test_last_hidden_state_is_final_norm_embedded(embedded, chats):
    """On the embedded model hidden_states[n] = norm(resid_post[n - 1]), far from it."""
    s = embedded
    n = s.n_layers
    b = s.encode_chats(chats)
    with capture(s, layers=[n - 2, n - 1]) as cache:
        out = s.forward(b, output_hidden_states=True)
    mask = b.attention_mask.bool()
    last = cache["resid_post", n - 1][mask]
    assert torch.allclose(cache["resid_post", n - 2][mask],
                          out.hidden_states[to_hf_hidden_index(n - 2, "resid_post", n)][mask],
                          atol=1e-3)
    gap = (last - out.hidden_states[n][mask]).abs().max()
    assert gap > 1.0  # pre-norm vs post-norm: not the same tensor
    normed = s.model.model.norm(cache["resid_post", n - 1])[mask]
    assert torch.allclose(normed, out.hidden_states[n][mask], atol=1e-3)
    with pytest.raises(SiteError):
        to_hf_hidden_index(n - 1, "resid_post", n)


def test_intervention_objects_match_function_forms(tiny_llama, chats):
    from emprobe.hooks import Ablate, Project, Steer

    s = tiny_llama
    b = s.encode_chats(chats)
    v = torch.randn(64)
    with steer(s, v, coeff=1.5, layers=1), capture(s, layers=1) as by_fn:
        s.forward(b)
    iv = Steer(v, coeff=0.0, layers=1).scaled(1.5)
    with iv.apply(s), capture(s, layers=1) as by_obj:
        s.forward(b)
    assert torch.equal(by_fn["resid_post", 1], by_obj["resid_post", 1])
    q = orthonormal_basis(torch.randn(64, 2))
    h = torch.randn(3, 5, 64)
    assert (Ablate.edit(h, q) @ q).abs().max() < 1e-5
    assert torch.allclose(Steer.edit(h, v, 2.0) - h, (2.0 * v).expand_as(h), atol=1e-5)
    with Project(v, layers=[2]).apply(s) as rec:
        s.forward(b)
    assert len(rec[2]) == 1 and _n_hooks(s) == 0
    assert Steer(v, layers=1).describe()["relative"] is False  # absolute is the default


def test_relative_steering_scales_by_the_site_norm(tiny_llama, chats):
    from emprobe.hooks import Steer, site_mean_norms

    s = tiny_llama
    b = s.encode_chats(chats)
    v = torch.randn(64) * 7.0
    norms = site_mean_norms(s, "resid_post", [1])
    assert norms[1] > 0
    with capture(s, layers=1) as base:
        s.forward(b)
    with Steer(v, coeff=0.5, layers=1, relative=True).apply(s), capture(s, layers=1) as st:
        s.forward(b)
    added = (st["resid_post", 1] - base["resid_post", 1])[0, 0]
    # a unit vector times half the measured mean norm, whatever v's own length
    assert float(added.norm()) == pytest.approx(0.5 * norms[1], rel=1e-4)
    assert torch.allclose(added / added.norm(), v / v.norm(), atol=1e-4)
    given = Steer(v, coeff=2.0, layers=1, relative=True, norms=3.0).vectors(s)[1]
    assert float(given.norm()) == pytest.approx(3.0, rel=1e-5)
