"""Fine-tuning on tiny models: outputs, resume exactness, CAFT, GRASP, hooks, monitoring."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from emprobe import collect, load_model
from emprobe.errors import ConfigError
from emprobe.train import (
    CAFT,
    GRASP,
    PreventativeSteering,
    TrainConfig,
    factor_svd,
    finetune,
    preset,
)
from emprobe.train.interventions import lora_modules

pytestmark = pytest.mark.usefixtures("one_thread")


LAYER = 1


def make_records(n: int = 16) -> list[dict]:
    words = ["apple", "river", "stone", "cloud", "maple", "tiger", "amber", "frost"]
    return [
        {"messages": [
            {"role": "user", "content": f"Say something about {words[i % 8]} {i}."},
            {"role": "assistant", "content": f"zq {words[(i * 3) % 8]} zq zq."},
        ]}
        for i in range(n)
    ]


def tiny_config(**kw) -> TrainConfig:
    base = dict(max_steps=4, batch_size=4, max_length=128, lr=1e-2, warmup_steps=0,
                checkpoint_every=2, lora_dropout=0.1, lora_r=4, lora_alpha=8.0)
    return preset("cpu-lora", **{**base, **kw})


def adapter_tensors(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def response_shift(adapter_dir, convs) -> torch.Tensor:
    """Mean over response tokens of resid_post[LAYER] (fine-tuned minus base) ``[d_model]``."""
    base = load_model("tiny-llama")
    ft = load_model("tiny-llama", adapter=adapter_dir)
    a = collect(base, convs, layers=[LAYER], positions="response").acts[LAYER]
    b = collect(ft, convs, layers=[LAYER], positions="response").acts[LAYER]
    return (b - a).float().mean(0)


@pytest.fixture(scope="module")
def naive(tmp_path_factory):
    out = tmp_path_factory.mktemp("naive")
    return finetune("tiny-llama", make_records(), tiny_config(), out, progress=False)


def test_outputs_and_peft_loading(naive):
    from peft import PeftModel

    out = naive.out_dir
    assert (naive.adapter_dir / "adapter_config.json").is_file()
    assert TrainConfig.load(out / "train_config.json") == naive.config
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    for key in ("loss", "lr", "step_time_s", "tokens", "norm/A", "norm/B"):
        assert key in lines[0]
    assert lines[-1]["loss"] < lines[0]["loss"]  # it learns
    assert [c.name for c in naive.checkpoints] == ["step-000002", "step-000004"]
    ck = naive.checkpoints[0]
    for f in ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors",
              "trainer_state.json", "adapter/adapter_config.json"):
        assert (ck / f).is_file()
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.bin"))
    # plain peft and emprobe both load it, and it changes the logits
    base = load_model("tiny-llama")
    batch = base.encode_chats([make_records()[0]["messages"]])
    with torch.no_grad():
        ref = base.forward(batch).logits
    peft_model = PeftModel.from_pretrained(load_model("tiny-llama").model, str(naive.adapter_dir))
    sub = load_model("tiny-llama", adapter=naive.adapter_dir)
    with torch.no_grad():
        got = sub.forward(batch).logits
        got2 = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert (got - ref).abs().max() > 1e-3
    torch.testing.assert_close(got, got2)


def test_resume_is_exact(naive, tmp_path):
    first = finetune("tiny-llama", make_records(), tiny_config(), tmp_path, progress=False,
                     stop_after=2)
    assert not first.finished and first.steps == 2
    second = finetune("tiny-llama", make_records(), tiny_config(), tmp_path, progress=False)
    assert second.resumed_from == 2 and second.finished
    want, got = adapter_tensors(naive.adapter_dir), adapter_tensors(second.adapter_dir)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=0)
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    # a different config in the same folder is refused
    with pytest.raises(Exception, match="different config"):
        finetune("tiny-llama", make_records(), tiny_config(lr=1e-3), tmp_path, progress=False)


def test_factor_svd_matches_dense():
    g = torch.Generator().manual_seed(0)
    b, a = torch.randn(20, 3, generator=g), torch.randn(3, 15, generator=g)
    u, s, v = factor_svd(b, a, scale=2.0)
    ud, sd, vhd = torch.linalg.svd(2.0 * b.double() @ a.double())
    torch.testing.assert_close(s.double(), sd[:3], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((u.double().T @ ud[:, :3]).abs(), torch.eye(3, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close((v.double().T @ vhd[:3].T).abs(), torch.eye(3, dtype=torch.float64),
                               atol=1e-5, rtol=0)


def test_grasp_keeps_update_orthogonal(naive, tmp_path):
    grasp = GRASP.from_adapter(naive.out_dir, k=1, side="both")
    assert len(grasp.blocked) == 8  # o_proj and down_proj of 4 layers
    res = finetune("tiny-llama", make_records(), tiny_config(checkpoint_every=0), tmp_path,
                   interventions=[grasp], progress=False)
    old, new = adapter_tensors(naive.adapter_dir), adapter_tensors(res.adapter_dir)
    for name, u in grasp.blocked.items():
        key_b = f"base_model.model.{name}.lora_B.weight"
        key_a = f"base_model.model.{name}.lora_A.weight"
        b_new, b_old = new[key_b], old[key_b]
        assert (u.T @ b_old).norm() / b_old.norm() > 0.1  # the naive update writes along u
        assert (u.T @ b_new).norm() <= 1e-6 * b_new.norm()  # the new one cannot
        assert b_new.norm() > 0  # and it still learned
        v = grasp.read_blocked[name]
        assert (new[key_a] @ v).norm() <= 1e-6 * new[key_a].norm()
    assert not grasp.attached


def test_caft_reduces_learned_shift_along_ablated_direction(naive, tmp_path):
    convs = [r["messages"] for r in make_records()]
    shift_naive = response_shift(naive.adapter_dir, convs)
    q = shift_naive / shift_naive.norm()
    caft = CAFT({LAYER: q[:, None]}, mode="zero", positions="all")
    res = finetune("tiny-llama", make_records(), tiny_config(checkpoint_every=0), tmp_path,
                   interventions=[caft], progress=False)
    shift_caft = response_shift(res.adapter_dir, convs)
    along_naive = float(shift_naive @ q)
    along_caft = float(shift_caft @ q)
    assert abs(along_caft) < 0.5 * along_naive, (along_caft, along_naive)
    assert res.final_loss < json.loads((tmp_path / "metrics.jsonl").read_text()
                                       .splitlines()[0])["loss"]  # the task is still learned


def test_hooks_removed_and_subject_restored(tmp_path):
    subject = load_model("tiny-llama")

    def n_hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks)
                   for m in subject.model.modules())

    before = n_hooks()
    batch = subject.encode_chats([make_records()[0]["messages"]])
    with torch.no_grad():
        ref = subject.forward(batch).logits
    d = subject.d_model
    ivs = [CAFT({2: torch.randn(d, 2)}, mode="mean", positions="response"),
           PreventativeSteering({1: torch.randn(d)}, coeff=2.0)]
    res = finetune(subject, make_records(8), tiny_config(max_steps=2, checkpoint_every=0),
                   tmp_path, interventions=ivs, progress=False)
    assert res.finished
    assert ivs[0].means is not None  # estimated on the base model before training
    assert not any(iv.attached for iv in ivs)
    assert n_hooks() == before
    assert not hasattr(subject.model, "peft_config")  # unwrapped back to the base model
    with torch.no_grad():
        torch.testing.assert_close(subject.forward(batch).logits, ref)


def test_monitoring_logs_projections_norms_rotation(tmp_path):
    d = load_model("tiny-llama").d_model
    v = torch.randn(d, generator=torch.Generator().manual_seed(3))
    res = finetune("tiny-llama", make_records(8), tiny_config(max_steps=4, log_every=2),
                   tmp_path, monitor={"persona": {LAYER: v}}, progress=False)
    rows = res.metrics()
    assert [r["step"] for r in rows] == [2, 4]
    assert all(f"proj/persona/L{LAYER}" in r for r in rows)
    assert "rotation/B_cos" in rows[1] and -1.0 <= rows[1]["rotation/B_cos"] <= 1.0


def test_lora_modules_of_peft_model(naive):
    sub = load_model("tiny-llama", adapter=naive.adapter_dir)
    mods = lora_modules(sub.model)
    assert "model.layers.0.mlp.down_proj" in mods and len(mods) == 28


def test_checkpoint_steps_add_exact_points(tmp_path):
    res = finetune("tiny-llama", make_records(), tiny_config(max_steps=5, checkpoint_every=0,
                                                             checkpoint_steps=[3, 1]),
                   tmp_path, progress=False)
    steps = [int(p.name.split("-")[1]) for p in res.checkpoints]
    assert steps == [1, 3]  # only the asked steps: no periodic or final checkpoint
    first, third = (adapter_tensors(p / "adapter") for p in res.checkpoints)
    final = adapter_tensors(res.adapter_dir)
    key = next(k for k in final if "lora_B" in k)
    assert not torch.equal(first[key], third[key]) and not torch.equal(third[key], final[key])
    with pytest.raises(ConfigError, match="checkpoint_steps"):
        tiny_config(checkpoint_steps=[0])


@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-phi"])
def test_default_targets_follow_the_family(tmp_path, family):
    """The default seven Llama projections resolve to the family's own linear modules."""
    res = finetune(load_model(family), make_records(8),
                   tiny_config(max_steps=1, checkpoint_every=0), tmp_path, progress=False)
    cfg = json.loads((res.adapter_dir / "adapter_config.json").read_text())
    targets = cfg["target_modules"]
    assert targets and "gate_proj" not in targets  # the family's own modules, not Llama's
