"""``emprobe eval em`` and ``emprobe eval rescore`` as functions: outputs, the judge's name.

Output folder of an EM evaluation (``write_em_outputs``)::

    answers.csv        one row per answer, the field's columns first (emprobe.evaluate.answers)
    em_summary.json    both definitions: rate, Wilson and question-clustered intervals,
                       per question, per format, counts, settings
    em_rate.html       EM rate per question, both definitions (plus .png with kaleido)
    cache/             answers.jsonl and judgements.jsonl (resume without repeated requests)

The judge model (``resolve_judge_model``): ``--judge-model`` when given; else the ``judge:``
the question file names (one name for all its entries); else, for answers without a
question file, the one model the server lists. Several listed models and no name is an
error, never a silent choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from emprobe.errors import ConfigError, DataError, EndpointError
from emprobe.evaluate.answers import read_answers_csv, write_answers_csv
from emprobe.evaluate.em_figures import em_rate_figure
from emprobe.evaluate.em_rate import DEFINITIONS
from emprobe.evaluate.judge import JudgeClient, check_base_url
from emprobe.evaluate.judge_run import judge_rows
from emprobe.evaluate.judged import JudgedEval, em_rates
from emprobe.evaluate.questions import Question, default_questions
from emprobe.io import write_json
from emprobe.plot.save import save_figure

__all__ = ["served_models", "resolve_judge_model", "write_em_outputs", "rescore_csv"]


def served_models(base_url: str, api_key: str | None = None, timeout: float = 10.0
                  ) -> list[str]:
    """The model names an OpenAI-compatible server lists at ``GET {base_url}/models``."""
    check_base_url(base_url)
    url = base_url.rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.get(url, headers=headers, timeout=timeout)
        resp.raise_for_status()
        data = resp.json().get("data") or []
        names = [d["id"] for d in data if isinstance(d, dict) and isinstance(d.get("id"), str)]
    except (httpx.HTTPError, ValueError, AttributeError, KeyError) as exc:
        raise EndpointError(f"{url}: cannot list the served models "
                            f"({type(exc).__name__}); pass --judge-model") from None
    return names


def resolve_judge_model(base_url: str, judge_model: str | None,
                        questions: Sequence[Question] | None, api_key: str | None = None,
                        source: str = "the question file") -> tuple[str, str]:
    """``(name, why)``: the judge model to send and where the name came from."""
    if judge_model:
        return judge_model, "--judge-model"
    named = sorted({q.judge for q in questions or ()})
    if len(named) > 1:
        raise ConfigError(f"{source} names several judges ({', '.join(named)}); pass "
                          "--judge-model")
    if named:
        try:
            listed = served_models(base_url, api_key)
        except EndpointError:
            return named[0], f"judge: in {source} (the server does not list its models)"
        if listed and named[0] not in listed:
            raise ConfigError(f"judge {named[0]!r} named in {source} is not served at "
                              f"{base_url} (it serves: {', '.join(listed[:5])}); pass "
                              "--judge-model")
        return named[0], f"judge: in {source}"
    listed = served_models(base_url, api_key)
    if len(listed) == 1:
        return listed[0], "the only model the server lists"
    if not listed:
        raise EndpointError(f"{base_url}/models lists no model; pass --judge-model")
    raise ConfigError(f"{base_url} serves {len(listed)} models ({', '.join(listed[:5])}) and "
                      "no judge is named; pass --judge-model")


def write_em_outputs(result: JudgedEval, out_dir: str | Path, figure: bool = True
                     ) -> list[Path]:
    """Write ``answers.csv``, ``em_summary.json`` and the figure into ``out_dir``."""
    out = Path(out_dir)
    written = [write_answers_csv(out / "answers.csv", result.judged)]
    rates = result.rates()
    summary = {"kind": "em_summary", "meta": result.meta,
               "em": {d: r.to_record() for d, r in rates.items()},
               "em_by_format": [row for d in DEFINITIONS for row in em_rates(result.judged, d)]}
    written.append(write_json(out / "em_summary.json", summary))
    if figure:
        title = f"Judged EM rate per question ({result.meta.get('model', 'model')})"
        written += save_figure(em_rate_figure(rates, title=title), out / "em_rate",
                               include_plotlyjs="directory")
    return written


def _templates(questions: Sequence[Question] | None) -> tuple[dict[str, dict[str, str]],
                                                               dict[str, str]]:
    by_id = {q.id: dict(q.judge_prompts) for q in questions or ()}
    return by_id, dict(default_questions()[0].judge_prompts)


def rescore_csv(path: str | Path, client: JudgeClient, questions: Sequence[Question] | None,
                cache_dir: str | Path | None = None, workers: int = 8,
                check_mass: bool = True) -> JudgedEval:
    """Judge (or re-judge) every row of an answers CSV; no sampling.

    A row's judge prompts are its ``question_id``'s in ``questions``; rows whose id is not
    there (or every row, without ``questions``) use emprobe's own judge prompts. The rows
    keep every column of the file; ``aligned`` / ``coherent`` are replaced.
    """
    rows = read_answers_csv(path)
    by_id, fallback = _templates(questions)
    if questions is not None:
        missing = sorted({str(r["question_id"]) for r in rows} - set(by_id))
        if missing and len(missing) == len({str(r["question_id"]) for r in rows}):
            raise DataError(f"{path}: no question_id of the file is in the question file "
                            f"(e.g. {missing[0]!r}); leave --questions out to use emprobe's "
                            "judge prompts")

    def template(row: Mapping[str, object], metric: str) -> str:
        return by_id.get(str(row["question_id"]), fallback)[metric]

    judged = judge_rows(rows, client, template, cache_dir=cache_dir, workers=workers,
                        check_mass=check_mass)
    n_own = sum(1 for r in rows if str(r["question_id"]) in by_id)
    meta: dict[str, object] = {
        "source": str(path), "judge_model": client.model, "judge_url": client.base_url,
        "prompts": {"from_question_file": n_own, "emprobe_default": len(rows) - n_own},
        "definitions": list(DEFINITIONS)}
    return JudgedEval(judged, meta)
