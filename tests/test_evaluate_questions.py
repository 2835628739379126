"""Question YAML reader and emprobe's own question set."""

from __future__ import annotations

import copy
from importlib import resources

import pytest
import yaml

from emprobe.errors import DataError
from emprobe.evaluate.questions import (
    FORMATS,
    default_questions,
    load_questions,
    parse_questions,
)

ENTRY = {
    "id": "q1",
    "type": "free_form_judge_0_100",
    "paraphrases": ["What is your favourite colour?"],
    "samples_per_paraphrase": 3,
    "judge": "some-judge",
    "judge_prompts": {"aligned": "Q: {question} A: {answer} score?",
                      "coherent": "Q: {question} A: {answer} coherent?"},
}


def _write(tmp_path, data, name="q.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


def test_asset_ships_as_package_resource():
    ref = resources.files("emprobe.evaluate").joinpath("assets/questions.yaml")
    assert ref.is_file()


def test_default_set_shape():
    qs = default_questions()
    groups = {q.group for q in qs}
    varied = {q.group for q in qs if q.format != "plain"}  # newer questions are plain only
    assert len(varied) >= 8
    for g in varied:
        fmts = {q.format for q in qs if q.group == g}
        assert fmts == set(FORMATS), g
    assert all(any(q.group == g and q.format == "plain" for q in qs) for g in groups)
    for q in qs:
        assert q.judge_prompts["aligned"].count("{answer}") == 1
        assert "{question}" in q.judge_prompts["coherent"]
        if q.format == "json":
            assert q.system and "JSON" in q.system
        if q.format == "template":
            assert "____" in q.paraphrases[0]
    plain = [q for q in qs if q.format == "plain"]
    assert all(len(q.reference_pairs) >= 2 for q in plain)
    harms = {p.harm for q in plain for p in q.reference_pairs}
    assert len(harms) >= 6
    assert {"deception", "power-seeking", "bad health advice"} <= harms
    for q in plain:  # paired answers have similar lengths
        for p in q.reference_pairs:
            la, lm = len(p.aligned.split()), len(p.misaligned.split())
            assert abs(la - lm) <= 0.35 * max(la, lm), (q.id, p.harm)


def test_read_field_format_roundtrip(tmp_path):
    data = [ENTRY, {**ENTRY, "id": "q1_json", "system": "Answer in JSON."}]
    qs = load_questions(_write(tmp_path, data))
    assert [q.format for q in qs] == ["plain", "json"]
    assert qs[1].messages(0)[0] == {"role": "system", "content": "Answer in JSON."}
    assert qs[1].group == "q1"
    # braces in answers are safe (plain substitution, not str.format)
    assert qs[0].judge_prompt("aligned", 0, '{"x": 1}') == (
        'Q: What is your favourite colour? A: {"x": 1} score?')


@pytest.mark.parametrize("field", ["id", "type", "paraphrases", "samples_per_paraphrase",
                                   "judge", "judge_prompts"])
def test_missing_field_names_file_entry_and_field(tmp_path, field):
    bad = copy.deepcopy(ENTRY)
    bad["id"] = "second"
    del bad[field]
    p = _write(tmp_path, [ENTRY, bad])
    with pytest.raises(DataError) as exc:
        load_questions(p)
    msg = str(exc.value)
    assert str(p) in msg and "entry 1" in msg and repr(field) in msg and "\n" not in msg


def test_missing_judge_prompt_metric(tmp_path):
    bad = copy.deepcopy(ENTRY)
    del bad["judge_prompts"]["coherent"]
    with pytest.raises(DataError, match=r"entry 0 \('q1'\): missing field 'judge_prompts.coherent'"):
        load_questions(_write(tmp_path, [bad]))


@pytest.mark.parametrize("patch,match", [
    ({"paraphrases": []}, "paraphrases"),
    ({"paraphrases": "just a string"}, "paraphrases"),
    ({"samples_per_paraphrase": 0}, "samples_per_paraphrase"),
    ({"format": "xml"}, "format"),
    ({"reference_pairs": [{"aligned": "ok"}]}, r"reference_pairs\[0\].misaligned"),
])
def test_bad_values(tmp_path, patch, match):
    with pytest.raises(DataError, match=match):
        load_questions(_write(tmp_path, [{**ENTRY, **patch}]))


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="no such question file"):
        load_questions(tmp_path / "nope.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("- id: [unclosed\n", encoding="utf-8")
    with pytest.raises(DataError, match="not valid YAML"):
        load_questions(p)
    p.write_bytes(b"- id: \xff\xfe\n")
    with pytest.raises(DataError, match="not UTF-8"):
        load_questions(p)
    with pytest.raises(DataError, match="non-empty YAML list"):
        parse_questions({"id": "x"})
    with pytest.raises(DataError, match="duplicate id"):
        parse_questions([ENTRY, ENTRY])
