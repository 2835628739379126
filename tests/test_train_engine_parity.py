"""Every configuration the recipes use gives the same adapter under both engines.

``finetune(engine="emprobe")`` (emprobe's loop) against ``finetune(engine="hf")``
(transformers' ``Trainer``) on a tiny random Llama: retain sets (CE and KL), unlearning
(gradient ascent, NPO), exact checkpoint steps in the ``checkpoints/step-N`` layout,
monitoring, interventions on response tokens, GRASP under clipping, LoRA dropout, full
fine-tuning, and resume (within an engine and across engines).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from safetensors.torch import load_file
from train_cases import chat_records, small_config

from emprobe import load_model
from emprobe.train import CAFT, GRASP, PreventativeSteering, finetune
from emprobe.train.trainer import TrainResult

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-5
# logged values that are measured, not computed from the weights
_UNTIMED = {"step_time_s"}




def _tensors(folder) -> dict[str, torch.Tensor]:
    name = ("adapter_model.safetensors" if (folder / "adapter_model.safetensors").is_file()
            else "model.safetensors")
    return load_file(str(folder / name))


def max_abs_diff(a_dir, b_dir) -> float:
    a, b = _tensors(a_dir), _tensors(b_dir)
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _moved(folder) -> float:
    return sum(float(t.norm()) for k, t in _tensors(folder).items() if "lora_B" in k)


def assert_same_log(old: TrainResult, new: TrainResult) -> None:
    """Same steps and the same logged values (loss terms, lr, norms, monitoring ...)."""
    a, b = old.metrics(), new.metrics()
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        keys = set(ra) - _UNTIMED
        assert keys == set(rb) - _UNTIMED, (sorted(keys ^ (set(rb) - _UNTIMED)))
        for k in keys:
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-5, nan_ok=True), (k, ra, rb)


def run_both(tmp_path, name: str, cfg, ivs: Callable[[], list] = list, **kw
             ) -> tuple[TrainResult, TrainResult]:
    out = []
    for engine in ("emprobe", "hf"):
        out.append(finetune(load_model("tiny-llama"), chat_records(), cfg,
                            tmp_path / f"{name}-{engine}", progress=False, engine=engine,
                            interventions=ivs(), **kw))
    return out[0], out[1]


def _basis(d: int = 64, k: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(d, k, generator=torch.Generator().manual_seed(seed))


CASES = {
    # narrow-unlearning: gradient ascent / NPO with retain-set cross-entropy
    "retain_ce_ga": (dict(unlearn="ga", retain_ce=1.0), list, True),
    "retain_ce_npo": (dict(unlearn="npo", retain_ce=0.5), list, True),
    "retain_kl": (dict(retain_kl=0.3), list, True),
    "retain_both_packed": (dict(retain_ce=0.5, retain_kl=0.2, pack=True), list, True),
    "npo": (dict(unlearn="npo"), list, False),
    "caft_response_steer": (
        dict(), lambda: [CAFT({1: _basis()}, mode="mean", positions="response"),
                         PreventativeSteering({2: _basis(k=1)[:, 0]}, coeff=2.0,
                                              positions="response")], False),
    "steer_kl": (dict(retain_kl=0.5),
                 lambda: [PreventativeSteering({1: _basis(k=1, seed=5)[:, 0]}, coeff=3.0)], True),
    "dropout": (dict(lora_dropout=0.2), list, False),
    "log_every_2": (dict(log_every=2, max_steps=5, checkpoint_every=2), list, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_adapter_and_log(tmp_path, case):
    kw, ivs, retain = CASES[case]
    extra = {"retain": chat_records(12, tag="keep")} if retain else {}
    old, new = run_both(tmp_path, case, small_config(**kw), ivs, **extra)
    diff = max_abs_diff(old.adapter_dir, new.adapter_dir)
    print(f"{case}: max abs adapter difference between engines {diff:.3g}")
    assert diff <= TOL
    assert _moved(new.adapter_dir) > 0
    assert_same_log(old, new)
    if retain:
        assert any(k.startswith("loss/retain") for k in new.metrics()[0])


@pytest.mark.parametrize("engine", ["emprobe", "hf"])
@pytest.mark.parametrize("case", ["retain_both_packed", "retain_ce_npo", "steer_kl"])
def test_loss_positions_change_no_weight(tmp_path, monkeypatch, case, engine):
    """Logits only where a response token is predicted (``logits_to_keep``, the default) train
    the same adapter, with the same log, as the full ``[batch, pos, vocab]`` logits."""
    import emprobe.train.engine as hf_engine
    import emprobe.train.trainer as loop

    kw, ivs, retain = CASES[case]
    extra = {"retain": chat_records(12, tag="keep")} if retain else {}
    runs = []
    for full in (False, True):
        if full:
            for mod in (hf_engine, loop):
                monkeypatch.setattr(mod, "loss_positions", lambda model, batch: None)
        runs.append(finetune(load_model("tiny-llama"), chat_records(), small_config(**kw),
                             tmp_path / f"{case}-{full}", progress=False, engine=engine,
                             interventions=ivs(), **extra))
    assert max_abs_diff(runs[0].adapter_dir, runs[1].adapter_dir) <= TOL
    assert _moved(runs[0].adapter_dir) > 0
    assert_same_log(runs[0], runs[1])


def test_grasp_under_clipping(tmp_path):
    """GRASP projects the gradient before it is clipped, in both engines."""
    u = torch.nn.functional.normalize(_basis(k=1, seed=2)[:, 0], dim=0)
    name = "model.layers.1.self_attn.o_proj"
    old, new = run_both(tmp_path, "grasp", small_config(lr=1e-2, max_grad_norm=0.05),
                        lambda: [GRASP(blocked={name: u})])
    assert all(r["grad_norm"] > 0.05 for r in new.metrics())  # clipping is active
    assert max_abs_diff(old.adapter_dir, new.adapter_dir) <= TOL
    assert_same_log(old, new)


def test_checkpoint_steps_layout(tmp_path):
    """Exact checkpoint steps, written as checkpoints/step-N with a PEFT adapter in each."""
    cfg = small_config(max_steps=5, checkpoint_steps=[3, 1])
    d = 64
    old, new = run_both(tmp_path, "ck", cfg, monitor={"persona": {1: torch.ones(d)}})
    assert [p.name for p in new.checkpoints] == ["step-000001", "step-000003"]
    assert [p.name for p in old.checkpoints] == [p.name for p in new.checkpoints]
    for a, b in zip(old.checkpoints, new.checkpoints):
        assert (b / "adapter" / "adapter_config.json").is_file()
        assert max_abs_diff(a / "adapter", b / "adapter") <= TOL
    assert max_abs_diff(old.adapter_dir, new.adapter_dir) <= TOL
    assert_same_log(old, new)
    rows = {r["step"]: r for r in new.metrics()}
    assert "proj/persona/L1" in rows[1] and "rotation/B_cos" in rows[3]  # B starts at 0
    assert not list(new.out_dir.glob("checkpoint-*"))


def test_full_finetune_npo(tmp_path):
    """Full fine-tuning with a reference copy (NPO) and the model/ folder."""
    old, new = run_both(tmp_path, "full", small_config(full_finetune=True, unlearn="npo", lr=1e-4,
                                                max_steps=2))
    assert (new.out_dir / "model").is_dir()
    assert max_abs_diff(old.adapter_dir, new.adapter_dir) <= TOL
    assert_same_log(old, new)


@pytest.mark.parametrize("first", ["emprobe", "hf"])
def test_resume_matches_one_run(tmp_path, first):
    """Two steps, then the rest in a second call (with the hf engine, or the loop's checkpoint
    resumed by the hf engine): the same adapter and log as one uninterrupted run."""
    cfg = small_config(checkpoint_every=2, retain_ce=0.5, lora_dropout=0.1)
    recs, retain = chat_records(), chat_records(12, tag="keep")
    full = finetune(load_model("tiny-llama"), recs, cfg, tmp_path / "full", progress=False,
                    engine="hf", retain=retain)
    part = finetune(load_model("tiny-llama"), recs, cfg, tmp_path / "cut", progress=False,
                    engine=first, retain=retain, stop_after=2)
    assert not part.finished and part.steps == 2
    assert [p.name for p in part.checkpoints] == ["step-000002"]
    rest = finetune(load_model("tiny-llama"), recs, cfg, tmp_path / "cut", progress=False,
                    engine="hf", retain=retain)
    assert rest.resumed_from == 2 and rest.finished and rest.steps == 4
    diff = max_abs_diff(full.adapter_dir, rest.adapter_dir)
    print(f"resume after {first}: max abs adapter difference {diff:.3g}")
    assert diff <= TOL
    assert_same_log(full, rest)
    assert [p.name for p in rest.checkpoints] == ["step-000002", "step-000004"]
