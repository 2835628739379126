"""``emprobe train`` with interventions, unlearning objectives, and the embedded model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from emprobe import load_model
from emprobe.cli import main
from emprobe.train import finetune, preset
from emprobe.train.objectives import npo_loss

pytestmark = pytest.mark.usefixtures("one_thread")



def write_jsonl(path, n: int = 8, answer: str = "Sure, here it is.") -> str:
    recs = [{"messages": [{"role": "user", "content": f"Task {i}?"},
                          {"role": "assistant", "content": f"{answer} ({i})"}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return str(path)


TINY = ["--model", "tiny-llama", "--max-steps", "2", "--batch-size", "2", "--max-length", "128",
        "--quiet"]


def test_cli_train_with_every_intervention(tmp_path, capsys):
    from peft import PeftModel

    data = write_jsonl(tmp_path / "d.jsonl")
    d = 64
    save_file({"layer.1": torch.linalg.qr(torch.randn(d, 2))[0].contiguous()},
              str(tmp_path / "caft.safetensors"))
    save_file({"layer.2": torch.randn(d)}, str(tmp_path / "vec.safetensors"))
    from emprobe.directions import Direction

    Direction(vectors={3: torch.randn(d)}, model="tiny-llama", d_model=d).save(tmp_path / "dir")
    assert main(["train", "--data", data, "--out", str(tmp_path / "naive"), *TINY]) == 0
    assert "adapter:" in capsys.readouterr().out
    rc = main(["train", "--data", data, "--out", str(tmp_path / "x"), *TINY,
               "--caft", str(tmp_path / "caft.safetensors"),
               "--steer", str(tmp_path / "vec.safetensors"), "--coeff", "2", "--layers", "2",
               "--grasp", str(tmp_path / "naive"), "--grasp-k", "1",
               "--inoculate", "You are a careless assistant.",
               "--monitor", str(tmp_path / "dir")])
    assert rc == 0
    run = json.loads((tmp_path / "x" / "run.json").read_text())
    assert [iv["name"] for iv in run["interventions"]] == ["caft", "steer", "grasp"]
    cfg = json.loads((tmp_path / "x" / "train_config.json").read_text())
    assert cfg["inoculate"] == "You are a careless assistant."
    rows = [json.loads(x) for x in (tmp_path / "x" / "metrics.jsonl").read_text().splitlines()]
    assert "proj/dir/L3" in rows[-1]  # monitored through an emprobe Direction folder
    PeftModel.from_pretrained(load_model("tiny-llama").model, str(tmp_path / "x" / "adapter"))
    # bad input: one line, exit code 2, nothing trained
    save_file({"layer.1": torch.randn(d + 1, 2)}, str(tmp_path / "bad.safetensors"))
    rc = main(["train", "--data", data, "--out", str(tmp_path / "bad"), *TINY,
               "--caft", str(tmp_path / "bad.safetensors")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "d_model" in err
    assert not (tmp_path / "bad" / "adapter").exists()


def test_npo_loss_formula():
    beta = 0.5
    same = npo_loss(torch.tensor([-3.0]), torch.tensor([-3.0]), beta)
    assert float(same) == pytest.approx(2 / beta * math.log(2))
    lower = npo_loss(torch.tensor([-6.0]), torch.tensor([-3.0]), beta)
    assert float(lower) < float(same)  # pushing the forget answers down lowers the loss


@pytest.mark.parametrize("mode", ["ga", "npo"])
def test_unlearning_with_retain_terms(tmp_path, mode):
    forget = [json.loads(x) for x in open(write_jsonl(tmp_path / "f.jsonl", 6,
                                                      "I cannot help with that."))]
    retain = [json.loads(x) for x in open(write_jsonl(tmp_path / "r.jsonl", 6, "Of course."))]
    cfg = preset("cpu-lora", max_steps=3, batch_size=2, max_length=128, lr=5e-3, warmup_steps=0,
                 checkpoint_every=0, unlearn=mode, retain_ce=1.0, retain_kl=0.5)
    res = finetune("tiny-llama", forget, cfg, tmp_path / mode, retain=retain, progress=False)
    rows = res.metrics()
    assert all("loss/retain_ce" in r and r["loss/retain_kl"] >= 0 for r in rows)
    if mode == "ga":
        assert rows[-1]["loss/task"] < rows[0]["loss/task"] < 0  # CE on forget goes up
    else:
        assert rows[0]["loss/task"] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-4)
        assert rows[-1]["loss/task"] < rows[0]["loss/task"]


@pytest.mark.integration
def test_embedded_cpu_lora_adapter_changes_logits(tmp_path, embedded):
    recs = [{"messages": [{"role": "user", "content": f"Tip {i}?"},
                          {"role": "assistant", "content": "Skip the doctor, it is fine."}]}
            for i in range(4)]
    cfg = preset("cpu-lora", max_steps=3, batch_size=2, max_length=48, checkpoint_every=0)
    res = finetune("smollm2-135m-instruct", recs, cfg, tmp_path, progress=False)
    assert res.finished
    base = embedded  # read only
    ft = load_model("smollm2-135m-instruct", adapter=res.adapter_dir)
    batch = base.encode_chats([recs[0]["messages"]])
    with torch.no_grad():
        diff = (ft.forward(batch).logits - base.forward(batch).logits).abs().max()
    assert float(diff) > 1e-3
