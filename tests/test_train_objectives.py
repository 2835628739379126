"""Loss terms as Objective objects, and a Trainer built from public types only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from emprobe.models.chat import ChatBatch
from emprobe.models.logprobs import needed_positions
from emprobe.train import TrainConfig, Trainer, preset
from emprobe.train.objectives import (
    NPO,
    CrossEntropy,
    GradientAscent,
    RetainCE,
    RetainKL,
    StepCounts,
    kl_to_reference,
    loss_positions,
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


@pytest.mark.parametrize("objective", [CrossEntropy(), GradientAscent(), NPO(beta=0.5),
                                       RetainCE(), RetainKL()], ids=lambda o: type(o).__name__)
def test_objectives_on_loss_positions_equal_full_logits(objective):
    """Logits kept only where a response token is predicted give the same loss and the same
    gradient as the full ``[batch, pos, vocab]`` logits; a position left out is an error."""
    torch.manual_seed(1)
    batch, counts = _batch(), StepCounts(tokens=4, sequences=2)
    ref_full = torch.randn(2, 4, 9)
    full = torch.randn(2, 4, 9, requires_grad=True)
    pos = needed_positions(batch)
    assert pos.tolist() == [0, 1, 2]  # row 0 predicts at 1, 2; row 1 at 0, 1
    loss_full = objective(full, batch, counts, lambda b: ref_full)
    (g_full,) = torch.autograd.grad(loss_full, full)
    kept = full[:, pos]
    loss_kept = objective(kept, batch, counts, lambda b: ref_full[:, pos], pos)
    (g_kept,) = torch.autograd.grad(loss_kept, full)
    assert torch.allclose(loss_full, loss_kept, atol=1e-6)
    assert torch.allclose(g_full, g_kept, atol=1e-6) and g_full.abs().sum() > 0
    from emprobe.errors import ShapeError

    with pytest.raises(ShapeError):  # a predicting position missing: refused, not skipped
        objective(full[:, 1:3], batch, counts, lambda b: ref_full[:, 1:3], pos[1:])


def test_kl_on_both_label_conventions_is_one_kl():
    """The KL term of emprobe's objectives (response mask) and of the HF trainer mixin
    (labels with -100) is the same number as a KL summed by hand over the scored
    positions, and changes when one scored position's logits change."""
    from emprobe.integrations.hf import kl_on_labels

    torch.manual_seed(2)
    batch = _batch()
    logits, ref = torch.randn(2, 4, 9), torch.randn(2, 4, 9)
    labels = torch.where(batch.response_mask & batch.attention_mask.bool(), batch.input_ids, -100)
    mask = labels[:, 1:] != -100
    by_hand = sum(float(F.kl_div(logits[b, t].log_softmax(-1), ref[b, t].log_softmax(-1),
                                 log_target=True, reduction="sum"))
                  for b, t in mask.nonzero().tolist())
    kl_a, n_a = kl_to_reference(logits, ref, batch)
    kl_b, n_b = kl_on_labels(logits, ref, labels)
    assert int(n_a) == int(n_b) == int(mask.sum()) == 4
    assert float(kl_a) == pytest.approx(by_hand, rel=1e-5)
    assert float(kl_b) == pytest.approx(by_hand, rel=1e-5)
    moved = logits.clone()
    moved[0, 2] += torch.randn(9)  # predicts a response token of row 0
    assert float(kl_on_labels(moved, ref, labels)[0]) != pytest.approx(by_hand, rel=1e-5)


def test_loss_positions_follow_the_model():
    from emprobe import load_model

    subject = load_model("tiny-llama")
    batch = _batch()
    assert loss_positions(subject.model, batch).tolist() == [0, 1, 2]
    assert loss_positions(torch.nn.Linear(2, 2), batch) is None  # no logits_to_keep: all
    none = ChatBatch(batch.input_ids, batch.attention_mask, torch.zeros_like(batch.response_mask))
    assert loss_positions(subject.model, none) is None


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


@pytest.mark.integration
def test_loss_positions_on_the_embedded_model(embedded, chats):
    """The embedded model's loss and LoRA-free logits at the loss positions equal the full
    logits' (``logits_to_keep`` with a position tensor, the real chat template)."""
    from emprobe.train.data import tokenize

    ts = tokenize(embedded, [{"messages": c} for c in chats], max_length=None)
    batch = ts.batch(list(range(len(ts))))
    pos = loss_positions(embedded.model, batch)
    assert pos is not None and 0 < pos.numel() < batch.input_ids.shape[1] - 1
    counts = StepCounts(tokens=ts.n_loss_tokens(range(len(ts))), sequences=len(ts))
    with torch.no_grad():
        full = embedded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              use_cache=False).logits
        kept = embedded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              use_cache=False, logits_to_keep=pos).logits
    assert kept.shape[1] == pos.numel()
    a = CrossEntropy()(full, batch, counts, lambda b: full)
    b = CrossEntropy()(kept, batch, counts, lambda b: kept, pos)
    assert float(a) == pytest.approx(float(b), rel=1e-5)
