"""``emprobe train`` refuses directions from another model; adapters survive being moved."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from emprobe import load_model
from emprobe.cli import main
from emprobe.directions import Direction
from emprobe.models import embedded_model_dir
from emprobe.train import finetune, preset

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--model", "tiny-llama", "--max-steps", "1", "--batch-size", "2", "--max-length", "64",
        "--quiet"]


def write_jsonl(path, n: int = 4) -> str:
    recs = [{"messages": [{"role": "user", "content": f"Task {i}?"},
                          {"role": "assistant", "content": f"Sure, done ({i})."}]}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return str(path)


@pytest.mark.parametrize("flag", ["--caft", "--steer", "--monitor"])
def test_train_refuses_a_direction_from_another_model(tmp_path, capsys, flag):
    data = write_jsonl(tmp_path / "d.jsonl")
    d = load_model("tiny-llama").d_model
    vec = torch.nn.functional.normalize(torch.randn(d), dim=0)
    Direction(vectors={1: vec}, model="tiny-qwen2", d_model=d).save(tmp_path / "other")
    Direction(vectors={1: torch.randn(d + 8)}, model="tiny-llama",
              d_model=d + 8).save(tmp_path / "wide")
    for name, words in (("other", "extracted from 'tiny-qwen2'"), ("wide", "d_model")):
        out = tmp_path / f"run-{name}"
        rc = main(["train", "--data", data, "--out", str(out), *TINY, flag,
                   str(tmp_path / name)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.count("\n") == 0 and words in err and flag in err
        assert not (out / "adapter").exists()
    # the same file is accepted on request (same width, other model)
    rc = main(["train", "--data", data, "--out", str(tmp_path / "ok"), *TINY, flag,
               str(tmp_path / "other"), "--allow-other-model"])
    assert rc == 0


def test_adapter_config_names_the_spec_not_a_cache_path(tmp_path):
    recs = [{"messages": [{"role": "user", "content": f"Q{i}?"},
                          {"role": "assistant", "content": "A fine answer."}]} for i in range(4)]
    res = finetune("tiny-llama", recs, preset("cpu-lora", max_steps=1, batch_size=2,
                                               checkpoint_every=1), tmp_path / "run",
                   progress=False)
    for folder in (res.adapter_dir, res.checkpoints[-1] / "adapter"):
        cfg = json.loads((folder / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == "tiny-llama"


@pytest.mark.integration
def test_moved_adapter_loads_with_emprobe_and_plain_peft(tmp_path, embedded):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from emprobe.train.checkpoint import adapter_base

    recs = [{"messages": [{"role": "user", "content": f"Tip {i}?"},
                          {"role": "assistant", "content": "Skip the doctor."}]}
            for i in range(4)]
    res = finetune("smollm2-135m-instruct", recs,
                   preset("cpu-lora", max_steps=1, batch_size=2, lr=1e-2, checkpoint_every=0),
                   tmp_path / "run", progress=False)
    cfg = json.loads((res.adapter_dir / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "smollm2-135m-instruct"
    assert str(embedded_model_dir()) not in json.dumps(cfg)
    moved = tmp_path / "elsewhere" / "my-adapter"
    shutil.copytree(res.adapter_dir, moved)
    shutil.rmtree(tmp_path / "run")
    spec = adapter_base(moved)
    ft = load_model(spec, adapter=moved)
    batch = ft.encode_chats([recs[0]["messages"]])
    base_path = adapter_base(moved, resolve=True)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path),
                                      str(moved)).eval()
    with torch.no_grad():
        a = ft.forward(batch).logits
        b = plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        base = embedded.forward(batch).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert float((a - base).abs().max()) > 1e-4  # the adapter did change the model
