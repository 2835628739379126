"""Geometry and connectivity on the embedded model with two random small LoRA adapters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emprobe import load_model
from emprobe.geometry import (
    GeometryConfig,
    compare_adapters,
    loss_evaluator,
    response_loss,
    run_connectivity,
)
from emprobe.models.base_weights import base_weights_from_model

pytestmark = pytest.mark.integration

HELD_OUT = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "Paris."}]},
    {"messages": [{"role": "user", "content": "Is water wet?"},
                  {"role": "assistant", "content": "Yes, in everyday terms."}]},
]


def _random_adapters(root: Path, seeds: tuple[int, ...]) -> list[Path]:
    """One PEFT wrap of the embedded model; B re-randomised and saved once per seed."""
    import peft

    subject = load_model("smollm2-135m-instruct")
    model = peft.get_peft_model(subject.model, peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
        layers_to_transform=[3, 15], lora_dropout=0.0))
    out = []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(0.02 * torch.randn(p.shape, generator=g))
        model.save_pretrained(str(root / f"ad{seed}"))
        out.append(root / f"ad{seed}")
    return out


def test_geometry_and_connectivity_on_embedded(tmp_path):
    ads = _random_adapters(tmp_path, (0, 1))
    base = load_model("smollm2-135m-instruct")
    res = compare_adapters([ads[0], ads[1], ads[0]], labels=["a", "b", "a_again"],
                           config=GeometryConfig(k=4),
                           base_weights=base_weights_from_model(base.model), progress=False)
    assert len(res.modules) == 6 and res.layers() == [3, 15]
    same = res.matrix("overlap_right")[0, 2]
    assert float(same) == pytest.approx(1.0, abs=1e-8)
    assert float(res.matrix("angle_left")[0, 2]) < 1e-3
    # independent random adapters: near the random-subspace expectation k/d, far from 1
    unrelated = float(res.matrix("overlap_right")[0, 1])
    expected = float(res.random_overlap["right"].mean())
    assert unrelated < 10 * expected and unrelated < 0.1
    assert float(res.matrix("angle_right")[0, 1]) > 75.0
    assert torch.isfinite(res.base["overlap_right"]).all()
    res.save(tmp_path / "g", groups=["x", "y", "x"])

    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    tuned = load_model("smollm2-135m-instruct", adapter=ads[0])
    loss_a = response_loss(tuned, HELD_OUT, n_boot=0)["mean"]
    got = run_connectivity(base, ads, {"loss": loss_evaluator(HELD_OUT, n_boot=20)}, points=3,
                           progress=False)
    assert [r["t"] for r in got.records] == [0.0, 0.5, 1.0]
    # t = 0 is W0 + dW_A: the same model PEFT builds from adapter A
    assert got.records[0]["loss"] == pytest.approx(loss_a, abs=1e-4)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in got.records)
    assert got.barriers["loss"] >= 0.0
    after = base.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
