"""Evaluation: the local log-probability misalignment score, the judge client, a local
OpenAI-compatible server, refusal classification.

May import ``emprobe.models``, ``emprobe.hooks`` and ``emprobe.data``.
"""

from emprobe.evaluate.em_rate import EMRate, em_rate, em_rates_both
from emprobe.evaluate.judge import JudgeClient, sample_answers, score_from_logprobs
from emprobe.evaluate.judged import JudgedEval, em_rates, evaluate_judged, judge_answers
from emprobe.evaluate.local import Comparison, LocalScore, answer_logprobs, compare, local_score
from emprobe.evaluate.questions import Question, ReferencePair, default_questions, load_questions
from emprobe.evaluate.refusal import classify, is_refusal, refusal_rate, refusal_rates
from emprobe.evaluate.server import LocalServer, serve_in_background, start_server
from emprobe.evaluate.stats import Estimate, wilson

__all__ = [
    "Comparison",
    "EMRate",
    "Estimate",
    "JudgeClient",
    "JudgedEval",
    "LocalScore",
    "LocalServer",
    "Question",
    "ReferencePair",
    "answer_logprobs",
    "classify",
    "compare",
    "default_questions",
    "em_rate",
    "em_rates",
    "em_rates_both",
    "evaluate_judged",
    "is_refusal",
    "judge_answers",
    "load_questions",
    "local_score",
    "refusal_rate",
    "refusal_rates",
    "sample_answers",
    "score_from_logprobs",
    "serve_in_background",
    "start_server",
    "wilson",
]
