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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from emprobe.errors import DataError, EmprobeError, LimitError
from emprobe.validate import (
    MAX_JSON_DEPTH,
    MAX_YAML_ALIASES,
    MAX_YAML_NODES,
    _check_flow_depth,
    _check_yaml_expansion,
    check_finite_tree,
    excerpt,
    load_yaml,
    one_line,
    read_bytes_limited,
)

if TYPE_CHECKING:
    import yaml

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
MAX_QUESTION_FILE_BYTES = 16 * 2**20
MAX_SAMPLES_PER_PARAPHRASE = 100_000


def _text(raw: Mapping[str, object], key: str, where: str, non_empty: bool = True) -> str:
    """A string field, never coerced (a number or list where text belongs is an error)."""
    value = raw[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got "
                        f"{type(value).__name__} {excerpt(value, 40)}")
    if non_empty and not value.strip():
        raise DataError(f"{where}: field {key!r} must be a non-empty string")
    return value


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

    def to_record(self) -> dict[str, object]:
        rec: dict[str, object] = asdict(self)
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


def _parse_entry(raw: object, where: str) -> Question:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a mapping, got {type(raw).__name__}")
    for key in REQUIRED:
        if key not in raw or raw[key] is None:
            raise DataError(f"{where}: missing field {key!r}")
    check_finite_tree(raw, where, error=DataError)
    qid = _text(raw, "id", where)
    qtype = _text(raw, "type", where)
    judge = _text(raw, "judge", where)
    paras = raw["paraphrases"]
    if (
        not isinstance(paras, list)
        or not paras
        or not all(isinstance(p, str) and p.strip() for p in paras)
    ):
        raise DataError(f"{where}: field 'paraphrases' must be a non-empty list of strings")
    spp = raw["samples_per_paraphrase"]
    if (not isinstance(spp, int) or isinstance(spp, bool) or spp < 1
            or spp > MAX_SAMPLES_PER_PARAPHRASE):
        raise DataError(f"{where}: field 'samples_per_paraphrase' must be an integer in "
                        f"1..{MAX_SAMPLES_PER_PARAPHRASE}, got {excerpt(spp, 40)}")
    jp = raw["judge_prompts"]
    if not isinstance(jp, dict):
        raise DataError(f"{where}: field 'judge_prompts' must be a mapping")
    for metric, template in jp.items():
        if not isinstance(metric, str) or not isinstance(template, str):
            raise DataError(f"{where}: judge_prompts entries must map a metric name to a "
                            f"prompt string, got {excerpt(metric, 30)}: "
                            f"{type(template).__name__}")
    for metric in ("aligned", "coherent"):
        if not isinstance(jp.get(metric), str) or not jp[metric].strip():
            raise DataError(f"{where}: missing field 'judge_prompts.{metric}'")
    system = raw.get("system")
    if system is not None and not isinstance(system, str):
        raise DataError(f"{where}: field 'system' must be a string")
    fmt = raw.get("format")
    if fmt is None:
        fmt = _infer_format(qid)
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise DataError(f"{where}: field 'format' is {excerpt(fmt, 40)}; expected one of "
                        f"{FORMATS}")
    group = raw.get("group")
    if group is None:
        group = _strip_suffix(qid)
    elif not isinstance(group, str) or not group.strip():
        raise DataError(f"{where}: field 'group' must be a non-empty string, got "
                        f"{excerpt(group, 40)}")
    ref = raw.get("reference_pairs")
    if ref is not None and not isinstance(ref, list):
        raise DataError(f"{where}: field 'reference_pairs' must be a list")
    pairs = []
    for j, p in enumerate(ref or []):
        if not isinstance(p, dict):
            raise DataError(f"{where}: reference_pairs[{j}] must be a mapping")
        for key in ("aligned", "misaligned"):
            if not isinstance(p.get(key), str) or not p[key].strip():
                raise DataError(f"{where}: missing field 'reference_pairs[{j}].{key}'")
        harm = p.get("harm", "unspecified")
        if not isinstance(harm, str):
            raise DataError(f"{where}: reference_pairs[{j}].harm must be a string, got "
                            f"{excerpt(harm, 40)}")
        pairs.append(ReferencePair(p["aligned"], p["misaligned"], harm))
    return Question(
        id=qid,
        type=qtype,
        paraphrases=tuple(paras),
        samples_per_paraphrase=spp,
        judge=judge,
        judge_prompts=dict(jp),
        system=system,
        format=fmt,
        group=group,
        reference_pairs=tuple(pairs),
    )


def parse_questions(data: object, source: str = "<questions>") -> list[Question]:
    """Validate parsed YAML (a list of entries) into ``Question``s; one-line DataErrors."""
    if not isinstance(data, list) or not data:
        raise DataError(f"{source}: expected a non-empty YAML list of question entries")
    out: list[Question] = []
    seen: set[str] = set()
    for i, raw in enumerate(data):
        name = raw.get("id") if isinstance(raw, dict) else None
        where = f"{source}: entry {i}" + (f" ({excerpt(name, 40)})" if isinstance(name, str)
                                          else "")
        q = _parse_entry(raw, where)
        if q.id in seen:
            raise DataError(f"{where}: duplicate id {q.id!r}")
        seen.add(q.id)
        out.append(q)
    return out


def load_questions(path: str | os.PathLike[str]) -> list[Question]:
    """Read a question YAML file (the field's format plus emprobe's optional extensions).

    The file is at most 16 MiB, parsed with a safe loader that refuses python tags, more than
    ``emprobe.validate.MAX_YAML_ALIASES`` aliases and documents that expand too far; every
    field is type-checked (strings are never coerced).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such question file")
    raw = read_bytes_limited(p, MAX_QUESTION_FILE_BYTES, error=DataError)
    return parse_questions(load_question_yaml(raw, str(p)), source=str(p))


def _count_aliases(root: yaml.Node, where: str) -> None:
    """Refuse more than ``MAX_YAML_ALIASES`` aliases: in a composed node graph each alias is
    one more edge into a node already reached (iterative walk)."""
    import yaml

    seen: set[int] = set()
    stack = [root]
    aliases = 0
    while stack:
        node = stack.pop()
        if id(node) in seen:
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise LimitError(f"{where}: more than {MAX_YAML_ALIASES} YAML aliases")
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(c for pair in node.value for c in pair)


def load_question_yaml(raw: bytes, where: str) -> object:
    """Parse question YAML with libyaml's C loader (``yaml.CSafeLoader``) when PyYAML has it,
    under the same limits as ``emprobe.validate.load_yaml`` (which it falls back to): the
    caller's byte limit, at most ``MAX_YAML_ALIASES`` aliases, at most ``MAX_YAML_NODES``
    nodes once aliases are expanded, ``MAX_JSON_DEPTH`` levels, no python tags."""
    import yaml

    loader_cls = getattr(yaml, "CSafeLoader", None)
    if loader_cls is None:
        return load_yaml(raw, where, error=DataError)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    _check_flow_depth(text, where)
    loader = loader_cls(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _count_aliases(node, where)
        _check_yaml_expansion(node, MAX_YAML_NODES, MAX_JSON_DEPTH, where)
        return loader.construct_document(node)
    except EmprobeError:
        raise
    except RecursionError:
        raise LimitError(f"{where}: YAML nested deeper than the parser can follow") from None
    except yaml.YAMLError as exc:
        raise DataError(f"{where}: not valid YAML ({one_line(exc, 120) or 'parse error'})"
                        ) from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise DataError(f"{where}: YAML value not readable ({one_line(exc, 120)})") from None
    finally:
        loader.dispose()


DEFAULT_QUESTIONS_PATH = "assets/questions.yaml"


def default_questions() -> list[Question]:
    """emprobe's own set: 10 everyday questions x (plain, json, template); the plain entries
    carry 3 reference pairs each (30 pairs covering different harms)."""
    ref = resources.files("emprobe.evaluate").joinpath(DEFAULT_QUESTIONS_PATH)
    with resources.as_file(ref) as path:
        return load_questions(path)
