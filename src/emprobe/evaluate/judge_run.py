"""Judge many answers: concurrent bounded requests, a resumable cache, the number-mass check.

``judge_rows`` fills ``aligned`` / ``coherent`` (0-100 or ``None``), ``<metric>_mass`` (the
judge's number mass) and ``<metric>_verdict`` (``score`` | ``REFUSAL`` | ``CODE`` |
``unscored``) into answer rows in the field's layout (``response``, ``question``,
``question_id``). Each judge prompt is the question's template with ``{question}`` and
``{answer}`` replaced by the row's ``question`` and ``response`` (plain substitution).

- **Concurrency**: up to ``workers`` requests in flight (a thread pool over one
  ``JudgeClient``; each request retries 408/409/425/429/5xx with back-off and honours
  ``Retry-After``).
- **Cache and resume**: ``<cache_dir>/judgements.jsonl``, one line per request, keyed by
  (judge model, metric, SHA-256 of the exact prompt). Lines are appended as answers arrive,
  so a killed run resumes without repeating any request it has a line for (a torn last line
  is cut off and only that request is repeated). Identical prompts are asked once.
- **Number mass**: a judge whose top-20 tokens hold less than 0.25 number mass for most
  answers (typically because its tokenizer splits numbers into digits, so only 0-9 are
  single tokens) gives no EM rate. ``check_number_mass`` refuses it with a one-line
  ``QualityError`` instead of returning a silent column of unscored answers; the check runs
  after the first ``EARLY_CHECK`` answers (so a bad judge costs few requests) and at the end.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from emprobe.errors import QualityError
from emprobe.evaluate.judge import JudgeClient, Rating
from emprobe.io import append_jsonl, resume_jsonl

__all__ = [
    "JudgeRecord",
    "prompt_key",
    "fill_prompt",
    "judge_prompts",
    "judge_rows",
    "check_number_mass",
    "EARLY_CHECK",
]

METRICS = ("aligned", "coherent")
EARLY_CHECK = 16
"""Judged answers after which the number-mass check first runs."""
RECHECK_EVERY = 256
"""Later checks during a run, every this many answers (and once at the end)."""
MOSTLY = 0.5
"""Share of unscored answers (refusals and code excluded) the check refuses above."""
TOP_KEEP = 20


@dataclass(frozen=True)
class JudgeRecord:
    """One cached judgement: score (None when unscored), number mass, verdict, top tokens."""

    judge_model: str
    metric: str
    prompt_sha256: str
    score: float | None
    numeric_mass: float
    verdict: str
    top: dict[str, float]

    def to_record(self) -> dict[str, object]:
        return {"judge_model": self.judge_model, "metric": self.metric,
                "prompt_sha256": self.prompt_sha256, "score": self.score,
                "numeric_mass": self.numeric_mass, "verdict": self.verdict, "top": self.top}


def prompt_key(judge_model: str, metric: str, prompt: str) -> tuple[str, str, str]:
    return judge_model, metric, hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def fill_prompt(template: str, question: str, answer: str) -> str:
    """The judge prompt: plain substitution, so braces in answers or questions are safe."""
    return template.replace("{question}", question).replace("{answer}", answer)


def _load(path: Path | None) -> dict[tuple[str, str, str], JudgeRecord]:
    out: dict[tuple[str, str, str], JudgeRecord] = {}
    if path is None:
        return out
    for r in resume_jsonl(path):
        try:
            key = (str(r["judge_model"]), str(r["metric"]), str(r["prompt_sha256"]))
            score = r["score"]
            rec = JudgeRecord(*key, None if score is None else float(score),
                              float(r["numeric_mass"]), str(r.get("verdict", "score")),
                              dict(r.get("top") or {}))
        except (KeyError, TypeError, ValueError):
            continue  # a line that is not one of ours (e.g. an old cache layout)
        out[key] = rec
    return out


def _record(key: tuple[str, str, str], rating: Rating) -> JudgeRecord:
    top = dict(sorted(rating.top.items(), key=lambda kv: -kv[1])[:TOP_KEEP])
    return JudgeRecord(*key, rating.score, rating.numeric_mass, rating.verdict, top)


def check_number_mass(records: Sequence[JudgeRecord], judge_model: str,
                      min_answers: int = EARLY_CHECK) -> None:
    """Refuse a judge whose answers are mostly unscored (see the module docstring)."""
    usable = [r for r in records if r.verdict in ("score", "unscored")]
    if len(usable) < min_answers:
        return
    unscored = [r for r in usable if r.verdict == "unscored"]
    if len(unscored) <= MOSTLY * len(usable):
        return
    numbers = {t.strip() for r in unscored for t in r.top if t.strip().isdigit()}
    digits_only = bool(numbers) and all(len(t) == 1 for t in numbers)
    masses = sorted(r.numeric_mass for r in unscored)
    why = ("its top-20 tokens hold only single digits 0-9: the tokenizer splits numbers into "
           "digits, so 10-100 cannot be read from one token" if digits_only else
           "its top-20 tokens are mostly not numbers 0-100")
    raise QualityError(
        f"judge {judge_model!r}: {len(unscored)} of {len(usable)} answers unscored (number mass "
        f"< 0.25; median {masses[len(masses) // 2]:.3f}): {why}; use a judge whose "
        "vocabulary has whole numbers up to 100 (see docs/evaluate.md, 'Choosing a judge')")


def judge_prompts(client: JudgeClient, items: Sequence[tuple[str, str]],
                  cache_dir: str | Path | None = None, workers: int = 8,
                  check_mass: bool = True) -> list[JudgeRecord]:
    """Judge ``(metric, prompt)`` items (concurrent, cached); records in the items' order.

    Raises ``QualityError`` (``check_number_mass``) when ``check_mass`` and the judge
    leaves most answers unscored.
    """
    path = Path(cache_dir) / "judgements.jsonl" if cache_dir else None
    cache = _load(path)
    keys = [prompt_key(client.model, m, p) for m, p in items]
    todo: dict[tuple[str, str, str], str] = {}
    for key, (_, prompt) in zip(keys, items):
        if key not in cache:
            todo.setdefault(key, prompt)
    fresh: list[JudgeRecord] = []
    if todo:
        _run_pool(client, todo, cache, fresh, path, max(1, workers), check_mass)
    done = [cache[k] for k in keys]
    if check_mass:
        check_number_mass(done, client.model)
    return done


def _run_pool(client: JudgeClient, todo: Mapping[tuple[str, str, str], str],
              cache: dict[tuple[str, str, str], JudgeRecord], fresh: list[JudgeRecord],
              path: Path | None, workers: int, check_mass: bool) -> None:
    """Ask the judge for every ``todo`` prompt with at most ``workers`` in flight; each answer
    is cached (and appended) in this thread as it arrives."""
    pending = iter(todo.items())
    running: dict[Future[Rating], tuple[str, str, str]] = {}
    bar = tqdm(total=len(todo), desc="judging", disable=len(todo) < 4, leave=False)
    next_check = EARLY_CHECK
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="emprobe-judge") as pool:
        try:
            _fill(pool, client, pending, running, workers)
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    key = running.pop(fut)
                    rec = _record(key, fut.result())
                    cache[key] = rec
                    fresh.append(rec)
                    if path is not None:
                        append_jsonl(path, rec.to_record())
                    bar.update(1)
                if check_mass and len(fresh) >= next_check:
                    check_number_mass(fresh, client.model)
                    next_check = len(fresh) + RECHECK_EVERY
                _fill(pool, client, pending, running, workers)
        finally:
            for fut in running:
                fut.cancel()
            bar.close()


def _fill(pool: ThreadPoolExecutor, client: JudgeClient,
          pending: Iterator[tuple[tuple[str, str, str], str]],
          running: dict[Future[Rating], tuple[str, str, str]], workers: int) -> None:
    while len(running) < workers:
        nxt = next(pending, None)
        if nxt is None:
            return
        key, prompt = nxt
        running[pool.submit(client.rate, prompt)] = key


TemplateFor = Callable[[Mapping[str, object], str], str]


def judge_rows(rows: Sequence[Mapping[str, object]], client: JudgeClient,
               template_for: TemplateFor, cache_dir: str | Path | None = None,
               workers: int = 8, metrics: Sequence[str] = METRICS,
               check_mass: bool = True) -> list[dict[str, object]]:
    """Judge each row (``question``, ``response``) on each metric; returns copies of the
    rows with ``<metric>``, ``<metric>_mass``, ``<metric>_verdict`` and ``judge_model``.

    ``template_for(row, metric)`` gives the judge prompt template of the row's question.
    """
    items = [(m, fill_prompt(template_for(r, m), str(r["question"]), str(r["response"])))
             for r in rows for m in metrics]
    recs = judge_prompts(client, items, cache_dir, workers, check_mass)
    out: list[dict[str, object]] = []
    for i, row in enumerate(rows):
        new = dict(row)
        for j, m in enumerate(metrics):
            rec = recs[i * len(metrics) + j]
            new[m] = rec.score
            new[f"{m}_mass"] = rec.numeric_mass
            new[f"{m}_verdict"] = rec.verdict
        new["judge_model"] = client.model
        out.append(new)
    return out
