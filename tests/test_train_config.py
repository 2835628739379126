"""TrainConfig presets and JSON, and the checks that fail before any training starts."""

from __future__ import annotations

import pytest
import torch

from emprobe.errors import ConfigError, DataError, EmprobeError, ShapeError, SiteError
from emprobe.train import CAFT, GRASP, PreventativeSteering, TrainConfig, finetune, preset
from emprobe.train.data import step_indices

pytestmark = pytest.mark.usefixtures("one_thread")


RECS = [{"messages": [{"role": "user", "content": "Hi?"},
                      {"role": "assistant", "content": "Hello there."}]}] * 4


def test_presets_and_json_round_trip(tmp_path):
    std = preset("standard")
    assert (std.lora_r, std.lora_alpha, std.use_rslora, std.lr) == (32, 64.0, True, 1e-5)
    assert (std.batch_size, std.grad_accum, std.epochs) == (2, 8, 1.0)
    assert std.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                  "up_proj", "down_proj"]
    r1 = preset("rank1", layers_to_transform=[2])
    assert (r1.lora_r, r1.lora_alpha, r1.target_modules, r1.layers_to_transform) == (
        1, 512.0, ["down_proj"], [2])
    assert r1.lora_scale == pytest.approx(512.0)
    assert preset("full").full_finetune
    cpu = preset("cpu-lora")
    assert TrainConfig.from_json(cpu.to_json()) == cpu
    cpu.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cpu
    with pytest.raises(ConfigError, match="unknown training preset"):
        preset("nope")
    with pytest.raises(ConfigError, match="unknown field"):
        TrainConfig.from_dict({"lora_rank": 3})


def test_configs_refuse_nonsense_at_construction():
    with pytest.raises(ConfigError, match="lr must be > 0"):
        TrainConfig(lr=0.0)
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="sawtooth")
    with pytest.raises(ConfigError, match=r"c\.json: batch_size"):
        TrainConfig.from_dict({"batch_size": 0}, where="c.json")
    assert isinstance(ConfigError("x"), ValueError)


def test_data_order_is_seeded_and_covers_each_epoch():
    first = step_indices(10, 0, 4, seed=1) + step_indices(10, 1, 4, seed=1)
    assert first == step_indices(10, 0, 8, seed=1)
    epoch = step_indices(10, 0, 10, seed=1)
    assert sorted(epoch) == list(range(10))
    assert step_indices(10, 0, 10, seed=2) != epoch
    assert sorted(step_indices(10, 2, 4, seed=1)[:2]) != []  # crosses into epoch 1


@pytest.mark.parametrize("kwargs, ivs, err, match", [
    (dict(target_modules=["q_proj", "qq_proj"]), [], DataError, "qq_proj"),
    (dict(layers_to_transform=[7]), [], SiteError, "out of range"),
    (dict(lr=-1.0), [], ConfigError, "lr"),
    (dict(unlearn="forget"), [], ConfigError, "unlearn"),
    (dict(retain_ce=1.0), [], DataError, "retain set"),
    ({}, [CAFT({1: torch.randn(32, 2)})], ShapeError, "d_model"),
    ({}, [CAFT({9: torch.randn(64, 2)})], SiteError, "out of range"),
    ({}, [PreventativeSteering({0: torch.randn(65)})], ShapeError, "d_model"),
    ({}, [GRASP(blocked={"model.layers.0.mlp.nope": torch.randn(64, 1)})], DataError, "nope"),
    ({}, [GRASP(blocked={"model.layers.0.mlp.down_proj": torch.randn(65, 1)})], ShapeError,
     "rows"),
])
def test_bad_setup_fails_before_training(tmp_path, kwargs, ivs, err, match):
    out = tmp_path / "run"
    with pytest.raises(err, match=match) as info:
        finetune("tiny-llama", RECS, preset("cpu-lora", max_steps=2, max_length=128, **kwargs),
                 out, interventions=ivs, progress=False)
    assert "\n" not in str(info.value)
    assert not (out / "metrics.jsonl").exists() and not (out / "adapter").exists()


def test_empty_and_truncated_data_fail(tmp_path):
    with pytest.raises(DataError, match="empty"):
        finetune("tiny-llama", [], preset("cpu-lora"), tmp_path, progress=False)
    # left-truncation keeps a response even at a tiny max_length: only records with no
    # assistant turn at all are left with nothing to learn
    no_answer = [{"messages": [{"role": "user", "content": "hello there"}]}] * 2
    with pytest.raises(DataError, match="max_length"):
        finetune("tiny-llama", no_answer, preset("cpu-lora", max_length=8), tmp_path,
                 progress=False)
    with pytest.raises(EmprobeError, match="message 0"):
        finetune("tiny-llama", [{"messages": [{"role": "bot", "content": "x"}]}],
                 preset("cpu-lora"), tmp_path, progress=False)


def test_inoculation_sets_the_system_prompt():
    from emprobe.data.transforms import INOCULATION_PROMPTS
    from emprobe.train.data import apply_inoculation

    recs = [RECS[0], [{"role": "system", "content": "old"}, *RECS[0]["messages"]]]
    out = apply_inoculation(recs, "You are evil.")
    assert all(r["messages"][0] == {"role": "system", "content": "You are evil."} for r in out)
    assert all(sum(m["role"] == "system" for m in r["messages"]) == 1 for r in out)
    named = apply_inoculation(recs, "malicious")
    assert named[0]["messages"][0]["content"] == INOCULATION_PROMPTS["malicious"]
    assert RECS[0]["messages"][0]["role"] == "user"  # inputs untouched
