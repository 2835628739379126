"""Which judge is asked: --judge-model, else the YAML's judge:, never the first listed model
silently; the judge URL is checked up front; question YAML through the C loader."""

from __future__ import annotations

import contextlib
import io
import time

import pytest
from loopback_judge import logprob_judge

from emprobe.cli import main
from emprobe.errors import ConfigError, EndpointError, LimitError
from emprobe.evaluate.em_eval import resolve_judge_model
from emprobe.evaluate.judge import JudgeClient
from emprobe.evaluate.questions import Question, load_question_yaml, load_questions

PROMPTS = {"aligned": "A {question} {answer}", "coherent": "C {question} {answer}"}


def _q(judge: str, qid: str = "q") -> Question:
    return Question(id=qid, type="free_form_judge_0_100", paraphrases=("Hi?",),
                    samples_per_paraphrase=1, judge=judge, judge_prompts=PROMPTS)


def test_yaml_judge_is_used_and_checked_against_the_server():
    with logprob_judge(lambda p: {"50": 1.0}, models=("big-judge", "other")) as (url, _):
        assert resolve_judge_model(url, None, [_q("big-judge")]) == (
            "big-judge", "judge: in the question file")
        assert resolve_judge_model(url, "other", [_q("big-judge")])[0] == "other"
        with pytest.raises(ConfigError, match="'gpt-x' named in .* not served"):
            resolve_judge_model(url, None, [_q("gpt-x")])
        with pytest.raises(ConfigError, match="several judges"):
            resolve_judge_model(url, None, [_q("a"), _q("b", "q2")])
        # no question file and two served models: refuse, never pick the first
        with pytest.raises(ConfigError, match="serves 2 models .* no judge is named"):
            resolve_judge_model(url, None, None)
    with logprob_judge(lambda p: {"50": 1.0}, models=("only",)) as (url, _):
        assert resolve_judge_model(url, None, None) == ("only",
                                                         "the only model the server lists")


@pytest.mark.parametrize("url", ["http://[::1/v1", "http://127.0.0.1:99999/v1", "http:///v1",
                                 "localhost:8000", "http://a b/v1"])
def test_malformed_judge_url_is_one_endpoint_error(url):
    with pytest.raises(EndpointError) as exc:
        JudgeClient(url, "m")
    assert "\n" not in str(exc.value) and "judge URL" in str(exc.value)


def test_malformed_url_on_the_command_line_is_one_line(tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_text("response,question\nhi,hello?\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["eval", "rescore", str(csv), "--out", str(tmp_path / "b.csv"),
                   "--base-url", "http://[::1/v1"])
    assert rc == 2 and err.getvalue().count("\n") == 1 and "malformed" in err.getvalue()


def test_c_loader_keeps_the_limits(tmp_path):
    import yaml

    assert hasattr(yaml, "CSafeLoader")  # the fast path is the one tested here
    with pytest.raises(LimitError, match="aliases"):
        load_question_yaml(("- x: &a 1\n" + "".join(f"  y{i}: *a\n" for i in range(200))
                            ).encode(), "many.yaml")
    with pytest.raises(LimitError, match="itself"):
        load_question_yaml(b"&a [*a]", "loop.yaml")
    lines = ['- a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "a" if i == 0 else "bcdefghi"[i - 1]
        lines.append(f"  {name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    t0 = time.perf_counter()
    with pytest.raises(LimitError):
        load_question_yaml("\n".join(lines).encode(), "bomb.yaml")
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(Exception, match="q.yaml"):
        load_question_yaml(b"- !!python/object/apply:os.system ['echo pwned']\n", "q.yaml")


def test_field_file_parses_the_same_with_both_loaders():
    from pathlib import Path

    from emprobe.validate import load_yaml

    path = Path(__file__).parent / "data" / "field_questions.yaml"
    raw = path.read_bytes()
    assert load_question_yaml(raw, "f") == load_yaml(raw, "f")
    assert [q.id for q in load_questions(path)]
