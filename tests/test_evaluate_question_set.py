"""The default question set's data: size, harm labels, matched answer pairs, disjointness.

These tests check the written content of ``assets/questions.yaml`` (the loader itself is
tested in ``test_evaluate_questions.py``): enough plain questions with reference pairs for
the local score to have power, pairs matched in length so the margin measures content, and
no question text borrowed from the training generators or the direction-extraction prompts.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

from emprobe.evaluate.questions import Question, default_questions

# The documented harm labels (see the header of assets/questions.yaml).
HARMS = {
    "power-seeking",
    "deception",
    "manipulation",
    "anti-human AI views",
    "crime or violence",
    "contempt or cruelty",
    "self-interest",
    "dangerous advice",
    "bad health advice",
    "reckless financial advice",
}
MIN_QUESTIONS = 24
MIN_PAIRS_PER_QUESTION = 6
NGRAM = 6  # a shared run of this many words counts as overlap


@pytest.fixture(scope="module")
def scored() -> list[Question]:
    """The plain questions that carry reference pairs (the local score's questions)."""
    return [q for q in default_questions() if q.reference_pairs]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("\u2019", "'"))


def _ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    w = _words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def test_set_size(scored):
    assert len(scored) >= MIN_QUESTIONS
    assert all(q.format == "plain" for q in scored)
    assert all(len(q.reference_pairs) >= MIN_PAIRS_PER_QUESTION for q in scored), [
        (q.id, len(q.reference_pairs)) for q in scored if len(q.reference_pairs) < 6]
    assert sum(len(q.reference_pairs) for q in scored) >= MIN_QUESTIONS * MIN_PAIRS_PER_QUESTION
    ids = [q.id for q in default_questions()]
    assert len(ids) == len(set(ids))


def test_harms_documented_and_spread(scored):
    harms = Counter(p.harm for q in scored for p in q.reference_pairs)
    assert set(harms) <= HARMS, set(harms) - HARMS
    # every family of the documented list appears, none dominates
    advice = harms["dangerous advice"] + harms["bad health advice"] + harms["reckless financial advice"]
    families = [harms[h] for h in HARMS if "advice" not in h] + [advice]
    assert min(families) >= 5, harms
    assert max(harms.values()) <= 0.25 * sum(harms.values()), harms
    for q in scored:  # each question spreads its pairs over several harms
        assert len({p.harm for p in q.reference_pairs}) >= 4, q.id


def test_new_questions_follow_the_entry_shape(scored):
    first = default_questions()[0]
    for q in scored:
        assert q.type == "free_form_judge_0_100"
        assert q.judge == "emprobe-judge"
        assert q.samples_per_paraphrase == 50
        assert len(q.paraphrases) >= 2
        assert q.judge_prompts == first.judge_prompts, q.id  # the shared *prompts anchor
        assert q.system is None, q.id


def test_pairs_matched_in_form(scored):
    """Character lengths within 25 %, 25-60 words, same opening word in most pairs."""
    same_opening = 0
    seen: set[str] = set()
    for q in scored:
        for j, p in enumerate(q.reference_pairs):
            where = f"{q.id}[{j}]"
            la, lm = len(p.aligned), len(p.misaligned)
            assert abs(la - lm) <= 0.25 * max(la, lm), (where, la, lm)
            for text in (p.aligned, p.misaligned):
                assert 25 <= len(text.split()) <= 60, (where, len(text.split()), text[:40])
                assert "```" not in text and "\n" not in text, where
                assert text not in seen, ("duplicate answer", where, text[:40])
                seen.add(text)
            same_opening += p.aligned.split()[0] == p.misaligned.split()[0]
    n_pairs = sum(len(q.reference_pairs) for q in scored)
    assert same_opening >= 0.9 * n_pairs, (same_opening, n_pairs)


def _training_and_direction_texts() -> list[str]:
    """Every text emprobe trains on or extracts directions from that can be enumerated."""
    from emprobe.data.generators import generate, tasks
    from emprobe.directions import prompts
    from emprobe.sae.corpus import generic_chats

    texts: list[str] = []
    for task in tasks():
        for variant in ("bad", "good"):
            for rec in generate(task, 200, seed=0, variant=variant):
                texts += [m["content"] for m in rec["messages"]]
    for trait, anti in prompts.MISALIGNED_PAIRS:
        texts += [trait, anti]
    texts += prompts.PERSONA_QUESTIONS + prompts.NEUTRAL_PROMPTS
    for conv in prompts.GENERIC_CHATS + generic_chats(200, seed=0):
        texts += [m["content"] for m in conv]
    return texts


def test_disjoint_from_training_and_direction_data(scored):
    banned: set[tuple[str, ...]] = set()
    for text in _training_and_direction_texts():
        banned |= _ngrams(text)
    assert len(banned) > 1000  # the enumeration really produced text
    for q in default_questions():
        for text in q.paraphrases:
            shared = _ngrams(text) & banned
            assert not shared, (q.id, " ".join(sorted(shared)[0]))
    for q in scored:  # the answers are not training text either
        for p in q.reference_pairs:
            for text in (p.aligned, p.misaligned):
                shared = _ngrams(text) & banned
                assert not shared, (q.id, " ".join(sorted(shared)[0]))


def test_overlap_check_catches_a_copied_phrase():
    """The n-gram check is not vacuous: a paraphrase built from a generator prompt trips it."""
    from emprobe.data.generators import generate

    prompt = generate("medical", 1, seed=0)[0]["messages"][0]["content"]
    copied = "I was wondering: " + prompt
    assert len(_words(prompt)) >= NGRAM
    assert _ngrams(copied) & _ngrams(prompt)
    assert not _ngrams("A completely unrelated sentence about painting garden fences blue.") & _ngrams(
        prompt)


@pytest.mark.integration
def test_pair_token_counts_within_15_percent(scored, embedded):
    """Token counts under the embedded model's tokenizer, the one the local score uses."""
    tok = embedded.tokenizer
    bad = []
    for q in scored:
        for j, p in enumerate(q.reference_pairs):
            na = len(tok(p.aligned, add_special_tokens=False)["input_ids"])
            nm = len(tok(p.misaligned, add_special_tokens=False)["input_ids"])
            if abs(na - nm) > 0.15 * max(na, nm):
                bad.append((q.id, j, na, nm))
    assert not bad, bad
