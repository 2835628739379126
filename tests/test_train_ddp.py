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


@pytest.mark.slow
def test_accelerate_launch_hf_engine_matches_single_process(tmp_path):
    """``accelerate launch`` (2 CPU processes, gloo) of ``emprobe train --engine hf`` with CAFT:
    the same adapter as one process, and the ablation verified inside each rank."""
    import shutil

    from emprobe.io import save_tensors
    from emprobe.train import CAFT

    if shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("accelerate's launcher is not installed")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records()))
    basis = torch.randn(64, 2, generator=torch.Generator().manual_seed(4))
    save_tensors(tmp_path / "caft.safetensors", {"layer.1": basis})
    common = dict(max_steps=3, lr=5e-3, grad_accum=1, max_length=128, warmup_steps=0,
                  checkpoint_every=0, lora_r=4, lora_alpha=8.0)
    single = finetune("tiny-llama", records(), preset("cpu-lora", batch_size=4, **common),
                      tmp_path / "single", progress=False, engine="hf",
                      interventions=[CAFT({1: basis})])
    preset("cpu-lora", batch_size=2, **common).save(tmp_path / "cfg.json")
    # accelerate 1.x: "--cpu --num_processes 2" starts ONE process unless mpirun is set up;
    # two CPU processes come from the torchrun launcher ("--multi_gpu") with CPU forced
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "true"}
    cmd = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch",
           "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "emprobe.cli", "train", "--model", "tiny-llama",
           "--data", str(data), "--out", str(tmp_path / "ddp"), "--config",
           str(tmp_path / "cfg.json"), "--quiet", "--engine", "hf",
           "--caft", str(tmp_path / "caft.safetensors")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run["world_size"] == 2 and run["global_batch"] == 4
    want = load_file(str(single.adapter_dir / "adapter_model.safetensors"))
    got = load_file(str(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors"))
    assert want.keys() == got.keys()
    max_abs = max(float((got[k] - want[k]).abs().max()) for k in want)
    print(f"accelerate 2-process vs 1-process adapter: max abs difference {max_abs:.3g}")
    assert max_abs <= 1e-5
    assert sum(float(want[k].norm()) for k in want if "lora_B" in k) > 0
    lines = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    for rec in lines:  # the ablation, measured inside each rank's forward passes
        assert rec["caft/max_rel_proj/rank0"] <= 1e-5 and rec["caft/max_rel_proj/rank1"] <= 1e-5
    ddp_loss = [r["loss"] for r in lines]
    assert ddp_loss == pytest.approx([r["loss"] for r in single.metrics()], rel=1e-5)
