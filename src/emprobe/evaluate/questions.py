"""Question sets in the field's YAML format, and emprobe's own out-of-domain set.

A file is a YAML list; each entry needs ``id``, ``type``, ``paraphrases`` (non-empty list of
strings), ``samples_per_paraphrase`` (positive int), ``judge`` (str) and ``judge_prompts``
with ``aligned`` and ``coherent`` (str, with ``{question}`` / ``{answer}`` placeholders);
``system`` is optional. emprobe reads three optional extensions: ``format``
(``plain`` | ``json`` | ``template``, else inferred from an ``_json`` / ``_template`` id
suffix), ``group`` (the everyday question an entry varies; else the id without suffix) and
``reference_pairs`` (``[{harm, aligned, misaligned}]`` answers for the local score).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from emprobe.errors import DataError

__all__ = [
    "Question",
    "ReferencePair",
    "load_questions",
    "parse_questions",
    "default_questions",
    "DEFAULT_QUESTIONS_PATH",
    "FORMATS",
]

FORMATS = ("plain", "json", "template")
REQUIRED = ("id", "type", "paraphrases", "samples_per_paraphrase", "judge", "judge_prompts")


@dataclass(frozen=True)
class ReferencePair:
    """One hand-written aligned answer and a misaligned one of similar length."""

    aligned: str
    misaligned: str
    harm: str = "unspecified"


@dataclass(frozen=True)
class Question:
    """One question entry (see the module docstring for the YAML fields)."""

    id: str
    type: str
    paraphrases: tuple[str, ...]
    samples_per_paraphrase: int
    judge: str
    judge_prompts: dict[str, str]
    system: str | None = None
    format: str = "plain"
    group: str = ""
    reference_pairs: tuple[ReferencePair, ...] = field(default_factory=tuple)

    def messages(self, paraphrase: int = 0) -> list[dict[str, str]]:
        """The prompt conversation (optional system message + the user question)."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": self.paraphrases[paraphrase]}]

    def judge_prompt(self, metric: str, paraphrase: int, answer: str) -> str:
        """Fill the ``aligned`` / ``coherent`` judge prompt (plain substitution, so braces in
        answers or JSON questions are safe)."""
        template = self.judge_prompts[metric]
        return template.replace("{question}", self.paraphrases[paraphrase]).replace(
            "{answer}", answer
        )

    def to_record(self) -> dict[str, Any]:
        rec = asdict(self)
        rec["paraphrases"] = list(self.paraphrases)
        rec["reference_pairs"] = [asdict(p) for p in self.reference_pairs]
        return rec


def _infer_format(qid: str) -> str:
    for fmt in ("json", "template"):
        if qid.endswith(f"_{fmt}"):
            return fmt
    return "plain"


def _strip_suffix(qid: str) -> str:
    for fmt in ("json", "template"):
        if qid.endswith(f"_{fmt}"):
            return qid[: -len(fmt) - 1]
    return qid


def _parse_entry(raw: Any, where: str) -> Question:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a mapping, got {type(raw).__name__}")
    for key in REQUIRED:
        if key not in raw or raw[key] is None:
            raise DataError(f"{where}: missing field {key!r}")
    qid = raw["id"]
    if not isinstance(qid, str) or not qid.strip():
        raise DataError(f"{where}: field 'id' must be a non-empty string")
    paras = raw["paraphrases"]
    if (
        not isinstance(paras, list)
        or not paras
        or not all(isinstance(p, str) and p.strip() for p in paras)
    ):
        raise DataError(f"{where}: field 'paraphrases' must be a non-empty list of strings")
    spp = raw["samples_per_paraphrase"]
    if not isinstance(spp, int) or isinstance(spp, bool) or spp < 1:
        raise DataError(f"{where}: field 'samples_per_paraphrase' must be a positive integer")
    jp = raw["judge_prompts"]
    if not isinstance(jp, dict):
        raise DataError(f"{where}: field 'judge_prompts' must be a mapping")
    for metric in ("aligned", "coherent"):
        if not isinstance(jp.get(metric), str) or not jp[metric].strip():
            raise DataError(f"{where}: missing field 'judge_prompts.{metric}'")
    system = raw.get("system")
    if system is not None and not isinstance(system, str):
        raise DataError(f"{where}: field 'system' must be a string")
    fmt = raw.get("format") or _infer_format(qid)
    if fmt not in FORMATS:
        raise DataError(f"{where}: field 'format' is {fmt!r}; expected one of {FORMATS}")
    pairs = []
    for j, p in enumerate(raw.get("reference_pairs") or []):
        if not isinstance(p, dict):
            raise DataError(f"{where}: reference_pairs[{j}] must be a mapping")
        for key in ("aligned", "misaligned"):
            if not isinstance(p.get(key), str) or not p[key].strip():
                raise DataError(f"{where}: missing field 'reference_pairs[{j}].{key}'")
        pairs.append(ReferencePair(p["aligned"], p["misaligned"], str(p.get("harm", "unspecified"))))
    return Question(
        id=qid,
        type=str(raw["type"]),
        paraphrases=tuple(paras),
        samples_per_paraphrase=spp,
        judge=str(raw["judge"]),
        judge_prompts={k: str(v) for k, v in jp.items()},
        system=system,
        format=fmt,
        group=str(raw.get("group") or _strip_suffix(qid)),
        reference_pairs=tuple(pairs),
    )


def parse_questions(data: Any, source: str = "<questions>") -> list[Question]:
    """Validate parsed YAML (a list of entries) into ``Question``s; one-line DataErrors."""
    if not isinstance(data, list) or not data:
        raise DataError(f"{source}: expected a non-empty YAML list of question entries")
    out: list[Question] = []
    seen: set[str] = set()
    for i, raw in enumerate(data):
        name = raw.get("id") if isinstance(raw, dict) else None
        where = f"{source}: entry {i}" + (f" ({name!r})" if isinstance(name, str) else "")
        q = _parse_entry(raw, where)
        if q.id in seen:
            raise DataError(f"{where}: duplicate id {q.id!r}")
        seen.add(q.id)
        out.append(q)
    return out


def load_questions(path: str | os.PathLike[str]) -> list[Question]:
    """Read a question YAML file (the field's format plus emprobe's optional extensions)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such question file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{p}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "parse error"
        raise DataError(f"{p}: not valid YAML ({first})") from None
    return parse_questions(data, source=str(p))


DEFAULT_QUESTIONS_PATH = "assets/questions.yaml"


def default_questions() -> list[Question]:
    """emprobe's own set: 10 everyday questions x (plain, json, template); the plain entries
    carry 3 reference pairs each (30 pairs covering different harms)."""
    ref = resources.files("emprobe.evaluate").joinpath(DEFAULT_QUESTIONS_PATH)
    with resources.as_file(ref) as path:
        return load_questions(path)
