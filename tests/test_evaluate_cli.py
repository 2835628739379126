"""``emprobe eval local``, ``emprobe eval judge`` against a real ``emprobe serve`` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from emprobe.cli import main

ENTRY = {
    "id": "hello", "type": "free_form_judge_0_100", "paraphrases": ["Say hi."],
    "samples_per_paraphrase": 1, "judge": "j",
    "judge_prompts": {"aligned": "Rate: {question} {answer}", "coherent": "Ok? {answer}"},
    "reference_pairs": [{"aligned": "Hi there!", "misaligned": "Go away."}],
}


def test_eval_local_prints_interval_and_writes_record(tmp_path, capsys):
    qfile = tmp_path / "q.yaml"
    qfile.write_text(yaml.safe_dump([ENTRY, {**ENTRY, "id": "bye"}]))
    out = tmp_path / "score.json"
    rc = main(["eval", "local", "--model", "tiny-llama", "--questions", str(qfile),
               "--n-boot", "50", "--per-question", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "margin per answer" in text and "[" in text and "bye" in text
    rec = json.loads(out.read_text())
    assert rec["kind"] == "local_score" and rec["meta"]["n_pairs"] == 2


def test_eval_bad_questions_is_one_line_error(tmp_path, capsys):
    qfile = tmp_path / "q.yaml"
    qfile.write_text(yaml.safe_dump([{k: v for k, v in ENTRY.items() if k != "judge"}]))
    assert main(["eval", "local", "--model", "tiny-llama", "--questions", str(qfile)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing field 'judge'" in err and "q.yaml" in err


@pytest.fixture
def served_tiny():
    """``emprobe serve`` as a real subprocess on an ephemeral loopback port."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "emprobe.cli", "serve", "--model", "tiny-llama", "--port", "0",
         "--name", "tiny-judge"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=env)
    try:
        line = proc.stdout.readline()
        assert "serving tiny-judge at http://127.0.0.1:" in line, line
        yield line.split(" at ")[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_eval_judge_against_emprobe_serve(served_tiny, tmp_path, capsys):
    qfile = tmp_path / "q.yaml"
    qfile.write_text(yaml.safe_dump([ENTRY, {**ENTRY, "id": "hello_json", "system": "JSON."}]))
    cache, out = tmp_path / "cache", tmp_path / "judged.json"
    args = ["eval", "judge", "--model", "tiny-gpt2", "--judge-url", served_tiny,
            "--judge-model", "tiny-judge", "--questions", str(qfile), "--n", "2",
            "--max-new-tokens", "3", "--cache", str(cache), "--out", str(out),
            "--allow-unscored"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "first-plot" in text and "model-organisms" in text and "nan%" not in text
    rec = json.loads(out.read_text())
    assert len(rec["answers"]) == 4 and all("aligned_mass" in a for a in rec["answers"])
    asked = len((cache / "judgements.jsonl").read_text().splitlines())
    assert 2 <= asked <= 8  # identical prompts are asked once
    assert main(args) == 0  # resumed entirely from the cache
    assert len((cache / "judgements.jsonl").read_text().splitlines()) == asked


def test_eval_em_on_a_field_file_uses_its_judge(served_tiny, tmp_path, capsys, monkeypatch):
    """The field's YAML (no reference answers) names its judge; a server that does not
    serve it is one clear line, --judge-model overrides it; outputs in the field's units."""
    from pathlib import Path

    field = Path(__file__).parent / "data" / "field_questions.yaml"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "em"
    base = ["eval", "em", "--model", "tiny-llama", "--base-url", served_tiny,
            "--questions", str(field), "--n", "1", "--max-new-tokens", "3", "--out", str(out)]
    assert main(base) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "gpt-4o-2024-08-06" in err and "--judge-model" in err
    assert main([*base, "--judge-model", "tiny-judge", "--allow-unscored"]) == 0
    text = capsys.readouterr().out
    assert "judge: tiny-judge (--judge-model)" in text
    summary = json.loads((out / "em_summary.json").read_text())
    assert summary["meta"]["judge_model"] == "tiny-judge"
    assert set(summary["em"]) == {"first-plot", "model-organisms"}
    header = (out / "answers.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["response", "question", "question_id", "aligned", "coherent"]
    assert (out / "em_rate.html").is_file()
    # no URL and no OPENAI_BASE_URL: one line, exit 2
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert main(["eval", "judge", "--model", "tiny-llama", "--questions", str(field)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--base-url" in err
