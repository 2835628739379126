"""The family matrix: every supported architecture, as a tiny random model, through the same
checks (docs/models.md lists the families and their site modules).

Per family: capture parity with ``hidden_states`` at every layer, the residual
decomposition ``resid_post = resid_pre + attn_out + mlp_out``, BOS handling, default LoRA
target modules and PEFT logits parity, steering and ablation through ``emprobe.hooks``,
and the export rows (persona tensor / GGUF ``direction.N``) against where a vector really
lands. Tiny models (4 blocks, d_model 64) keep the whole file around a minute on a busy
2-core machine.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

import emprobe
from emprobe import load_model
from emprobe.hooks import ablate, steer
from emprobe.models.targets import SEVEN_PROJECTIONS, lora_target_modules
from emprobe.models.templates import expects_bos

FAMILIES = ["tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-gemma2", "tiny-gemma3",
            "tiny-olmo2", "tiny-phi3", "tiny-phi", "tiny-gpt-neox", "tiny-gpt2"]
POST_NORM = {"tiny-gemma2", "tiny-gemma3", "tiny-olmo2"}
PARALLEL = {"tiny-phi", "tiny-gpt-neox"}
SITES = ["resid_pre", "attn_out", "mlp_out", "resid_post"]
CONV = [{"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue, like the sea."}]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def subjects():
    return {spec: load_model(spec) for spec in FAMILIES}


def _run(s, batch):
    L = s.n_layers
    with emprobe.capture(s, range(L), SITES) as cache:
        out = s.forward(batch, output_hidden_states=True)
    return cache, out


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("spec", FAMILIES)
def test_capture_parity_and_residual_decomposition(spec, subjects):
    s = subjects[spec]
    batch = s.encode_chats([CONV])
    cache, out = _run(s, batch)
    hs = out.hidden_states
    L = s.n_layers
    assert len(hs) == L + 1
    for la in range(L):
        assert torch.allclose(cache["resid_pre", la], hs[la], atol=1e-6)
        if la < L - 1:  # the last hidden state is post final-norm
            assert torch.allclose(cache["resid_post", la], hs[la + 1], atol=1e-6)
        parts = cache["resid_pre", la] + cache["attn_out", la] + cache["mlp_out", la]
        assert _rel_err(parts, cache["resid_post", la]) < 1e-5, f"{spec} layer {la}"
    note = s.layers.note
    assert ("post-norm" in note) == (spec in POST_NORM)
    assert ("parallel" in note) == (spec in PARALLEL)


@pytest.mark.parametrize("spec", sorted(POST_NORM))
def test_post_norm_sites_are_not_the_raw_sublayer_outputs(spec, subjects):
    """The check above can fail: the raw attention / MLP outputs do not add up."""
    s = subjects[spec]
    batch = s.encode_chats([CONV])
    raw: dict[str, torch.Tensor] = {}
    hooks = [s.layers.attn[1].register_forward_hook(lambda m, a, o: raw.__setitem__("a", o[0])),
             s.layers.mlp[1].register_forward_hook(lambda m, a, o: raw.__setitem__("m", o))]
    try:
        cache, _ = _run(s, batch)
    finally:
        for h in hooks:
            h.remove()
    parts = cache["resid_pre", 1] + raw["a"] + raw["m"]
    assert _rel_err(parts, cache["resid_post", 1]) > 1e-2


@pytest.mark.parametrize("spec", FAMILIES)
def test_bos_exactly_when_expected(spec, subjects):
    s = subjects[spec]
    tok = s.tokenizer
    ids = s.encode_chats([CONV]).input_ids[0].tolist()
    text_ids = s.encode_texts(["plain text"]).input_ids[0].tolist()
    if expects_bos(tok):
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert text_ids[0] == tok.bos_token_id and text_ids.count(tok.bos_token_id) == 1
    else:
        rendered = tok.apply_chat_template(CONV, tokenize=False)
        assert ids == tok(rendered, add_special_tokens=False)["input_ids"]
    assert expects_bos(tok) == spec.startswith("tiny-gemma")


@pytest.mark.parametrize("spec", FAMILIES)
def test_default_lora_targets_and_peft_parity(spec):
    from peft import LoraConfig, get_peft_model

    s = load_model(spec)
    targets = lora_target_modules(s.model)
    if spec in ("tiny-gpt2", "tiny-phi3", "tiny-phi", "tiny-gpt-neox"):
        assert targets != list(SEVEN_PROJECTIONS)
    batch = s.encode_chats([CONV])
    base = s.forward(batch).logits
    peft = get_peft_model(s.model, LoraConfig(r=2, lora_alpha=4, target_modules=targets))
    for block_attn, block_mlp in zip(s.layers.attn, s.layers.mlp):  # both halves adapted
        assert block_attn is not None and block_mlp is not None
        assert any("lora_A" in n for n, _ in block_attn.named_modules())
        assert any("lora_A" in n for n, _ in block_mlp.named_modules())
    s.model = peft
    assert torch.allclose(s.forward(batch).logits, base, atol=1e-6)  # B = 0 at init
    torch.manual_seed(0)
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    adapted = s.forward(batch).logits
    assert not torch.allclose(adapted, base, atol=1e-3)
    merged = peft.merge_and_unload()
    s.model = merged
    assert torch.allclose(s.forward(batch).logits, adapted, atol=1e-4)


@pytest.mark.parametrize("spec", FAMILIES)
def test_steering_and_ablation_land_where_the_sites_say(spec, subjects):
    s = subjects[spec]
    batch = s.encode_chats([CONV])
    clean, _ = _run(s, batch)
    torch.manual_seed(1)
    v = torch.randn(s.d_model)
    # adding v to mlp_out adds exactly v to the block output (resid_post = ... + mlp_out)
    with steer(s, v, coeff=2.0, layers=1, site="mlp_out"):
        got, out = _run(s, batch)
    assert torch.allclose(got["resid_post", 1] - clean["resid_post", 1],
                          (2.0 * v).expand_as(clean["resid_post", 1]), atol=1e-4)
    # export rows: hidden_states index l + 1 (persona row, GGUF direction.l) moved by v
    assert torch.allclose(out.hidden_states[2] - clean["resid_post", 1],
                          (2.0 * v).expand_as(clean["resid_post", 1]), atol=1e-4)
    # ablating v's direction at resid_post 1 leaves nothing along it for block 2
    unit = v / v.norm()
    with ablate(s, v, layers=1, site="resid_post"):
        got, _ = _run(s, batch)
    assert float((got["resid_pre", 2] @ unit).abs().max()) < 1e-4
    assert float((clean["resid_pre", 2] @ unit).abs().max()) > 1e-2


def test_explicit_lora_targets_are_checked(subjects):
    from emprobe.errors import ConfigError

    with pytest.raises(ConfigError, match="not found in gpt2 blocks; they have"):
        lora_target_modules(subjects["tiny-gpt2"].model, ["down_proj"])
    assert lora_target_modules(subjects["tiny-gpt2"].model, ["c_fc"]) == ["c_fc"]
    assert lora_target_modules(subjects["tiny-gemma3"].model) == list(SEVEN_PROJECTIONS)


def test_export_rows_and_sae_hook_names(subjects):
    """Persona rows / GGUF direction.N / SAELens hook names follow the one convention."""
    from emprobe.directions import Direction
    from emprobe.directions.formats import from_gguf, to_gguf, to_persona_tensor
    from emprobe.sae import sae_hook_name

    s = subjects["tiny-gemma3"]
    torch.manual_seed(2)
    d = Direction(vectors={1: torch.randn(s.d_model), 2: torch.randn(s.d_model)},
                  model=s.name, d_model=s.d_model, n_layers=s.n_layers)
    rows = to_persona_tensor(d)
    assert torch.equal(rows[2], d.vector(1)) and torch.equal(rows[3], d.vector(2))
    with tempfile.TemporaryDirectory() as tmp:
        written = to_gguf(d, Path(tmp) / "cv.gguf")
        back = from_gguf(written["path"])
    assert written["layers"] == [1, 2]
    assert sorted(back.vectors) == [1, 2]
    assert torch.allclose(back.vector(1), d.vector(1))
    for site, hook in [("resid_pre", "blocks.1.hook_resid_pre"),
                       ("attn_out", "blocks.1.hook_attn_out"),
                       ("mlp_out", "blocks.1.hook_mlp_out"),
                       ("resid_post", "blocks.1.hook_resid_post")]:
        assert sae_hook_name(site, 1) == hook


# -- a real small model of a second family (Gemma 3 270M, from PyPI) ------------------------
def _gemma3_270m():
    from emprobe.errors import ModelNotFoundError
    from emprobe.models.templates import ChatTemplateWarning

    try:
        with pytest.warns(ChatTemplateWarning):  # a base model: no chat template of its own
            return load_model("gemma3-270m", chat_template=None)
    except ModelNotFoundError as exc:
        pytest.skip(f"Gemma 3 270M not installed: {exc}")


@pytest.mark.integration
def test_real_gemma3_270m_sites_bos_and_local_score():
    from emprobe.evaluate.local import local_score
    from emprobe.evaluate.questions import default_questions
    from emprobe.models.templates import _ANNOUNCED

    _ANNOUNCED.discard("gemma3-270m")
    s = _gemma3_270m()
    assert s.layers.family == "gemma3_text" and "post-norm" in s.layers.note
    assert s.chat_format is not None and s.chat_format.name == "plain"
    batch = s.encode_chats([CONV])
    ids = batch.input_ids[0].tolist()
    assert ids[0] == s.tokenizer.bos_token_id and ids.count(ids[0]) == 1
    cache, out = _run(s, batch)
    for la in range(s.n_layers):
        assert torch.allclose(cache["resid_pre", la], out.hidden_states[la], rtol=1e-5, atol=1e-3)
        parts = cache["resid_pre", la] + cache["attn_out", la] + cache["mlp_out", la]
        assert _rel_err(parts, cache["resid_post", la]) < 1e-5, f"layer {la}"
    qs = [q for q in default_questions() if q.reference_pairs][:2]
    score = local_score(s, qs, n_boot=50)
    assert score.meta["n_questions"] == 2
    assert all(p["n_tokens_aligned"] > 0 and p["logp_aligned"] < 0 for p in score.pairs)
