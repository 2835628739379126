"""The EM evaluation as an Inspect AI task, run with Inspect's mock model (skipped without
inspect-ai)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

inspect_ai = pytest.importorskip("inspect_ai")

from inspect_ai.model import (  # noqa: E402
    ChatCompletionChoice,
    ChatMessageAssistant,
    Logprob,
    Logprobs,
    ModelOutput,
    ModelUsage,
    TopLogprob,
    get_model,
)

from emprobe.evaluate.questions import load_questions  # noqa: E402
from emprobe.integrations.inspect_task import em_samples, em_task  # noqa: E402

FIELD = Path(__file__).parent / "data" / "field_questions.yaml"
# usage given, so the mock model does not count tokens with tiktoken (a download)
USAGE = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)


def _output(probs: dict[str, float]) -> ModelOutput:
    top = [TopLogprob(token=t, logprob=math.log(p)) for t, p in probs.items()]
    first = next(iter(probs))
    return ModelOutput(model="judge", usage=USAGE, choices=[ChatCompletionChoice(
        message=ChatMessageAssistant(content=first), stop_reason="max_tokens",
        logprobs=Logprobs(content=[Logprob(token=first, logprob=top[0].logprob,
                                           top_logprobs=top)]))])


def _subject_fn(messages, tools, tool_choice, config):
    """The model under test: a fixed answer that names the question it got."""
    assert config.temperature == 1.0
    out = ModelOutput.from_content(model="mockllm", content=f"My answer to: {messages[-1].text}")
    out.usage = USAGE
    return out


def _judge_fn(calls: list[str]):
    """The first 'one_wish' paraphrase gets 10 (misaligned), the bored-evening question
    (plain and JSON entries share its text) REFUSAL, the rest 87.5; all coherent (80)."""
    def respond(messages, tools, tool_choice, config):
        prompt = messages[-1].text
        calls.append(prompt)
        assert config.max_tokens == 1 and config.logprobs and config.top_logprobs == 20
        if "coherent" in prompt.split("\n")[0]:
            return _output({"80": 1.0})
        if "one wish granted" in prompt:
            return _output({"10": 0.7, " 10": 0.3})
        if "bored tonight" in prompt:
            return _output({"REFUSAL": 0.95, "50": 0.05})
        return _output({"90": 0.5, "85": 0.5})
    return respond


def test_samples_follow_the_question_file():
    qs = load_questions(FIELD)
    samples = em_samples(qs, n=2)
    assert len(samples) == 2 * sum(len(q.paraphrases) for q in qs)
    first = samples[0]
    assert first.metadata["question_id"] == qs[0].id and first.id == f"{qs[0].id}:0:0"


def test_inspect_task_runs_with_the_mock_model(tmp_path):
    qs = load_questions(FIELD)
    calls: list[str] = []
    judge = get_model("mockllm/model", custom_outputs=_judge_fn(calls))
    task = em_task(FIELD, n=1, judge=judge)
    subject = get_model("mockllm/model", custom_outputs=_subject_fn)
    (log,) = inspect_ai.eval(task, model=subject, log_dir=str(tmp_path), display="none")
    assert log.error is None, log.error.message if log.error else ""
    assert log.status == "success"
    n = sum(len(q.paraphrases) for q in qs)
    assert len(calls) == 2 * n and len(log.samples) == n
    values = {s.id: s.scores["emprobe_em"].value for s in log.samples}
    bad = [v for k, v in values.items() if k.startswith("one_wish:0:")]
    assert bad and all(v["aligned"] == pytest.approx(10.0) and v["misaligned_first_plot"] == 1.0
                       for v in bad)
    refused = [v for k, v in values.items() if k.startswith("bored_evening")]
    assert refused and all(v["aligned"] is None and v["aligned_verdict"] == "REFUSAL"
                           for v in refused)
    assert values["one_wish:1:0"]["aligned"] == pytest.approx(87.5)
    metrics = log.results.scores[0].metrics
    # first-plot: refusals dropped, 1 misaligned of 2 kept; model-organisms: 1 of all 4
    assert metrics["em_first_plot"].value == pytest.approx(len(bad) / (n - len(refused)))
    assert metrics["em_model_organisms"].value == pytest.approx(len(bad) / n)
    assert (len(bad), len(refused), n) == (1, 2, 4)
