"""Data-parallel training: two CPU processes (gloo, torchrun) match one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from emprobe.train import finetune, preset

pytestmark = pytest.mark.usefixtures("one_thread")



def records(n: int = 16) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Number {i}?"},
                          {"role": "assistant", "content": f"It is {i * 7} ok."}]}
            for i in range(n)]


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records()))
    common = dict(max_steps=3, lr=5e-3, grad_accum=1, max_length=128, warmup_steps=0,
                  checkpoint_every=0, lora_r=4, lora_alpha=8.0)
    single = finetune("tiny-llama", records(), preset("cpu-lora", batch_size=4, **common),
                      tmp_path / "single", progress=False)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "emprobe.cli", "train", "--model", "tiny-llama", "--data", str(data),
           "--out", str(tmp_path / "ddp"), "--config", str(tmp_path / "cfg.json"), "--quiet"]
    # same settings, half the per-process batch: the global batch is 2 x 2 = 4
    preset("cpu-lora", batch_size=2, **common).save(tmp_path / "cfg.json")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run["world_size"] == 2 and run["global_batch"] == 4
    want = load_file(str(single.adapter_dir / "adapter_model.safetensors"))
    got = load_file(str(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors"))
    assert want.keys() == got.keys()
    moved = 0.0
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-4)
        if "lora_B" in k:
            moved += float(want[k].norm())
    assert moved > 0
    single_loss = [r["loss"] for r in single.metrics()]
    ddp_loss = [json.loads(x)["loss"] for x in
                (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert ddp_loss == pytest.approx(single_loss, rel=1e-5)
