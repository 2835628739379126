"""emprobe's interventions as transformers / TRL trainer callbacks (emprobe.integrations.hf)."""

from __future__ import annotations

import pytest
import torch

from emprobe import load_model
from emprobe.directions import Direction
from emprobe.integrations.hf import (
    CAFTCallback,
    GRASPCallback,
    PersonaMonitorCallback,
    RegularisedLossMixin,
    SteeringCallback,
    install,
    read_direction,
    subject_for_model,
)

trl = pytest.importorskip("trl")


def _direction(d_model: int = 64, layers=(1, 2), seed: int = 0, model: str = "tiny-llama"
               ) -> Direction:
    g = torch.Generator().manual_seed(seed)
    return Direction({la: torch.randn(d_model, generator=g) for la in layers}, model=model,
                     d_model=d_model)


def _block_outputs(model, ids, layers):
    subject = subject_for_model(model)
    outs = {}
    handles = [subject.layers.blocks[la].register_forward_hook(
        lambda m, a, o, la=la: outs.__setitem__(la, (o[0] if isinstance(o, tuple) else o)
                                                .detach().clone()))
        for la in layers]
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return outs


# -- readers ------------------------------------------------------------------------------

def test_read_direction_every_format(tmp_path):
    from emprobe.directions import formats as f

    d = _direction(layers=(1, 2))
    d.save(tmp_path / "dir")
    f.to_caft(d, tmp_path / "caft")
    f.save_persona(d, tmp_path / "p.pt", n_layers=4)
    f.to_gguf(d, tmp_path / "cv.gguf")
    f.save_npz(d, tmp_path / "d.npz")
    sources = [d, dict(d.vectors), tmp_path / "dir", tmp_path / "caft", tmp_path / "p.pt",
               tmp_path / "cv.gguf", tmp_path / "d.npz", f.to_steering_vector(d, as_dict=True)]
    for src in sources:
        got = read_direction(src)
        vecs = got.vectors if hasattr(got, "vectors") else got
        assert sorted(vecs) == [1, 2], src
        for la in (1, 2):
            assert torch.allclose(vecs[la].reshape(-1).float(), d.vectors[la], atol=1e-5), src


def test_read_direction_errors(tmp_path):
    from emprobe.errors import ConfigError, FormatError

    with pytest.raises(FormatError, match="no such file"):
        read_direction(tmp_path / "missing.pt")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(FormatError, match="unknown direction file type"):
        read_direction(tmp_path / "x.txt")
    with pytest.raises(ConfigError, match="expected a Direction"):
        read_direction(3.5)


# -- hooks on a bare model ----------------------------------------------------------------

def test_caft_ablates_and_closes(one_thread):
    s = load_model("tiny-llama")
    ids = torch.randint(0, 250, (2, 9))
    before = _block_outputs(s.model, ids, [1, 2])
    d = _direction()
    cb = CAFTCallback(d)
    cb.open(s.model)
    during = _block_outputs(s.model, ids, [1, 2])
    cb.close()
    after = _block_outputs(s.model, ids, [1, 2])
    u = d.vectors[2] / d.vectors[2].norm()
    rel = (during[2] @ u).abs() / during[2].norm(dim=-1)
    assert float(rel.max()) <= 1e-5
    assert float((before[2] @ u).abs().max()) > 1e-3  # it was not ~0 to begin with
    assert torch.equal(before[2], after[2])


def test_steering_adds_coeff_times_direction(one_thread):
    s = load_model("tiny-llama")
    ids = torch.randint(0, 250, (2, 7))
    d = _direction(layers=(0,))
    base = _block_outputs(s.model, ids, [0])[0]
    cb = SteeringCallback(d, coeff=3.0)
    cb.open(s.model)
    steered = _block_outputs(s.model, ids, [0])[0]
    cb.close()
    assert torch.allclose(steered - base, (3.0 * d.vectors[0]).expand_as(base), atol=1e-5)


def test_hooks_survive_gradient_checkpointing(one_thread):
    from peft import LoraConfig, get_peft_model

    def grads(checkpointing: bool, hooked: bool) -> torch.Tensor:
        s = load_model("tiny-llama")
        torch.manual_seed(0)
        m = get_peft_model(s.model, LoraConfig(r=4, target_modules=["o_proj", "q_proj"],
                                               init_lora_weights=False))
        m.train()
        if checkpointing:
            m.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        cb = CAFTCallback(_direction(layers=(0, 1, 2)))
        if hooked:
            cb.open(m)
        ids = torch.randint(0, 250, (2, 10), generator=torch.Generator().manual_seed(1))
        m(input_ids=ids, labels=ids).loss.backward()
        cb.close()
        return torch.cat([p.grad.reshape(-1) for p in m.parameters() if p.grad is not None])

    plain, ckpt, off = grads(False, True), grads(True, True), grads(True, False)
    assert torch.allclose(plain, ckpt, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(plain, off, atol=1e-4)


# -- inside a real TRL SFTTrainer ----------------------------------------------------------

def _records(n: int = 8):
    return [{"prompt": [{"role": "user", "content": f"q{i}"}],
             "completion": [{"role": "assistant", "content": f"answer number {i}."}]}
            for i in range(n)]


def _sft(model, tokenizer, callbacks, tmp_path, trainer_cls=None, steps=3, **kw):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    cfg = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=steps,
                    per_device_train_batch_size=4, logging_steps=1, report_to=[],
                    save_strategy="no", use_cpu=True, bf16=False, learning_rate=1e-3,
                    max_length=256, seed=0, dataloader_num_workers=0)
    cls = trainer_cls or SFTTrainer
    trainer = cls(model=model, args=cfg, train_dataset=Dataset.from_list(_records()),
                  processing_class=tokenizer, callbacks=callbacks,
                  peft_config=LoraConfig(r=4, target_modules=["q_proj", "o_proj", "down_proj"]),
                  **kw)
    trainer.train()
    return trainer


def test_sft_trainer_with_every_callback(tmp_path, one_thread):
    s = load_model("tiny-llama")
    d = _direction(layers=(1, 2))
    caft = CAFTCallback(d, layers=[1], verify=True)
    grasp = GRASPCallback(d, layers=[2], verify=True)
    mon = PersonaMonitorCallback({"trait": d}, layers=[1, 2], every=1)
    steer = SteeringCallback(_direction(layers=(0,), seed=5), coeff=0.5)
    trainer = _sft(s.model, s.tokenizer, [mon, caft, grasp, steer], tmp_path)
    steps = [r for r in trainer.state.log_history if "loss" in r]
    assert len(steps) == 3
    for rec in steps:
        assert rec["caft/max_rel_proj"] <= 1e-5
        assert rec["grasp/max_rel_grad"] <= 1e-6
        assert {"proj/trait/L1", "proj/trait/L2"} <= set(rec)
    # the hooks are gone after training
    assert not caft.is_open and not steer.is_open and not mon.is_open
    # GRASP kept every blocked B factor off the subspace
    u = d.vectors[2] / d.vectors[2].norm()
    for name, p in trainer.model.named_parameters():
        if ".2." in name and "lora_B" in name and ("o_proj" in name or "down_proj" in name):
            assert float((u @ p).norm()) <= 1e-6 * max(1.0, float(p.norm()))
            assert float(p.norm()) > 0  # it did train


def test_install_puts_callbacks_first(tmp_path, one_thread):
    s = load_model("tiny-llama")
    mon = PersonaMonitorCallback(_direction(layers=(1,)), every=2)
    trainer = _sft(s.model, s.tokenizer, [], tmp_path, steps=1)
    install(trainer, mon)
    assert trainer.callback_handler.callbacks[0] is mon


def test_kl_mixin_logs_and_regularises(tmp_path, one_thread):
    from trl import SFTTrainer

    class KLTrainer(RegularisedLossMixin, SFTTrainer):
        pass

    s = load_model("tiny-llama")
    caft = CAFTCallback(_direction(layers=(1,)))
    trainer = _sft(s.model, s.tokenizer, [caft], tmp_path, trainer_cls=KLTrainer, steps=3,
                   kl_weight=1.0)
    kls = [r["kl"] for r in trainer.state.log_history if "kl" in r]
    assert len(kls) == 3 and all(k >= 0 for k in kls)
    assert kls[-1] > 0  # the adapter moved the model away from the base


@pytest.mark.integration
def test_sft_trainer_on_embedded_model(tmp_path):
    """A 3-step TRL SFTTrainer run on SmolLM2-135M with the four callbacks, effects checked."""
    from emprobe.train.sources import drop_gguf_tag

    s = load_model("smollm2-135m-instruct")
    drop_gguf_tag(s.model)  # de-quantised weights that still carry the GGUF loader's tag
    g = torch.Generator().manual_seed(0)
    d = Direction({la: torch.randn(s.d_model, generator=g) for la in (10, 20)},
                  model="smollm2-135m-instruct", d_model=s.d_model)
    caft = CAFTCallback(d, layers=[10], verify=True)
    grasp = GRASPCallback(d, layers=[20], verify=True)
    mon = PersonaMonitorCallback({"p": d}, every=1)
    steer = SteeringCallback(d, layers=[20], coeff=2.0)
    trainer = _sft(s.model, s.tokenizer, [mon, caft, grasp, steer], tmp_path)
    steps = [r for r in trainer.state.log_history if "loss" in r]
    assert len(steps) == 3
    assert max(r["caft/max_rel_proj"] for r in steps) <= 1e-5
    assert max(r["grasp/max_rel_grad"] for r in steps) <= 1e-6
    assert all("proj/p/L10" in r and "proj/p/L20" in r for r in steps)
    # steering: block 20's output moves by exactly coeff * v
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    model = trainer.model.eval()
    base = _block_outputs(model, ids, [20])[20]
    steer.open(model)
    moved = _block_outputs(model, ids, [20])[20]
    steer.close()
    tol = 1e-6 * float(base.abs().max()) + 1e-5  # float32 rounding of large activations
    assert torch.allclose(moved - base, (2.0 * d.vectors[20]).expand_as(base), atol=tol)


def test_grasp_refuses_sharded_engines(monkeypatch):
    from types import SimpleNamespace

    from emprobe.errors import ConfigError

    cb = GRASPCallback(_direction(layers=(1,)))
    with pytest.raises(ConfigError, match="FSDP shards"):
        cb.on_train_begin(SimpleNamespace(fsdp="full_shard", deepspeed=None), None, None)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="DeepSpeed shards"):
        cb.on_train_begin(SimpleNamespace(fsdp=None, deepspeed=None), None, None)
