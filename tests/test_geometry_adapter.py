"""Reading PEFT adapter folders into factors: scales, patterns, and refusals of bad folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from emprobe.errors import FormatError, ShapeError
from emprobe.geometry import lora_scale, read_adapter

MODS = {"self_attn.q_proj": (64, 64), "self_attn.o_proj": (64, 64), "mlp.down_proj": (64, 128)}


def write_adapter(folder: Path, r: int = 4, alpha: float = 8.0, layers=(0, 1), seed: int = 0,
                  config: dict | None = None, ranks: dict[str, int] | None = None) -> Path:
    """A PEFT-layout LoRA folder with random factors (keys as save_pretrained writes them)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in layers:
        for mod, (d_out, d_in) in MODS.items():
            name = f"model.layers.{layer}.{mod}"
            rr = (ranks or {}).get(name, r)
            tensors[f"base_model.model.{name}.lora_A.weight"] = torch.randn(rr, d_in, generator=g)
            tensors[f"base_model.model.{name}.lora_B.weight"] = torch.randn(d_out, rr, generator=g)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": alpha,
           "target_modules": ["q_proj", "o_proj", "down_proj"], "use_rslora": False}
    cfg.update(config or {})
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def test_reads_factors_layers_and_scale(tmp_path):
    ad = read_adapter(write_adapter(tmp_path / "a", r=4, alpha=8.0))
    assert len(ad) == 6
    assert ad.layers() == [0, 1]
    assert ad.module_types() == ["down_proj", "o_proj", "q_proj"]
    mo = ad.by_key()[(1, "down_proj")]
    assert mo.name == "model.layers.1.mlp.down_proj"
    assert tuple(mo.A.shape) == (4, 128) and tuple(mo.B.shape) == (64, 4)
    assert mo.scale == pytest.approx(2.0)


def test_rslora_and_patterns(tmp_path):
    folder = write_adapter(
        tmp_path / "rs", r=4, alpha=8.0,
        ranks={"model.layers.1.self_attn.q_proj": 2},
        config={"use_rslora": True, "rank_pattern": {"layers.1.self_attn.q_proj": 2},
                "alpha_pattern": {"o_proj": 3.0}})
    ad = read_adapter(folder)
    by = ad.by_key()
    assert by[(0, "q_proj")].scale == pytest.approx(8.0 / math.sqrt(4))
    assert by[(1, "q_proj")].rank == 2
    assert by[(1, "q_proj")].scale == pytest.approx(8.0 / math.sqrt(2))
    assert by[(0, "o_proj")].scale == pytest.approx(3.0 / 2.0)
    assert lora_scale(16, 4, use_rslora=False) == 4.0


def test_matches_peft_scaling(tmp_path):
    peft = pytest.importorskip("peft")
    from emprobe import load_model

    subject = load_model("tiny-llama")
    cfg = peft.LoraConfig(r=4, lora_alpha=6, target_modules=["q_proj", "down_proj"],
                          use_rslora=True, rank_pattern={"down_proj": 2})
    model = peft.get_peft_model(subject.model, cfg)
    model.save_pretrained(str(tmp_path / "p"))
    ad = read_adapter(tmp_path / "p")
    layer0_q = model.base_model.model.model.layers[0].self_attn.q_proj
    layer0_down = model.base_model.model.model.layers[0].mlp.down_proj
    by = ad.by_key()
    assert by[(0, "q_proj")].scale == pytest.approx(layer0_q.scaling["default"])
    assert by[(0, "down_proj")].scale == pytest.approx(layer0_down.scaling["default"])
    assert by[(0, "down_proj")].rank == 2
    assert len(ad) == 2 * subject.n_layers


def test_missing_config(tmp_path):
    folder = write_adapter(tmp_path / "a")
    (folder / "adapter_config.json").unlink()
    with pytest.raises(FormatError, match="no adapter_config.json"):
        read_adapter(folder)


def test_inconsistent_rank(tmp_path):
    folder = write_adapter(tmp_path / "a", r=4, config={"r": 8})
    with pytest.raises(FormatError, match="rank 4 in the weights but the config says r=8"):
        read_adapter(folder)


def test_missing_alpha(tmp_path):
    folder = write_adapter(tmp_path / "a")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    del cfg["lora_alpha"]
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match="lora_alpha"):
        read_adapter(folder)


def test_module_outside_target_modules(tmp_path):
    folder = write_adapter(tmp_path / "a", config={"target_modules": ["q_proj"]})
    with pytest.raises(FormatError, match="not in target_modules"):
        read_adapter(folder)


def test_bin_only_is_refused_without_unpickling(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    # not even a valid pickle: the reader must refuse before touching it
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04 definitely not read")
    with pytest.raises(FormatError, match="never unpickles"):
        read_adapter(folder)


def test_mismatched_factor_shapes(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 8),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(8, 3)},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    with pytest.raises(ShapeError, match="do not chain"):
        read_adapter(folder)


def test_missing_half_of_a_pair(tmp_path):
    folder = tmp_path / "half"
    folder.mkdir()
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 8)},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    with pytest.raises(FormatError, match="no lora_B"):
        read_adapter(folder)


def test_not_a_folder(tmp_path):
    with pytest.raises(FormatError, match="no such adapter folder"):
        read_adapter(tmp_path / "nope")
