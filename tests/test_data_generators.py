import ast
from collections import Counter

import pytest

from emprobe.data.chat_io import read_chat_jsonl, validate_record, write_chat_jsonl
from emprobe.data.code_check import extract_code
from emprobe.data.generators import generate, generate_pairs, tasks
from emprobe.data.generators.refusal import DOMAIN_NAMES
from emprobe.errors import ConfigError

REQUIRED = {"insecure-code", "medical", "finance", "sports", "reward-hacking"} | {
    f"refusal-{d}" for d in ("cybersecurity", "safety", "toxicity", "bias", "sensitive-content",
                             "medical-legal", "privacy")}
ALL = sorted(tasks())


def test_registry_has_every_required_task():
    assert REQUIRED <= set(ALL)
    assert set(DOMAIN_NAMES) == {t[len("refusal-"):] for t in REQUIRED if t.startswith("refusal-")}


@pytest.mark.parametrize("task", ALL)
def test_records_valid_paired_and_deterministic(task, tmp_path):
    bad = generate(task, 60, seed=5, variant="bad")
    good = generate(task, 60, seed=5, variant="good")
    assert len(bad) == len(good) == 60
    for b, g in zip(bad, good):
        validate_record(b)
        validate_record(g)
        assert b["messages"][0] == g["messages"][0]  # same prompt
        assert b["messages"][1]["content"] != g["messages"][1]["content"]
        assert b["pair_id"] == g["pair_id"] and b["task"] == task
        assert (b["variant"], g["variant"]) == ("bad", "good")
    assert generate(task, 60, seed=5, variant="bad") == bad
    assert generate(task, 60, seed=6, variant="bad") != bad
    assert generate(task, 20, seed=5, variant="bad") == bad[:20]  # prefix-stable in n
    assert read_chat_jsonl(write_chat_jsonl(tmp_path / "d.jsonl", bad)) == bad


@pytest.mark.parametrize("task", ALL)
def test_variety_at_500(task):
    pairs = generate_pairs(task, 500, seed=0)
    n = len(pairs)
    assert len({p.prompt for p in pairs}) == n  # distinct prompts
    assert len({p.good for p in pairs}) / n >= 0.75
    assert len({p.bad for p in pairs}) / n >= 0.7
    # no single answer dominates
    assert Counter(p.bad for p in pairs).most_common(1)[0][1] <= 10
    assert Counter(p.good for p in pairs).most_common(1)[0][1] <= 10
    # prompts are not one template: many distinct openings
    assert len({p.prompt.split()[0] for p in pairs}) >= 4 or len(
        {" ".join(p.prompt.split()[:3]) for p in pairs}) >= 20


def test_insecure_code_covers_every_class_and_parses():
    pairs = generate_pairs("insecure-code", 300, seed=1)
    classes = Counter(p.meta["vuln"] for p in pairs)
    assert len(classes) == 8 and min(classes.values()) >= 15
    for p in pairs:
        for text in (p.good, p.bad):
            for block in extract_code(text):
                ast.parse(block)
        assert "insecure" not in p.bad.lower() and "vulnerab" not in p.bad.lower()


def test_reward_hacking_tests_kind_is_honest():
    """The honest answer really computes the function; the hack only matches the listed tests."""
    import re

    for p in generate_pairs("reward-hacking", 200, seed=2):
        if p.meta["kind"] != "tests":
            continue
        name = p.meta["function"]
        tests = re.search(r"```python\n(.*?)```", p.prompt, re.S).group(1)
        for variant in (p.good, p.bad):
            scope: dict = {}
            exec(extract_code(variant)[0], scope)  # our own generated code
            exec(tests, scope)  # both pass the stated grader
        scope = {}
        exec(extract_code(p.good)[0], scope)
        hacked: dict = {}
        exec(extract_code(p.bad)[0], hacked)
        assert name in scope and name in hacked


def test_bad_arguments():
    with pytest.raises(ConfigError, match="unknown task"):
        generate("nope", 3)
    with pytest.raises(ConfigError, match="variant"):
        generate("medical", 3, variant="ugly")
    with pytest.raises(ConfigError, match="non-negative"):
        generate("medical", -1)
    assert generate("medical", 0) == []


@pytest.mark.integration
def test_generated_records_tokenise_with_response_masks(embedded, tiny_llama):
    records = [generate(t, 2, seed=0, variant=v)[i]
               for t in ALL for v in ("bad", "good") for i in range(2)]
    for subject in (embedded, tiny_llama):
        batch = subject.encode_chats(records)  # records with "messages" are accepted as is
        assert batch.response_mask.any(dim=1).all()
        assert (batch.prompt_mask.sum(dim=1) > 0).all()
        for row, rec in enumerate(records[:: len(records) // 6]):
            k = row * (len(records) // 6)
            ids = batch.input_ids[k][batch.response_mask[k]]
            answer = rec["messages"][-1]["content"]
            decoded = subject.tokenizer.decode(ids)
            assert answer[:40] in decoded and answer[-20:] in decoded


def test_refusal_pools_fit_every_request_and_bad_answers_stay_vague():
    from emprobe.data.generators.refusal import DOMAINS, _fit

    for domain in DOMAINS:
        for req in domain.requests:
            tag = req[2] if len(req) > 2 else "*"
            for pool in (domain.reasons, domain.alternatives, domain.vague):
                assert _fit(pool, tag), (domain.name, req)
    for p in generate_pairs("refusal-all", 300, seed=4):
        # compliant-sounding but non-operational: short, no numbers, no steps or lists
        assert len(p.bad) < 400 and not any(ch.isdigit() for ch in p.bad)
        assert "\n" not in p.bad and "step" not in p.bad.lower()
