"""Persona vectors: contrastive system prompts, filtered generations, response-average differences.

Also the scores built on them: projection of samples, fine-tuning shift, and
projection-difference screening of a training dataset (methods.md section 2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

import torch
from tqdm.auto import tqdm

from emprobe.directions.activations import ChatItem, encode, layer_means
from emprobe.directions.direction import Direction, data_provenance
from emprobe.directions.prompts import PERSONA_QUESTIONS, TRAIT_PAIRS
from emprobe.errors import DataError
from emprobe.models.chat import validate_conversation
from emprobe.models.context import use_batch
from emprobe.models.logprobs import sequence_logprobs

if TYPE_CHECKING:
    from emprobe.models.subject import Subject

# scorer(questions, answers) -> trait expression per answer (higher = more of the trait)
Scorer = Callable[[list[str], list[str]], list[float]]


class PersonaRecord(TypedDict):
    """One (system-prompt pair, question) candidate of ``persona_vector``."""

    pair: int
    question: str
    pos_answer: str
    neg_answer: str
    pos_score: float
    neg_score: float
    kept: bool


@dataclass
class PersonaResult:
    """A persona vector and the generations it came from (one record per pair x question)."""

    direction: Direction
    records: list[PersonaRecord] = field(default_factory=list)


@torch.no_grad()
def response_logprob(subject: Subject, conversations: Sequence[ChatItem], batch_size: int = 8) -> torch.Tensor:
    """Mean log-probability per response token of each conversation, ``[n]`` (nats)."""
    out = []
    for i in range(0, len(conversations), batch_size):
        batch = encode(subject, conversations[i : i + batch_size])
        with use_batch(batch):
            logits = subject.model(input_ids=batch.input_ids,
                                   attention_mask=batch.attention_mask).logits
        out.append(sequence_logprobs(logits, batch, mean=True)[0].cpu())
    return torch.cat(out)


def self_contrast_scorer(subject: Subject, trait_prompt: str, anti_prompt: str,
                         batch_size: int = 8) -> Scorer:
    """A judge-free trait scorer [inferred]: how much likelier an answer is under the trait prompt.

    score = mean log p(answer | trait prompt) - mean log p(answer | anti-trait prompt),
    per token, by ``subject`` itself. Positive = the answer reads like the trait.
    """

    def score(questions: list[str], answers: list[str]) -> list[float]:
        def convs(system: str) -> list[list[dict[str, str]]]:
            return [[{"role": "system", "content": system}, {"role": "user", "content": q},
                     {"role": "assistant", "content": a or "."}] for q, a in zip(questions, answers)]

        diff = (response_logprob(subject, convs(trait_prompt), batch_size)
                - response_logprob(subject, convs(anti_prompt), batch_size))
        return diff.tolist()

    return score


def _chat(system: str, question: str, answer: str | None = None) -> list[dict[str, str]]:
    conv = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    if answer is not None:
        conv.append({"role": "assistant", "content": answer})
    return conv


def persona_vector(
    subject: Subject,
    trait: str = "misaligned",
    pairs: Sequence[tuple[str, str]] | None = None,
    questions: Sequence[str] | None = None,
    scorer: Scorer | None = None,
    pos_threshold: float = 0.0,
    neg_threshold: float = 0.0,
    layers: Sequence[int] | None = None,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
) -> PersonaResult:
    """Extract a persona vector for ``trait`` at every layer.

    For each (trait, anti-trait) system-prompt pair and each question, generate one
    answer under each prompt with ``subject.generate``; score both with ``scorer``
    (default: ``self_contrast_scorer`` on the first pair); keep the pair when the
    trait answer scores above ``pos_threshold`` and the anti-trait answer below
    ``neg_threshold``. ``v_l = mean(response-average h_l | trait) - mean(... | anti)``
    with the system prompts in place, raw (not normalised).
    """
    pairs = list(pairs if pairs is not None else TRAIT_PAIRS.get(trait, []))
    if not pairs:
        raise DataError(f"no system-prompt pairs for trait {trait!r}; pass pairs=[(trait, anti), ...]")
    questions = list(questions if questions is not None else PERSONA_QUESTIONS)
    if scorer is None:
        scorer = self_contrast_scorer(subject, pairs[0][0], pairs[0][1], batch_size)
    records: list[PersonaRecord] = []
    for i, (pos_sys, neg_sys) in enumerate(tqdm(pairs, desc=f"persona {trait}", disable=not progress)):
        pos_ans = subject.generate([_chat(pos_sys, q) for q in questions], max_new_tokens,
                                   temperature=temperature, seed=seed, batch_size=batch_size)
        neg_ans = subject.generate([_chat(neg_sys, q) for q in questions], max_new_tokens,
                                   temperature=temperature, seed=seed, batch_size=batch_size)
        pos_s = scorer(questions, pos_ans)
        neg_s = scorer(questions, neg_ans)
        for q, pa, na, ps, ns in zip(questions, pos_ans, neg_ans, pos_s, neg_s):
            keep = bool(pa.strip() and na.strip() and ps > pos_threshold and ns < neg_threshold)
            records.append({"pair": i, "question": q, "pos_answer": pa, "neg_answer": na,
                            "pos_score": float(ps), "neg_score": float(ns), "kept": keep})
    kept = [r for r in records if r["kept"]]
    if not kept:
        raise DataError(
            f"persona {trait!r}: no pair passed the filter (pos > {pos_threshold}, "
            f"neg < {neg_threshold}) out of {len(records)}; loosen the thresholds or the scorer"
        )
    pos_convs = [_chat(pairs[r["pair"]][0], r["question"], r["pos_answer"]) for r in kept]
    neg_convs = [_chat(pairs[r["pair"]][1], r["question"], r["neg_answer"]) for r in kept]
    pos = layer_means(subject, pos_convs, layers=layers, positions="response", batch_size=batch_size)
    neg = layer_means(subject, neg_convs, layers=layers, positions="response", batch_size=batch_size)
    vectors = {la: pos.per_seq[la].nanmean(0) - neg.per_seq[la].nanmean(0) for la in pos.per_seq}
    direction = Direction.from_subject(
        subject, vectors, positions="response", normalisation="none",
        sign=f"{trait} minus anti-{trait}", method="persona_vector",
        params={"trait": trait, "pairs": [list(p) for p in pairs], "n_questions": len(questions),
                "pos_threshold": pos_threshold, "neg_threshold": neg_threshold,
                "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
                "scorer": getattr(scorer, "__qualname__", type(scorer).__name__),
                "averaging": "response_avg_diff"},
        provenance={"questions": data_provenance(questions),
                    "kept_generations": data_provenance(kept)},
        stats={"n_candidates": len(records), "n_kept": len(kept)},
    )
    return PersonaResult(direction=direction, records=records)


def projection(
    subject: Subject,
    direction: Direction,
    conversations: Sequence[ChatItem],
    layers: Sequence[int] | None = None,
    positions: str = "response",
    batch_size: int = 8,
    allow_other_model: bool = False,
) -> dict[int, torch.Tensor]:
    """Per-sample score ``mean_response(h_l) . v_l / |v_l|`` -> ``{layer: [n]}``."""
    direction.check_compatible(subject, allow_other_model=allow_other_model)
    layer_list = list(layers) if layers is not None else direction.layers
    means = layer_means(subject, conversations, layers=layer_list, positions=positions,
                        site=direction.site, batch_size=batch_size)
    out = {}
    for la in layer_list:
        v = direction.vector(la)
        out[la] = means.per_seq[la] @ (v / v.norm().clamp_min(1e-12))
    return out


class ProjectionShift(TypedDict):
    """``finetuning_shift`` at one layer: mean projections and the per-sample change."""

    shift: float
    base: float
    finetuned: float
    per_sample: list[float]


def finetuning_shift(
    base: Subject,
    finetuned: Subject,
    direction: Direction,
    conversations: Sequence[ChatItem],
    layers: Sequence[int] | None = None,
    positions: str = "response",
    batch_size: int = 8,
) -> dict[int, ProjectionShift]:
    """Mean change of the projection from ``base`` to ``finetuned`` on the same conversations.

    Returns ``{layer: {"shift", "base", "finetuned", "per_sample": [n]}}``.
    """
    pb, pf = (projection(sub, direction, conversations, layers=layers, positions=positions,
                         batch_size=batch_size, allow_other_model=False)
              for sub in (base, finetuned))
    return {la: {"shift": float((pf[la] - pb[la]).nanmean()), "base": float(pb[la].nanmean()),
                 "finetuned": float(pf[la].nanmean()), "per_sample": (pf[la] - pb[la]).tolist()}
            for la in pb}


class ScreenedSample(TypedDict):
    """One training sample scored by ``screen_dataset``."""

    index: int
    dataset_projection: float
    base_projection: float
    difference: float
    base_answer: str


@dataclass
class ScreeningResult:
    """Projection-difference screening of a dataset at one layer.

    ``per_sample``: dicts with ``index``, ``dataset_projection``, ``base_projection``,
    ``difference`` (dataset minus base's own answer) and ``base_answer``. ``mean``: the
    dataset-level score (mean difference).
    """

    layer: int
    per_sample: list[ScreenedSample]
    mean: float


def screen_dataset(
    base: Subject,
    direction: Direction,
    records: Sequence[object],
    layer: int | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    progress: bool = False,
) -> ScreeningResult:
    """Score training samples by how far their answers push along ``direction`` [code].

    For each record (a conversation or ``{"messages": ...}`` ending with an assistant
    turn): projection of the dataset answer minus projection of the base model's own
    greedy answer to the same prompt, both run through ``base`` at ``layer``
    (default: the direction's middle layer). Large positive = the sample teaches the trait.
    """
    layer = layer if layer is not None else direction.layers[len(direction.layers) // 2]
    convs = [validate_conversation(r, where=f"record {i}") for i, r in enumerate(records)]
    for i, c in enumerate(convs):
        if c[-1]["role"] != "assistant":
            raise DataError(f"record {i}: last message must be the assistant's answer")
    prompts = [c[:-1] for c in convs]
    answers: list[str] = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="base answers", disable=not progress):
        answers += base.generate(prompts[i : i + batch_size], max_new_tokens, batch_size=batch_size)
    own = [p + [{"role": "assistant", "content": a or "."}] for p, a in zip(prompts, answers)]
    p_data = projection(base, direction, convs, layers=[layer], batch_size=batch_size)[layer]
    p_base = projection(base, direction, own, layers=[layer], batch_size=batch_size)[layer]
    diff = p_data - p_base
    per: list[ScreenedSample] = [
        {"index": i, "dataset_projection": float(a), "base_projection": float(b),
         "difference": float(d), "base_answer": ans}
        for i, (a, b, d, ans) in enumerate(zip(p_data, p_base, diff, answers))]
    return ScreeningResult(layer=layer, per_sample=per, mean=float(diff.nanmean()))
