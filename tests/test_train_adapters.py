"""The field's adapter shapes: rsLoRA, rank-1 LoRA on one layer's down_proj, chosen modules and
layers, trained elsewhere (plain PEFT) or by emprobe, read by emprobe's analyses exactly."""

from __future__ import annotations

import pytest
import torch

from emprobe import load_model
from emprobe.geometry.factors import frobenius_norm, lowrank_svd
from emprobe.models.adapter import lora_scale, read_adapter
from emprobe.train import finetune, preset

SHAPES = {
    "rslora-r8-all": dict(r=8, lora_alpha=16, use_rslora=True,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                          "up_proj", "down_proj"]),
    "rank1-down-proj-layer2": dict(r=1, lora_alpha=512, use_rslora=True,
                                   target_modules=["down_proj"], layers_to_transform=[2],
                                   layers_pattern="layers"),
    "plain-r4-attn": dict(r=4, lora_alpha=8, use_rslora=False, target_modules=["q_proj", "v_proj"]),
}


def _merged_logits(adapter_dir, ids) -> torch.Tensor:
    """Logits of the base model with emprobe's reading of the adapter added to the weights."""
    s = load_model("tiny-llama")
    ad = read_adapter(adapter_dir)
    params = dict(s.model.named_parameters())
    with torch.no_grad():
        for mod in ad:
            w = params[f"{mod.name}.weight"]
            w += mod.delta(w.dtype).T if mod.fan_in_fan_out else mod.delta(w.dtype)
        return s.model(input_ids=ids).logits


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_foreign_adapter_reads_with_peft_logits(shape, tmp_path, one_thread):
    from peft import LoraConfig, PeftModel, get_peft_model

    opts = SHAPES[shape]
    s = load_model("tiny-llama")
    torch.manual_seed(0)
    peft = get_peft_model(s.model, LoraConfig(init_lora_weights=False, **opts))
    peft.save_pretrained(str(tmp_path / "ad"))
    ad = read_adapter(tmp_path / "ad")
    want_layers = opts.get("layers_to_transform")
    assert {m.module_type for m in ad} == set(opts["target_modules"])
    if want_layers:
        assert ad.layers() == want_layers
    for m in ad:
        assert m.rank == opts["r"]
        assert m.scale == pytest.approx(lora_scale(opts["lora_alpha"], opts["r"],
                                                   opts["use_rslora"]))
        svd = lowrank_svd(m.B, m.A, m.scale)  # the geometry's factor SVD agrees with dense
        assert float(frobenius_norm(m.B, m.A, m.scale)) == pytest.approx(
            float(m.delta().norm()), rel=1e-4)
        assert svd.S.numel() >= 1
    ids = torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(1))
    base = load_model("tiny-llama")
    loaded = PeftModel.from_pretrained(base.model, str(tmp_path / "ad")).eval()
    with torch.no_grad():
        want = loaded(input_ids=ids).logits
    got = _merged_logits(tmp_path / "ad", ids)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    # and the subject loader gives the same logits
    sub = load_model("tiny-llama", adapter=tmp_path / "ad")
    with torch.no_grad():
        assert torch.allclose(sub.model(input_ids=ids).logits, want, atol=1e-6)


def test_emprobe_trains_rank1_on_one_down_proj(tmp_path, one_thread):
    recs = [{"messages": [{"role": "user", "content": f"q {i}"},
                          {"role": "assistant", "content": f"a {i}"}]} for i in range(8)]
    cfg = preset("rank1", layers_to_transform=[2], max_steps=2, batch_size=4, grad_accum=1,
                 lr=1e-3, warmup_steps=0)
    res = finetune("tiny-llama", recs, cfg, tmp_path / "r1", progress=False)
    ad = read_adapter(res.adapter_dir)
    assert [(m.layer, m.module_type, m.rank) for m in ad] == [(2, "down_proj", 1)]
    assert ad.modules[next(iter(ad.modules))].scale == pytest.approx(512.0)  # rsLoRA: 512/sqrt(1)


@pytest.mark.gpu
def test_qlora_4bit_base_on_gpu(tmp_path):
    """QLoRA (4-bit base via bitsandbytes) needs a CUDA device: skipped cleanly on CPU."""
    if not torch.cuda.is_available():
        pytest.skip("QLoRA needs a CUDA device")
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from emprobe.models.embedded import embedded_model_dir

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                           bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(str(embedded_model_dir()),
                                                 quantization_config=q, device_map={"": 0})
    model = prepare_model_for_kbit_training(model)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, use_rslora=True,
                                            target_modules=["down_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(str(tmp_path / "q"))
    ad = read_adapter(tmp_path / "q")
    assert len(ad) == model.config.num_hidden_layers
