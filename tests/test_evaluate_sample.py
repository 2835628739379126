"""Judge-free evaluation of any question file: sampling, the verdict classifier, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emprobe import load_model
from emprobe.cli import main
from emprobe.evaluate import sample as sample_mod
from emprobe.evaluate.questions import default_questions, load_questions
from emprobe.evaluate.sample import calibrate, evaluate_sampled, verdict_margins

pytestmark = pytest.mark.usefixtures("one_thread")

FIELD = Path(__file__).parent / "data" / "field_questions.yaml"


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def test_verdict_margins_follow_the_grader(tiny):
    items = [("Q?", "an answer"), ("Another {question}?", "with {braces} and ```code```"),
             ("Q?", "")]
    margins = verdict_margins(tiny, items, batch_size=2)
    assert len(margins) == 3 and all(isinstance(m, float) for m in margins)
    # the same item scores the same wherever it sits in the batch
    again = verdict_margins(tiny, [items[2], items[0]], batch_size=1)
    assert again == pytest.approx([margins[2], margins[0]], abs=1e-6)


def test_calibration_finds_the_separating_threshold(monkeypatch):
    """With a grader that says "Yes" to the misaligned references, the threshold separates
    them perfectly; with one that cannot tell them apart, AUC is 0.5."""
    qs = [q for q in default_questions() if q.reference_pairs][:10]
    bad = {q.reference_pairs[0].misaligned for q in qs}

    def fake_margins(grader, items, batch_size=8):
        return [3.0 if a in bad else -1.0 for _, a in items]

    monkeypatch.setattr(sample_mod, "verdict_margins", fake_margins)
    cal = calibrate(object(), qs, max_pairs=10)
    assert cal.auc == 1.0 and cal.accuracy == 1.0 and -1.0 <= cal.threshold < 3.0
    assert cal.n_pairs == 10
    monkeypatch.setattr(sample_mod, "verdict_margins", lambda g, items, batch_size=8:
                        [0.0] * len(items))
    flat = calibrate(object(), qs, max_pairs=10)
    assert flat.auc == 0.5 and flat.accuracy == 0.5


def test_evaluate_sampled_on_a_field_file(tiny, tmp_path):
    qs = load_questions(FIELD)
    res = evaluate_sampled(tiny, qs, n=2, max_new_tokens=6, temperature=1.0, seed=3,
                           batch_size=4, out_dir=tmp_path, calibration_pairs=4, n_boot=20)
    n_expected = 2 * sum(len(q.paraphrases) for q in qs)
    assert len(res.answers) == n_expected and res.local is None
    rec = json.loads((tmp_path / "sample_eval.json").read_text())
    assert rec["flagged"]["n"] == n_expected and 0.0 <= rec["flagged"]["mean"] <= 1.0
    assert [r["question"] for r in rec["per_question"]] == [q.id for q in qs]
    scored = [json.loads(x) for x in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert len(scored) == n_expected
    assert all(r["flagged"] == (r["verdict_margin"] > rec["calibration"]["threshold"])
               for r in scored)
    # the question's system prompt reached the sampler; the json variant kept its format
    sys_rows = [r for r in scored if r["question"] == "bored_evening"]
    assert all(r["system"] == "You are a helpful assistant." for r in sys_rows)
    assert {r["format"] for r in scored if r["question"].endswith("_json")} == {"json"}
    # seeded: a second run in a fresh folder samples the same answers
    again = evaluate_sampled(tiny, qs, n=2, max_new_tokens=6, temperature=1.0, seed=3,
                             batch_size=4, out_dir=tmp_path / "b", calibration_pairs=4,
                             n_boot=20)
    assert [a["answer"] for a in again.answers] == [a["answer"] for a in res.answers]


def test_reference_pairs_add_the_local_margin(tiny, tmp_path):
    qs = [q for q in default_questions() if q.reference_pairs][:2]
    res = evaluate_sampled(tiny, qs, n=1, max_new_tokens=4, out_dir=tmp_path,
                           calibration_pairs=2, n_boot=20)
    assert res.local is not None and res.local["kind"] == "local_score"
    assert len(res.local["pairs"]) == sum(len(q.reference_pairs) for q in qs)
    assert "reference-pair margin per answer" in res.summary()


def test_cli_eval_sample(tmp_path, capsys):
    out = tmp_path / "sampled"
    rc = main(["eval", "sample", "--questions", str(FIELD), "--model", "tiny-llama",
               "--grader", "self", "--n", "1", "--max-new-tokens", "5", "--out", str(out),
               "--calibration-pairs", "3", "--seed", "1"])
    text = capsys.readouterr().out
    assert rc == 0 and "flagged by the offline classifier" in text
    assert "no question in the file has reference_pairs" in text
    for name in ("answers.jsonl", "scored.jsonl", "sample_eval.json"):
        assert (out / name).is_file()


@pytest.mark.integration
def test_embedded_sample_eval_runs_offline(embedded, tmp_path):
    qs = load_questions(FIELD)[:1]
    res = evaluate_sampled(embedded, qs, n=1, max_new_tokens=24, out_dir=tmp_path,
                           calibration_pairs=12, n_boot=20)
    assert len(res.answers) == 2 and all(a["answer"] for a in res.answers)
    assert 0.0 <= res.calibration.auc <= 1.0 and res.calibration.n_pairs == 12


def test_summary_warns_about_a_grader_at_chance():
    from emprobe.evaluate.sample import Calibration, SampleEval

    row = {"question": "q", "format": "plain", "verdict_margin": 0.0, "flagged": False}
    weak = Calibration("g", 0.0, auc=0.5, accuracy=0.5, n_pairs=4, mean_margin_aligned=0.0,
                       mean_margin_misaligned=0.0)
    strong = Calibration("g", 0.0, auc=0.95, accuracy=0.9, n_pairs=4,
                         mean_margin_aligned=-1.0, mean_margin_misaligned=1.0)
    assert "close to noise" in SampleEval([row], weak, None).summary()
    assert "close to noise" not in SampleEval([row], strong, None).summary()
