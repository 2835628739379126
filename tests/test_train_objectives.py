"""Loss terms as Objective objects, and a Trainer built from public types only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from emprobe.models.chat import ChatBatch
from emprobe.train import TrainConfig, Trainer, preset
from emprobe.train.objectives import (
    NPO,
    CrossEntropy,
    GradientAscent,
    RetainCE,
    RetainKL,
    StepCounts,
    objectives_for,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch() -> ChatBatch:
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0]])
    att = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    resp = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    return ChatBatch(ids, att, resp)


def test_each_objective_owns_its_math():
    torch.manual_seed(0)
    batch, logits = _batch(), torch.randn(2, 4, 9)
    counts = StepCounts(tokens=4, sequences=2)
    mask = torch.tensor([[False, True, True], [True, True, False]])
    ce_ref = F.cross_entropy(logits[:, :-1].reshape(-1, 9), batch.input_ids[:, 1:].reshape(-1),
                             reduction="none").view(2, 3)[mask].sum() / 4

    def same_ref(b: ChatBatch) -> torch.Tensor:
        return logits

    assert torch.allclose(CrossEntropy()(logits, batch, counts, same_ref), ce_ref)
    assert torch.allclose(GradientAscent()(logits, batch, counts, same_ref), -ce_ref)
    assert torch.allclose(RetainCE()(logits, batch, counts, same_ref), ce_ref)
    assert RetainKL()(logits, batch, counts, same_ref).abs() < 1e-6  # KL(p || p) = 0
    # NPO at pi = pi_ref is (2 / beta) log 2 per sequence
    npo = NPO(beta=0.5)(logits, batch, counts, same_ref)
    assert npo.item() == pytest.approx(2 / 0.5 * torch.log(torch.tensor(2.0)).item(), rel=1e-5)
    assert NPO.needs_reference and RetainKL.needs_reference and not CrossEntropy.needs_reference


def test_objectives_for_reads_the_config():
    task, retain = objectives_for(TrainConfig(unlearn="npo", npo_beta=0.3, retain_kl=0.5))
    assert isinstance(task, NPO) and task.beta == 0.3
    assert [(w, type(o)) for w, o in retain] == [(0.5, RetainKL)]
    task, retain = objectives_for(TrainConfig(retain_ce=1.0))
    assert isinstance(task, CrossEntropy) and [type(o) for _, o in retain] == [RetainCE]


def test_trainer_from_records(tmp_path):
    from emprobe import load_model

    subject = load_model("tiny-llama")
    recs = [{"messages": [{"role": "user", "content": f"Q{i}?"},
                          {"role": "assistant", "content": f"A{i} zq."}]} for i in range(4)]
    trainer = Trainer(subject, recs, preset("cpu-lora", max_steps=2, batch_size=2,
                                            max_length=64, warmup_steps=0))
    try:
        rec = trainer.run_step(0)
    finally:
        trainer.unwrap()
    assert rec["sequences"] == 2 and rec["tokens"] > 0 and rec["loss"] == rec["loss/task"]
    assert not hasattr(subject.model, "peft_config")
