"""Any model file: GGUF files through load_model and ``emprobe models convert``."""

from __future__ import annotations

import pytest
import torch

from emprobe import load_model
from emprobe.cli import main
from emprobe.errors import FormatError, ModelNotFoundError
from emprobe.models.gguf import convert_gguf, is_gguf_file


def test_a_file_that_is_not_gguf(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"NOPE" + b"\0" * 16)
    assert not is_gguf_file(f)
    with pytest.raises(ModelNotFoundError, match="not a model folder or a .gguf file"):
        load_model(f)
    with pytest.raises(FormatError, match="not a GGUF file"):
        convert_gguf(f, tmp_path / "out")


def test_cli_convert_errors_are_one_line(tmp_path, capsys):
    assert main(["models", "convert", str(tmp_path / "missing.gguf"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "no such GGUF file" in capsys.readouterr().err
    f = tmp_path / "x.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 8)  # magic, then garbage
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert main(["models", "convert", str(f), "--out", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["models", "convert", str(f), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot read this GGUF" in err and len(err.strip().splitlines()) == 1


@pytest.mark.integration
def test_gguf_file_loads_like_the_embedded_model(embedded):
    from emprobe.models.embedded import embedded_gguf_path

    s = load_model(embedded_gguf_path())
    assert s.path == embedded.path  # the same file is converted once
    assert s.chat_format is not None and s.chat_format.name == "tokenizer"
    assert s.tokenizer.convert_ids_to_tokens(s.end_of_turn_id()) == "<|im_end|>"


@pytest.mark.integration
def test_convert_writes_a_folder_transformers_and_peft_load(tmp_path, embedded, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from emprobe.models.embedded import embedded_gguf_path

    out = tmp_path / "smol"
    assert main(["models", "convert", str(embedded_gguf_path()), "--out", str(out)]) == 0
    assert "chat template: the GGUF's own" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(model(x).logits, embedded.model(x).logits, atol=1e-5)
        peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "down_proj"]))
        assert torch.allclose(peft(x).logits, embedded.model(x).logits, atol=1e-5)


def _write_gguf(path, block_count: int, blocks: int, width: int = 8, embed_width: int = 8):
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(block_count)
    writer.add_embedding_length(width)
    writer.add_tensor("token_embd.weight", np.zeros((16, embed_width), dtype=np.float32))
    for b in range(blocks):
        writer.add_tensor(f"blk.{b}.attn_norm.weight", np.ones(width, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_header_must_match_its_tensors(tmp_path):
    from emprobe.models.gguf import check_gguf_layout

    good = tmp_path / "good.gguf"
    _write_gguf(good, block_count=2, blocks=2)
    check_gguf_layout(good)  # consistent: no error
    short = tmp_path / "short.gguf"
    _write_gguf(short, block_count=17, blocks=1)
    with pytest.raises(FormatError, match=r"short\.gguf: llama\.block_count says 17 blocks"):
        check_gguf_layout(short)
    wide = tmp_path / "wide.gguf"
    _write_gguf(wide, block_count=1, blocks=1, width=1 << 20)
    with pytest.raises(FormatError, match=r"wide\.gguf: llama\.embedding_length"):
        check_gguf_layout(wide)
    with pytest.raises(FormatError, match="short.gguf"):
        convert_gguf(short, tmp_path / "out")
