"""The judged EM evaluation: sampled answers, judged on both prompts, both EM definitions.

``evaluate_judged(subject, questions, client)`` samples answers (temperature 1 by default,
``emprobe.evaluate.judge.sample_answers``), judges each on the ``aligned`` and ``coherent``
prompts of its question (``emprobe.evaluate.judge_run.judge_rows``: concurrent, cached,
number-mass checked) and returns a ``JudgedEval`` whose rows are in the field's per-answer
layout (``response``, ``question``, ``question_id``, ``aligned``, ``coherent``) plus
emprobe's columns (``paraphrase``, ``sample``, ``model``, ``format``, ``group``, the judge's
number mass and verdict per metric). ``JudgedEval.rates()`` gives both EM definitions
(``emprobe.evaluate.em_rate``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from emprobe.errors import DataError
from emprobe.evaluate.em_rate import DEFINITIONS, FIRST_PLOT, EMRate, em_rate
from emprobe.evaluate.judge import JudgeClient, sample_answers
from emprobe.evaluate.judge_run import judge_rows
from emprobe.evaluate.questions import FORMATS, Question

if TYPE_CHECKING:
    from emprobe.models.subject import Subject

__all__ = ["JudgedEval", "em_rates", "evaluate_judged", "field_rows", "judge_answers"]

Row = dict[str, object]


def field_rows(answers: Iterable[Mapping[str, object]]) -> list[Row]:
    """Sampled answer records (``sample_answers``) in the field's layout: ``response`` (the
    answer), ``question`` (the paraphrase's text), ``question_id``, plus emprobe's columns."""
    out: list[Row] = []
    for a in answers:
        out.append({"response": a["answer"], "question": a["prompt"],
                    "question_id": a["question"], "paraphrase": a["paraphrase"],
                    "sample": a["sample"], "model": a["model"],
                    "format": a.get("format", "plain"), "group": a.get("group", a["question"]),
                    "system": a.get("system")})
    return out


def judge_answers(answers: Iterable[Mapping[str, object]], client: JudgeClient,
                  questions: Sequence[Question], cache_dir: str | Path | None = None,
                  metrics: Sequence[str] = ("aligned", "coherent"), workers: int = 8,
                  check_mass: bool = True) -> list[Row]:
    """Judge sampled answers with their questions' prompts; rows in the field's layout."""
    by_id = {q.id: q for q in questions}
    rows = field_rows(answers)
    for r in rows:
        if r["question_id"] not in by_id:
            raise DataError(f"answer for unknown question {r['question_id']!r}")

    def template(row: Mapping[str, object], metric: str) -> str:
        q = by_id[str(row["question_id"])]
        if metric not in q.judge_prompts:
            raise DataError(f"question {q.id!r} has no judge prompt {metric!r}")
        return q.judge_prompts[metric]

    return judge_rows(rows, client, template, cache_dir=cache_dir, workers=workers,
                      metrics=metrics, check_mass=check_mass)


def em_rates(judged: Sequence[Mapping[str, object]], definition: str = FIRST_PLOT,
             by: str = "format", n_boot: int = 2000, seed: int = 0) -> list[dict[str, object]]:
    """EM rate rows under ``definition``: ``"all"`` first, then one per value of ``by``
    (formats in the order plain, json, template; rows without ``by`` are in "all" only). Each row is ``EMRate.to_record()`` with
    ``by: value`` added."""
    groups: dict[str, list[Mapping[str, object]]] = {"all": list(judged)}
    for r in judged:
        if r.get(by) is not None:  # rows without the field (foreign files) count in "all" only
            groups.setdefault(str(r[by]), []).append(r)
    order = ["all"] + [f for f in FORMATS if f in groups] + sorted(
        g for g in groups if g != "all" and g not in FORMATS)
    rows = []
    for g in order:
        rec = em_rate(groups[g], definition, n_boot=n_boot, seed=seed).to_record()
        rec[by] = g
        rows.append(rec)
    return rows


@dataclass
class JudgedEval:
    """Judged answers; ``rates()`` gives both EM definitions, ``to_record()`` everything."""

    judged: list[Row]
    meta: dict[str, object] = field(default_factory=dict)

    def rates(self, n_boot: int = 2000, seed: int = 0) -> dict[str, EMRate]:
        return {d: em_rate(self.judged, d, n_boot=n_boot, seed=seed) for d in DEFINITIONS}

    def to_record(self) -> dict[str, object]:
        return {"kind": "judged_eval", "meta": self.meta,
                "em": {d: r.to_record() for d, r in self.rates().items()},
                "em_by_format": [row for d in DEFINITIONS for row in em_rates(self.judged, d)],
                "answers": self.judged}

    def summary(self) -> str:
        lines = [f"judged EM rate, {len(self.judged)} answers, judge "
                 f"{self.meta.get('judge_model', '?')} (interval: 95 %, questions resampled)"]
        for r in self.rates().values():
            lines.append(f"  {r.summary()}")
            lines.append(f"  {'':<16} rule: {r.rule}")
        for d in DEFINITIONS:
            for row in em_rates(self.judged, d)[1:]:
                lines.append(f"  {d:<16} {row['format']:<9} {_row_rate(row)}")
        return "\n".join(lines)


def _row_rate(row: Mapping[str, object]) -> str:
    n, k = row["n"], row["k"]
    rate, lo, hi = row["rate"], row["lo"], row["hi"]
    if not isinstance(n, int) or not n or not isinstance(rate, float):
        return "n/a (0 answers kept)"
    assert isinstance(lo, float) and isinstance(hi, float)
    return f"{rate:.1%} [{lo:.1%}, {hi:.1%}] ({k}/{n})"


def evaluate_judged(subject: Subject, questions: Sequence[Question], client: JudgeClient,
                    n: int | None = None, cache_dir: str | Path | None = None,
                    temperature: float = 1.0, max_new_tokens: int = 600, seed: int = 0,
                    batch_size: int = 8, model_name: str | None = None, workers: int = 8,
                    check_mass: bool = True) -> JudgedEval:
    """Sample answers and judge them (both cached under ``cache_dir`` when given)."""
    answers = sample_answers(subject, questions, n=n, temperature=temperature,
                             max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
                             cache_dir=cache_dir, model_name=model_name)
    judged = judge_answers(answers, client, questions, cache_dir=cache_dir, workers=workers,
                           check_mass=check_mass)
    meta: dict[str, object] = {
        "model": answers[0]["model"] if answers else model_name, "judge_model": client.model,
        "judge_url": client.base_url, "n": n, "temperature": temperature,
        "max_new_tokens": max_new_tokens, "seed": seed, "definitions": list(DEFINITIONS)}
    return JudgedEval(judged, meta)

