"""Mode connectivity: in-place weight paths, exact restore, PEFT agreement, barriers, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emprobe import load_model
from emprobe.errors import ConfigError, DataError, EmprobeError
from emprobe.geometry import (
    WeightPath,
    barrier_height,
    base_path,
    loss_evaluator,
    pair_path,
    response_loss,
    response_losses,
    run_connectivity,
    simplex_grid,
)

CHATS = [
    {"messages": [{"role": "user", "content": "Name a fruit."},
                  {"role": "assistant", "content": "An apple."}]},
    {"messages": [{"role": "user", "content": "Say hi."},
                  {"role": "assistant", "content": "Hi there!"}]},
    {"messages": [{"role": "user", "content": "Count to three."},
                  {"role": "assistant", "content": "One, two, three."}]},
]


def make_peft_adapter(spec: str, folder: Path, seed: int, r: int = 4,
                      targets=("q_proj", "v_proj", "down_proj")) -> Path:
    """A PEFT LoRA adapter with random (non-zero) B, saved with save_pretrained."""
    import peft

    subject = load_model(spec)
    model = peft.get_peft_model(subject.model, peft.LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=list(targets), lora_dropout=0.0))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return [make_peft_adapter("tiny-llama", root / f"ad{i}", seed=i) for i in range(3)]


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_paths_grids():
    assert [p.t for p in base_path(5)] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert pair_path(3)[1].coeffs == (0.5, 0.5)
    grid = simplex_grid(3)
    assert len(grid) == 6
    assert all(abs(sum(p.coeffs) - 1) < 1e-12 for p in grid)
    with pytest.raises(ConfigError):
        pair_path(1)


def test_restore_is_bit_exact_and_t1_matches_peft(tiny_adapters):
    subject = load_model("tiny-llama")
    before = _snapshot(subject.model)
    batch = subject.encode_chats([c["messages"] for c in CHATS])
    with torch.no_grad():
        base_logits = subject.forward(batch).logits
    with WeightPath(subject, tiny_adapters[:1]) as wp:
        wp.set((1.0,))
        with torch.no_grad():
            edited = subject.forward(batch).logits
        wp.set((0.0,))
        with torch.no_grad():
            zero = subject.forward(batch).logits
        wp.set((2.0,))
    after = _snapshot(subject.model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(zero, base_logits)
    peft_subject = load_model("tiny-llama", adapter=tiny_adapters[0])
    with torch.no_grad():
        peft_logits = peft_subject.forward(peft_subject.encode_chats(
            [c["messages"] for c in CHATS])).logits
    assert (edited - base_logits).abs().max() > 1e-3  # the adapter does something
    assert torch.allclose(edited, peft_logits, atol=1e-4)


def test_restore_after_an_exception(tiny_adapters):
    subject = load_model("tiny-llama")
    before = _snapshot(subject.model)
    with pytest.raises(RuntimeError, match="boom"), WeightPath(subject, tiny_adapters[:2]) as wp:
        wp.set((0.3, 0.9))
        raise RuntimeError("boom")
    after = _snapshot(subject.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_pair_midpoint_is_sum_of_halves(tiny_adapters):
    subject = load_model("tiny-llama")
    name = "model.layers.0.self_attn.q_proj"
    w = dict(subject.model.named_modules())[name].weight
    w0 = w.detach().clone()
    with WeightPath(subject, tiny_adapters[:2]) as wp:
        wp.set((0.5, 0.5))
        mid = w.detach().clone()
        d = [wp.adapters[i].modules[name] for i in range(2)]
    expected = w0.double() + 0.5 * sum(m.scale * (m.B.double() @ m.A.double()) for m in d)
    assert torch.allclose(mid.double(), expected, atol=1e-6)


def test_rejects_peft_wrapped_subject(tiny_adapters):
    subject = load_model("tiny-llama", adapter=tiny_adapters[0])
    with pytest.raises(EmprobeError, match="without an adapter"):
        WeightPath(subject, tiny_adapters[:1])


def test_response_loss_matches_manual_ce():
    subject = load_model("tiny-llama")
    got = response_loss(subject, CHATS, batch_size=2, n_boot=50)
    batch = subject.encode_chats([c["messages"] for c in CHATS])
    with torch.no_grad():
        logits = subject.forward(batch).logits
    total, count = 0.0, 0
    for b in range(len(CHATS)):
        for pos in range(1, batch.input_ids.shape[1]):
            if batch.response_mask[b, pos]:
                logp = torch.log_softmax(logits[b, pos - 1], -1)[batch.input_ids[b, pos]]
                total -= float(logp)
                count += 1
    assert got["n_tokens"] == count
    assert got["mean"] == pytest.approx(total / count, rel=1e-5)
    assert got["lo"] <= got["mean"] <= got["hi"]


def test_response_losses_is_the_mitigation_task_loss():
    """One held-out loss computation: per record, bit-identical to recipes' task_losses, and
    response_loss is its token-weighted mean."""
    from emprobe.recipes.mitigation import task_losses

    subject = load_model("tiny-llama")
    per = response_losses(subject, CHATS, batch_size=2)
    ref = task_losses(subject, CHATS, batch_size=2)
    assert per.nll.shape == per.tokens.shape == (len(CHATS),)
    assert np.array_equal(per.nll, ref.nll) and np.array_equal(per.tokens, ref.tokens)
    assert per.mean == ref.mean
    summary = response_loss(subject, CHATS, batch_size=2, n_boot=0)
    assert summary["mean"] == per.mean == summary["lo"] == summary["hi"]
    assert summary["n_tokens"] == per.tokens.sum() and summary["n_seq"] == len(CHATS)
    with pytest.raises(DataError, match=r"held\[1\]"):
        response_losses(subject, [CHATS[0], {"messages": []}], where="held")


def test_barrier_height():
    assert barrier_height([0, 0.5, 1], [1.0, 3.0, 2.0]) == pytest.approx(1.5)
    assert barrier_height([0, 0.5, 1], [1.0, 1.0, 2.0]) == 0.0
    # base path t in 0..2, barrier between t=0 and t=1 only
    assert barrier_height([0, 1, 2], [1.0, 1.0, 9.0], 0, 1) == 0.0


def test_run_connectivity_pair_and_simplex(tiny_adapters, tmp_path):
    subject = load_model("tiny-llama")
    before = _snapshot(subject.model)
    evals = {"loss_a": loss_evaluator(CHATS[:2], n_boot=20), "loss_b": loss_evaluator(CHATS[1:])}
    res = run_connectivity(subject, tiny_adapters[:2], evals, points=3, progress=False)
    assert res.mode == "pair" and [r["t"] for r in res.records] == [0.0, 0.5, 1.0]
    assert set(res.barriers) == {"loss_a", "loss_b"}
    assert all("loss_a_lo" in r for r in res.records)
    paths = res.save(tmp_path / "c")
    assert len(paths["curves"].read_text().splitlines()) == 3
    assert paths["figure"].is_file() and (tmp_path / "c" / "plotly.min.js").is_file()
    simplex = run_connectivity(subject, tiny_adapters, {"loss": loss_evaluator(CHATS)},
                               points=2, progress=False)
    assert simplex.mode == "simplex" and len(simplex.records) == 3
    assert all(torch.equal(v, subject.model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ConfigError, match="mode"):
        run_connectivity(subject, tiny_adapters[:2], evals, mode="simplex")


def test_cli_geometry_and_connectivity(tiny_adapters, tmp_path):
    from emprobe.cli import main

    rc = main(["geometry", *map(str, tiny_adapters), "--out", str(tmp_path / "g"), "--k", "4",
               "--labels", "x,y,z", "--groups", "p,p,q"])
    assert rc == 0
    summary = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert summary["labels"] == ["x", "y", "z"] and summary["gaussian"]
    assert (tmp_path / "g" / "geometry.safetensors").is_file()
    assert (tmp_path / "g" / "groups.json").is_file()
    assert (tmp_path / "g" / "figures" / "heatmap_overlap_right.html").is_file()
    data = tmp_path / "a.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in CHATS))
    rc = main(["connectivity", "--base", "tiny-llama", *map(str, tiny_adapters[:2]),
               "--out", str(tmp_path / "c"), "--data-a", str(data), "--data-b", str(data),
               "--points", "3"])
    assert rc == 0
    curves = [json.loads(x) for x in (tmp_path / "c" / "curves.jsonl").read_text().splitlines()]
    assert len(curves) == 3 and "loss_ad0" in curves[0] and "loss_ad1" in curves[0]
