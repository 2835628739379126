"""Extractors on tiny models: each recovers something planted."""

import json

import pytest
import torch

from emprobe import collect, load_model
from emprobe.directions import (
    concept_vectors,
    cosine_matrix,
    factor_svd,
    fit_logistic,
    lora_direction,
    mean_difference,
    pca_difference,
    persona_vector,
    probe_direction,
    projection,
    random_components,
    sae_direction,
    screen_dataset,
    top_components,
)
from emprobe.directions.extract.pca import contexts_html
from emprobe.errors import DataError, ShapeError
from emprobe.hooks.core import add_site_hook
from emprobe.io import save_tensors, write_json
from emprobe.models.context import active_batch

MARK = "#"


def _convs(prompts, answers, marker=""):
    return [[{"role": "user", "content": marker + p}, {"role": "assistant", "content": a}]
            for p, a in zip(prompts, answers)]


PROMPTS = ["tell me a joke", "what is rain", "name a fruit", "how are you", "say hello", "count to three"]
ANSWERS = ["no jokes today", "water from clouds", "an apple", "fine thanks", "hello there", "one two three"]


@pytest.fixture(scope="module")
def planted():
    """An own tiny-llama whose layer-1 output gets +v on every token of rows containing '#'."""
    s = load_model("tiny-llama")
    v = torch.randn(64, generator=torch.Generator().manual_seed(1))
    v = 40 * v / v.norm()
    mark_id = s.tokenizer.convert_tokens_to_ids(MARK)

    def fn(hidden):
        batch = active_batch()
        if batch is None or batch.input_ids.shape[1] != hidden.shape[1]:
            return None
        rows = (batch.input_ids == mark_id).any(1).to(hidden.device)
        return hidden + rows[:, None, None].float() * v

    handle = add_site_hook(s, "resid_post", 1, fn)
    yield s, v
    handle.remove()


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_mean_difference_recovers_planted(planted):
    s, v = planted
    pos, neg = _convs(PROMPTS, ANSWERS, MARK), _convs(PROMPTS, ANSWERS)
    d = mean_difference(s, pos, neg, batch_size=4)
    assert d.layers == [0, 1, 2, 3] and d.method == "mean_difference"
    assert _cos(d.vector(1), v) > 0.99
    assert abs(_cos(d.vector(0), v)) < 0.5
    assert d.provenance["positive"]["n"] == 6 and len(d.provenance["positive"]["sha256"]) == 64
    # equals the token-pooled mean computed the slow way
    for la in (0, 2):
        a = collect(s, pos, layers=la).acts[la].mean(0) - collect(s, neg, layers=la).acts[la].mean(0)
        assert torch.allclose(d.vector(la), a, atol=1e-4)


def test_model_mean_difference(tiny_llama, planted):
    from emprobe.directions import model_mean_difference

    s, v = planted  # same seeded weights as tiny_llama, plus the planted hook
    d = model_mean_difference(tiny_llama, s, _convs(PROMPTS, ANSWERS, MARK), layers=[0, 1])
    assert d.vector(0).abs().max() < 1e-5
    assert torch.allclose(d.vector(1), v, atol=1e-3)
    assert d.sign == "fine-tuned minus base" and d.params["finetuned"] == "tiny-llama"


def test_mean_difference_errors(tiny_llama):
    with pytest.raises(DataError):
        mean_difference(tiny_llama, [], _convs(PROMPTS, ANSWERS))


def test_encode_refuses_mixed_batches(tiny_llama):
    from emprobe.directions.activations import encode

    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert encode(tiny_llama, ["hi", "there"]).input_ids.shape[0] == 2
    assert encode(tiny_llama, [conv, conv]).input_ids.shape[0] == 2
    for mixed in (["hi", conv], [conv, "hi"]):
        with pytest.raises(DataError, match="mixes"):
            encode(tiny_llama, mixed)


def test_probe_separates_planted(planted):
    s, v = planted
    prompts = PROMPTS * 2
    answers = ANSWERS + ANSWERS[::-1]
    d = probe_direction(s, _convs(prompts, answers, MARK), _convs(prompts, answers), layers=[1, 2])
    assert d.stats["train_accuracy"]["1"] == 1.0
    assert d.stats["test_accuracy"]["1"] == 1.0
    # few samples in 64 dims: many separating planes, so only the sense is checked
    assert float(d.vector(1) @ v) > 0


def test_fit_logistic_synthetic():
    g = torch.Generator().manual_seed(0)
    w_true = torch.randn(16, generator=g)
    x = torch.randn(400, 16, generator=g)
    y = (x @ w_true > 0).float()
    fit = fit_logistic(x[:300], y[:300], l2=1e-4, x_test=x[300:], y_test=y[300:])
    assert fit.train_accuracy > 0.95 and fit.test_accuracy > 0.9
    assert _cos(fit.weight, w_true) > 0.9
    with pytest.raises(DataError):
        fit_logistic(x, torch.zeros(400))


def test_pca_recovers_planted_steering():
    base = load_model("tiny-llama")
    ft = load_model("tiny-llama")
    v = torch.randn(64, generator=torch.Generator().manual_seed(2))
    v = v / v.norm()

    def fn(hidden):  # a token-varying amount along v
        c = 6 * torch.sin(997 * hidden[..., :1])
        return hidden + c * v

    handle = add_site_hook(ft, "resid_post", 1, fn)
    try:
        res = pca_difference(base, ft, _convs(PROMPTS, ANSWERS), layers=[0, 1, 2], k=4, n_contexts=2)
    finally:
        handle.remove()
    d = res.direction
    assert d.vectors[1].shape == (64, 4)
    assert abs(_cos(d.vectors[1][:, 0], v)) > 0.99
    assert d.stats["explained_variance"]["1"][0] > 0.99
    assert d.stats["singular_values"]["0"][0] < 1e-3  # layer 0 is untouched
    q = d.vectors[2]
    assert torch.allclose(q.T @ q, torch.eye(4), atol=1e-4)
    tops = [r for r in res.contexts if r["layer"] == 1 and r["component"] == 0 and r["side"] == "top"]
    assert len(tops) == 2 and tops[0]["value"] >= tops[1]["value"]
    html = contexts_html(res.contexts, layer=1)
    assert "<mark" in html and "layer 1, component 0" in html
    assert top_components(d, 2).vectors[1].shape == (64, 2)
    r = random_components(d, 2, seed=3)
    assert r.vectors[1].shape == (64, 2) and r.params["selection"] == "random"


def test_concept_cosine_matrix(tiny_llama):
    concepts = {"food": ["Tell me about bread", "What is soup?"],
                "weather": ["Is it raining?", "Describe a storm"],
                "math": ["What is 2+2?", "Define a prime"]}
    dirs = concept_vectors(tiny_llama, concepts, neutral=["Hello", "Good day"])
    names, layers, cos = cosine_matrix(dirs)
    assert names == ["food", "weather", "math"] and layers == [0, 1, 2, 3]
    assert cos.shape == (4, 3, 3)
    assert torch.allclose(cos, cos.transpose(1, 2))
    assert torch.allclose(torch.diagonal(cos, dim1=1, dim2=2), torch.ones(4, 3))
    assert (cos.abs() <= 1 + 1e-5).all()
    assert dirs["food"].positions == "last"


def test_factor_svd_matches_dense():
    g = torch.Generator().manual_seed(0)
    B, A = torch.randn(48, 4, generator=g), torch.randn(4, 40, generator=g)
    u, s, v = factor_svd(B, A, scale=2.0)
    dense = 2.0 * B @ A
    s_dense = torch.linalg.svdvals(dense)
    assert torch.allclose(s, s_dense[:4], rtol=1e-4)
    assert torch.allclose(u @ torch.diag(s) @ v.T, dense, atol=1e-4)
    ud, _, vhd = torch.linalg.svd(dense)
    assert torch.allclose((u.T @ ud[:, :4]).abs(), torch.eye(4), atol=1e-3)
    with pytest.raises(ShapeError):
        factor_svd(B, A.T)


def test_lora_direction_from_peft_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    s = load_model("tiny-llama")
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["down_proj", "q_proj"], init_lora_weights=False)
    peft_model = get_peft_model(s.model, cfg)
    peft_model.save_pretrained(tmp_path / "ad")
    d = lora_direction(tmp_path / "ad", module="down_proj", k=2)
    assert d.layers == [0, 1, 2, 3] and d.site == "mlp_out" and d.vectors[2].shape == (64, 2)
    mod = peft_model.base_model.model.model.layers[2].mlp.down_proj
    dense = mod.get_delta_weight("default")
    s_dense = torch.linalg.svdvals(dense)
    assert torch.allclose(torch.tensor(d.stats["singular_values"]["2"]), s_dense[:2], rtol=1e-4)
    ud = torch.linalg.svd(dense)[0][:, 0]
    assert abs(_cos(d.vectors[2][:, 0], ud)) > 0.999
    right = lora_direction(tmp_path / "ad", module="q_proj", k=1)
    assert right.params["side"] == "right" and right.vectors[0].shape == (64,)
    with pytest.raises(Exception, match="no adapted module"):
        lora_direction(tmp_path / "ad", module="o_proj")


def test_sae_direction(tmp_path):
    g = torch.Generator().manual_seed(0)
    w_dec = torch.randn(32, 64, generator=g)
    d = sae_direction(w_dec, [3, 7, 9], layer=2, model="tiny-llama")
    q = d.vectors[2]
    assert q.shape == (64, 3) and torch.allclose(q.T @ q, torch.eye(3), atol=1e-5)
    rows = w_dec[[3, 7, 9]].T
    assert torch.allclose(q @ (q.T @ rows), rows, atol=1e-4)  # same span
    assert _cos(q[:, 0], w_dec[3]) > 0.999
    folder = tmp_path / "sae"
    save_tensors(folder / "sae_weights.safetensors", {"W_dec": w_dec, "W_enc": w_dec.T.contiguous(),
                                                      "b_enc": torch.zeros(32),
                                                      "b_dec": torch.zeros(64)})
    write_json(folder / "cfg.json", {"d_in": 64, "d_sae": 32, "hook_name": "blocks.1.hook_resid_post",
                                     "model_name": "tiny-llama"})
    d2 = sae_direction(folder, [3])
    assert d2.layers == [1] and d2.site == "resid_post" and d2.model == "tiny-llama"
    with pytest.raises(ShapeError, match="out of range"):
        sae_direction(w_dec, [40], layer=0)


def test_persona_projection_and_screening(planted, monkeypatch):
    s, v = planted
    pairs = [(MARK + " be bad", "be good")]
    # the random tiny model generates empty replies; give it fixed ones (generation itself
    # is the Subject's). The trait prompt carries the planted marker, so the persona vector
    # must recover v at layer 1.
    monkeypatch.setattr(s, "generate", lambda prompts, *a, **k: ["a short reply"] * len(prompts))
    res = persona_vector(s, "marked", pairs=pairs, questions=PROMPTS[:4],
                         scorer=lambda qs, ans: [1.0] * len(ans), pos_threshold=0.0,
                         neg_threshold=2.0, max_new_tokens=6)
    d = res.direction
    assert d.stats["n_kept"] == 4 and len(res.records) == 4
    assert _cos(d.vector(1), v) > 0.99
    proj = projection(s, d, _convs(PROMPTS, ANSWERS, MARK) + _convs(PROMPTS, ANSWERS), layers=[1])[1]
    assert proj.shape == (12,)
    assert proj[:6].min() > proj[6:].max()
    scr = screen_dataset(s, d, _convs(PROMPTS[:3], ANSWERS[:3], MARK), layer=1, max_new_tokens=4)
    assert len(scr.per_sample) == 3 and scr.layer == 1
    # dataset answer and the base model's own answer share the marked prompt: similar projections
    assert all(abs(r["difference"]) < 0.5 * abs(r["dataset_projection"]) for r in scr.per_sample)
    with pytest.raises(DataError, match="no pair passed"):
        persona_vector(s, "x", pairs=pairs, questions=PROMPTS[:2],
                       scorer=lambda qs, ans: [0.0] * len(ans), max_new_tokens=4)


def test_default_scorer_runs(tiny_llama):
    from emprobe.directions.extract.persona import self_contrast_scorer

    sc = self_contrast_scorer(tiny_llama, "be rude", "be kind")
    out = sc(["hi", "yo"], ["hello", "hey"])
    assert len(out) == 2 and all(isinstance(x, float) for x in out)
    json.dumps(out)
