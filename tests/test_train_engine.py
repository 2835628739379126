"""``finetune(engine="hf")``: emprobe's training on transformers' Trainer, against the old loop."""

from __future__ import annotations

import pytest
import torch
from train_cases import chat_records, small_config

from emprobe import load_model
from emprobe.train import CAFT, GRASP, finetune, preset
from emprobe.train.data import step_indices
from emprobe.train.engine import StepSampler, lr_lambda


def test_sampler_and_schedule_match_the_old_loop():
    lengths = [5, 1, 4, 2, 3, 6, 7, 8]
    got = list(StepSampler(lengths, steps=3, global_batch=4, seed=1))
    for s in range(3):
        assert sorted(got[4 * s:4 * s + 4]) == sorted(step_indices(8, s, 4, 1))
    cfg = small_config()
    f = lr_lambda(cfg, 4)
    assert [f(s) for s in range(4)] == [1.0, 1.0, pytest.approx(2 / 3), pytest.approx(1 / 3)]


@pytest.mark.parametrize("pack", [False, True])
def test_hf_engine_matches_the_old_loop(tmp_path, pack, one_thread):
    recs = chat_records()
    runs = {}
    for engine in ("emprobe", "hf"):
        s = load_model("tiny-llama")
        res = finetune(s, recs, small_config(pack=pack), tmp_path / engine, progress=False,
                       engine=engine, keep_model=True)
        assert res.subject is not None
        runs[engine] = ([r["loss"] for r in res.metrics()],
                        {n: p.detach().clone() for n, p in res.subject.model.named_parameters()
                         if "lora_" in n})
    old, new = runs["emprobe"], runs["hf"]
    assert len(old[0]) == len(new[0]) == 4
    assert old[0] == pytest.approx(new[0], rel=1e-4, abs=1e-5)
    diff = max(float((old[1][k] - new[1][k]).abs().max()) for k in old[1])
    assert diff < 1e-4, diff
    assert (tmp_path / "hf" / "adapter" / "adapter_config.json").is_file()


def test_hf_engine_interventions_checkpoints_and_resume(tmp_path, one_thread):
    recs = chat_records()
    g = torch.Generator().manual_seed(0)
    basis = {1: torch.randn(64, generator=g)}
    cfg = small_config(checkpoint_every=2)
    s = load_model("tiny-llama")
    full = finetune(s, recs, cfg, tmp_path / "full", progress=False, engine="hf",
                    interventions=[CAFT(basis)])
    assert [p.name for p in full.checkpoints] == ["step-000002", "step-000004"]
    s2 = load_model("tiny-llama")
    part = finetune(s2, recs, cfg, tmp_path / "cut", progress=False, engine="hf",
                    interventions=[CAFT(basis)], stop_after=2)
    assert not part.finished and part.steps == 2
    s3 = load_model("tiny-llama")
    rest = finetune(s3, recs, cfg, tmp_path / "cut", progress=False, engine="hf",
                    interventions=[CAFT(basis)])
    assert rest.resumed_from == 2 and rest.finished
    a = [r["loss"] for r in full.metrics()]
    b = [r["loss"] for r in rest.metrics()]
    assert a == pytest.approx(b, rel=1e-5)


def test_hf_engine_grasp_keeps_updates_off_the_subspace(tmp_path, one_thread):
    s = load_model("tiny-llama")
    u = torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(2)),
                                      dim=0)
    name = "model.layers.1.self_attn.o_proj"
    res = finetune(s, chat_records(), small_config(), tmp_path / "g", progress=False, engine="hf",
                   interventions=[GRASP(blocked={name: u})], keep_model=True)
    assert res.subject is not None
    b = [p for n, p in res.subject.model.named_parameters()
         if "layers.1.self_attn.o_proj.lora_B" in n][0]
    assert float(b.norm()) > 0
    assert float((u @ b).norm()) <= 1e-6 * float(b.norm())


@pytest.mark.parametrize("engine", ["emprobe", "hf"])
def test_gradient_checkpointing_keeps_the_hooks(tmp_path, engine, one_thread):
    """With CAFT on, checkpointed training equals plain training (the hooks re-run)."""
    g = torch.Generator().manual_seed(0)
    basis = {1: torch.randn(64, 2, generator=g), 2: torch.randn(64, generator=g)}
    losses = []
    for ckpt in (False, True):
        res = finetune(load_model("tiny-llama"), chat_records(), small_config(max_steps=3),
                       tmp_path / f"{engine}{ckpt}", progress=False, engine=engine,
                       interventions=[CAFT(basis)], gradient_checkpointing=ckpt)
        losses.append([r["loss"] for r in res.metrics()])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_cli_engine_pack_and_checkpointing_flags(tmp_path, capsys, one_thread):
    import json

    from emprobe.cli import main
    from emprobe.io import write_jsonl

    data = write_jsonl(tmp_path / "d.jsonl", chat_records())
    rc = main(["train", "--model", "tiny-llama", "--data", str(data), "--out",
               str(tmp_path / "o"), "--max-steps", "2", "--batch-size", "4", "--quiet",
               "--engine", "hf", "--pack", "--gradient-checkpointing", "--no-rslora",
               "--checkpoint-every", "1"])
    assert rc == 0
    cfg = json.loads((tmp_path / "o" / "train_config.json").read_text())
    assert cfg["pack"] is True and cfg["use_rslora"] is False
    ck = tmp_path / "o" / "checkpoints" / "step-000002"
    assert (ck / "adapter" / "adapter_model.safetensors").is_file()
    assert not list((tmp_path / "o").glob("checkpoint-*"))
    assert len((tmp_path / "o" / "metrics.jsonl").read_text().splitlines()) == 2
    assert "adapter:" in capsys.readouterr().out


@pytest.mark.integration
def test_default_engine_trains_the_embedded_gguf_model(tmp_path, one_thread):
    """The embedded model is read from GGUF: float weights, but transformers' GGUF tag, which
    ``Trainer`` refuses. The default (hf) engine must train it anyway, one step, LoRA B moved."""
    from safetensors.torch import load_file

    subject = load_model()
    assert getattr(subject.model, "hf_quantizer", None) is not None  # the case under test
    recs = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": f"Answer number {i}."}]}
            for i in range(4)]
    run = finetune(subject, recs, preset("cpu-lora", max_steps=1, batch_size=2, warmup_steps=0,
                                         checkpoint_every=0), tmp_path / "run", progress=False)
    weights = load_file(str(run.adapter_dir / "adapter_model.safetensors"))
    assert sum(float(v.abs().sum()) for k, v in weights.items() if "lora_B" in k) > 0
