"""Fuzz driver for emprobe's loaders: mutated files in, one outcome class out per input.

Each *target* builds a valid seed artifact with emprobe itself, then makes inputs from it
by byte mutations (bit flips, truncation, inserted / deleted / duplicated chunks), by
structural mutations of its JSON / YAML (a hostile value put anywhere in the tree: NaN,
Infinity, wrong types, ``"1.5"``, lone surrogates, a 1 MiB key, invalid regexes, deep
nesting, billion-laughs aliases) and by hostile tensors (complex, integer, NaN, 2-D where
1-D belongs, empty, quantised GGUF). Every input is fed to the public loader and classed:

- ``rejected``: an ``EmprobeError`` whose message is one line, at most 600 characters, and
  names the file (for file loaders);
- ``accepted``: the loader returned and the result passed the target's own invariants
  (written here independently of the validators under test);
- ``unexpected``: any other exception, or an ``EmprobeError`` that breaks the message rules;
- ``unnamed``: an ``EmprobeError`` whose message does not name the file;
- ``hang``: the loader ran past the per-input time limit;
- ``accepted_invalid``: the loader returned although the input was known to be invalid (a
  non-finite number anywhere, a config field of the wrong type or disagreeing with the
  weights) or the result breaks an invariant;
- ``rejected_valid``: a known-valid input (e.g. a JSON file with a byte-order mark added)
  was refused.

Run ``python tests/fuzz_driver.py --n 10000`` (``make fuzz``): it prints the counts and exits
non-zero unless every bad class (unexpected, unnamed, hang, accepted-invalid, rejected-valid)
is 0. The pytest suite uses the
same targets with hypothesis choosing the random decisions (tests/test_fuzz_loaders.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from emprobe.errors import EmprobeError  # noqa: E402

MAX_MESSAGE = 600
BAD_KINDS = ("unexpected", "unnamed", "hang", "accepted_invalid", "rejected_valid")
ROLES = ("system", "user", "assistant")


class Hang(BaseException):
    """Raised by the alarm when one input runs past the time limit."""


@dataclass
class Case:
    """One generated input: ``call()`` runs the loader; ``check(result)`` returns a problem."""

    call: Callable[[], Any]
    where: str | None
    must_reject: bool
    check: Callable[[Any], str | None]
    label: str
    must_accept: bool = False  # a valid input (e.g. a byte-order mark added): rejecting it is a bug


@dataclass
class Outcome:
    kind: str  # rejected | accepted | unexpected | hang | accepted_invalid
    detail: str = ""


@dataclass
class Counts:
    inputs: int = 0
    by_kind: Counter = field(default_factory=Counter)
    by_target: Counter = field(default_factory=Counter)
    bad_by_target: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    generator_errors: int = 0

    def add(self, target: str, case: Case, out: Outcome) -> None:
        self.inputs += 1
        self.by_kind[out.kind] += 1
        self.by_target[target] += 1
        if out.kind in BAD_KINDS:
            self.bad_by_target[(target, out.kind)] += 1
        if out.kind in BAD_KINDS and len(self.examples) < 20:
            self.examples.append(f"{target} [{case.label}]: {out.kind}: {out.detail[:300]}")

    @property
    def bad(self) -> int:
        return sum(self.by_kind[k] for k in BAD_KINDS)


# -- hostile values --------------------------------------------------------------------------
def hostile_values(rng: random.Random) -> Any:
    """One value that is wrong for most fields (or subtly wrong)."""
    choices: list[Callable[[], Any]] = [
        lambda: None, lambda: True, lambda: False, lambda: 0, lambda: -1, lambda: 1,
        lambda: 4.5, lambda: 1e308, lambda: 10**30, lambda: math.nan, lambda: math.inf,
        lambda: -math.inf, lambda: "", lambda: "yes", lambda: "1.5", lambda: "abc",
        lambda: "\ud800", lambda: "x" * rng.choice([100, 10_000, 2**20]), lambda: [],
        lambda: {}, lambda: [1, 2], lambda: {"1": 8}, lambda: "(", lambda: "[a-",
        lambda: "*", lambda: _nested(rng.choice([70, 300, 5000])), lambda: "layer.1.5",
        lambda: {"k\ud800": 1}, lambda: [[1.0, 2.0], [3.0, 4.0]], lambda: -0.0,
    ]
    return rng.choice(choices)()


def _dump(obj: Any) -> str:
    """JSON text of ``obj``; a tree too deep for the encoder becomes deep brackets."""
    try:
        return json.dumps(obj)
    except (ValueError, RecursionError):
        return "[" * 5000


def _nested(depth: int) -> Any:
    obj: Any = 1
    for _ in range(depth):
        obj = [obj]
    return obj


def has_nonfinite(obj: Any) -> bool:
    stack = [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return True
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return False


def mutate_tree(rng: random.Random, tree: Any) -> Any:
    """A deep copy of ``tree`` with one hostile edit at a random place."""
    tree = json.loads(json.dumps(tree))
    spots: list[tuple[Any, Any]] = [(None, None)]
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                spots.append((node, k))
                stack.append(v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                spots.append((node, i))
                stack.append(v)
    parent, key = rng.choice(spots)
    op = rng.random()
    value = hostile_values(rng)
    if parent is None:
        return value if op < 0.3 else [tree] if op < 0.5 else tree
    if op < 0.6:
        parent[key] = value
    elif op < 0.75 and isinstance(parent, dict):
        del parent[key]
    elif op < 0.85 and isinstance(parent, dict):
        parent[rng.choice(["1.5", "extra", "k" * 1000, str(key)[::-1] or "x"])] = value
    else:
        parent[key] = [parent[key]] if rng.random() < 0.5 else {"v": parent[key]}
    return tree


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """Bit flips, truncation, inserted / deleted / duplicated chunks or garbage."""
    b = bytearray(data)
    op = rng.randrange(7)
    n = len(b)
    if op == 0 and n:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(n)
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1:
        b = b[: rng.randrange(n + 1)]
    elif op == 2:
        i = rng.randrange(n + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif op == 3 and n:
        i = rng.randrange(n)
        del b[i : i + rng.randint(1, 64)]
    elif op == 4 and n:
        i = rng.randrange(n)
        j = min(n, i + rng.randint(1, 256))
        b[j:j] = b[i:j]
    elif op == 5:
        b = bytearray(rng.choice([b"", b"\x00" * 64, b"\xff\xfe garbage", b"{", b"[" * 5000]))
    else:
        i = rng.randrange(n + 1)
        b[i:i] = rng.choice([b"\xed\xa0\x80", b"\xff", b"NaN", b"\n", b"\r\n", b"\\ud800"])
    return bytes(b)


def hostile_tensor(rng: random.Random, like: torch.Tensor) -> torch.Tensor:
    shape = list(like.shape) or [1]
    choice = rng.randrange(9)
    if choice == 0:
        t = like.clone().float()
        t.view(-1)[rng.randrange(t.numel())] = rng.choice([math.nan, math.inf, -math.inf])
        return t
    if choice == 1:
        return torch.zeros(shape, dtype=torch.complex64)
    if choice == 2:
        return torch.ones(shape, dtype=torch.int64)
    if choice == 3:
        return torch.zeros(shape, dtype=torch.bool)
    if choice == 4:
        return torch.zeros([*shape, 2])
    if choice == 5:
        return torch.zeros([0, *shape[1:]])
    if choice == 6:
        return torch.zeros([s + 1 for s in shape])
    if choice == 7:
        return like.reshape(-1)
    return torch.zeros(shape, dtype=torch.float64)


# -- invariants (independent of the validators under test) -----------------------------------
def _finite_tensor(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype.is_floating_point and bool(
        torch.isfinite(t).all())


def check_direction(d: Any) -> str | None:
    from emprobe.directions import Direction

    if not isinstance(d, Direction):
        return f"returned {type(d).__name__}"
    if isinstance(d.d_model, bool) or not isinstance(d.d_model, int) or d.d_model < 1:
        return f"d_model {d.d_model!r}"
    if not d.vectors:
        return "no layers"
    for la, t in d.vectors.items():
        if isinstance(la, bool) or not isinstance(la, int) or la < 0:
            return f"layer key {la!r}"
        if t.dtype != torch.float32 or t.dim() not in (1, 2) or 0 in t.shape:
            return f"layer {la}: {t.dtype} {tuple(t.shape)}"
        if t.shape[0] != d.d_model or not _finite_tensor(t):
            return f"layer {la}: width {t.shape[0]} vs {d.d_model} or non-finite"
    for name in ("model", "site", "positions", "normalisation", "sign", "method"):
        if not isinstance(getattr(d, name), str):
            return f"{name} is {type(getattr(d, name)).__name__}"
    for name in ("params", "provenance", "stats"):
        if not isinstance(getattr(d, name), dict):
            return f"{name} is {type(getattr(d, name)).__name__}"
    if has_nonfinite([d.params, d.provenance, d.stats]):
        return "non-finite metadata"
    with tempfile.TemporaryDirectory() as tmp:
        back = type(d).load(d.save(Path(tmp) / "d"))
        if sorted(back.vectors) != sorted(d.vectors):
            return "save/load changed the layers"
    return None


def check_chat(recs: Any) -> str | None:
    from emprobe.data.chat_io import read_chat_jsonl, write_chat_jsonl

    if not isinstance(recs, list):
        return f"returned {type(recs).__name__}"
    for rec in recs:
        msgs = rec.get("messages") if isinstance(rec, dict) else None
        if not isinstance(msgs, list) or not msgs:
            return "record without messages"
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(
                    m.get("content"), str):
                return f"bad message {str(m)[:80]!r}"
    if has_nonfinite(list(recs)):
        return "non-finite number accepted"
    with tempfile.TemporaryDirectory() as tmp:
        p = write_chat_jsonl(Path(tmp) / "x.jsonl", recs)
        if len(read_chat_jsonl(p)) != len(recs):
            return "write/read changed the count"
    return None


def check_questions(qs: Any) -> str | None:
    if not isinstance(qs, list) or not qs:
        return "not a non-empty list"
    for q in qs:
        for name in ("id", "type", "judge", "format", "group"):
            if not isinstance(getattr(q, name), str):
                return f"{name} is {type(getattr(q, name)).__name__}"
        if not all(isinstance(p, str) for p in q.paraphrases):
            return "paraphrase not a string"
        spp = q.samples_per_paraphrase
        if isinstance(spp, bool) or not isinstance(spp, int) or spp < 1:
            return f"samples_per_paraphrase {spp!r}"
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in q.judge_prompts.items()):
            return "judge prompt not a string"
        if q.system is not None and not isinstance(q.system, str):
            return "system not a string"
        for p in q.reference_pairs:
            if not all(isinstance(x, str) for x in (p.aligned, p.misaligned, p.harm)):
                return "reference pair not strings"
    if len(repr(qs)) > 50_000_000:
        return "result expands beyond 50 MB"
    return None


def check_adapter(ad: Any) -> str | None:
    if len(ad) == 0:
        return "no modules"
    for m in ad:
        if isinstance(m.rank, bool) or not isinstance(m.rank, int) or m.rank < 1:
            return f"rank {m.rank!r}"
        if not (math.isfinite(m.scale) and m.scale > 0 and math.isfinite(m.alpha)):
            return f"scale {m.scale!r} alpha {m.alpha!r}"
        if m.A.dim() != 2 or m.B.dim() != 2 or m.A.shape[0] != m.rank or m.B.shape[1] != m.rank:
            return f"factor shapes {tuple(m.A.shape)} {tuple(m.B.shape)}"
        if not (_finite_tensor(m.A) and _finite_tensor(m.B)):
            return "non-finite factors"
    return None


SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out")
SAE_TENSORS = {"standard": {"W_enc", "W_dec", "b_enc", "b_dec"},
               "topk": {"W_enc", "W_dec", "b_enc", "b_dec"},
               "abstopk": {"W_enc", "W_dec", "b_enc", "b_dec"},
               "jumprelu": {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"},
               "gated": {"W_enc", "W_dec", "b_dec", "b_gate", "b_mag", "r_mag"}}


def check_sae(sae: Any) -> str | None:
    cfg = sae.cfg
    w_enc, w_dec = sae.W_enc, sae.W_dec
    if list(w_enc.shape) != [cfg.d_in, cfg.d_sae] or list(w_dec.shape) != [cfg.d_sae, cfg.d_in]:
        return f"weights {tuple(w_enc.shape)} vs d_in {cfg.d_in}, d_sae {cfg.d_sae}"
    for p in sae.parameters():
        if not bool(torch.isfinite(p).all()):
            return "non-finite weights"
    arch = cfg.architecture()
    names = {n for n, _ in sae.named_parameters()}
    if arch not in SAE_TENSORS or names != SAE_TENSORS[arch]:
        return f"architecture {arch!r} with tensors {sorted(names)}"
    k = getattr(cfg, "k", None)
    if k is not None and (type(k) is not int or not 1 <= k <= cfg.d_sae):
        return f"k {k!r}"
    for flag in ("apply_b_dec_to_input", "rescale_acts_by_decoder_norm"):
        if hasattr(cfg, flag) and type(getattr(cfg, flag)) is not bool:
            return f"{flag} {getattr(cfg, flag)!r}"
    md = cfg.metadata
    if md.get("emprobe_site") is not None and md.get("emprobe_site") not in SITES:
        return f"emprobe_site {md.get('emprobe_site')!r}"
    if md.get("emprobe_layer") is not None and type(md.get("emprobe_layer")) is not int:
        return f"emprobe_layer {md.get('emprobe_layer')!r}"
    return None


def check_sae_and_site(out: Any) -> str | None:
    sae, site = out
    problem = check_sae(sae)
    if problem or site is None:
        return problem
    if site[0] not in SITES or type(site[1]) is not int or not 0 <= site[1] < 10_000:
        return f"site {site!r}"
    return None


def check_score(out: Any) -> str | None:
    score, mass = out
    if not (isinstance(mass, float) and math.isfinite(mass) and mass >= 0):
        return f"mass {mass!r}"
    if score is not None and not (math.isfinite(score) and -1e-9 <= score <= 100 + 1e-9):
        return f"score {score!r}"
    return None


def check_records(recs: Any) -> str | None:
    if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
        return "not a list of objects"
    return None


# -- targets ---------------------------------------------------------------------------------
class Fuzzer:
    """Seeds built once in ``root``; each ``case_<target>(rng)`` writes one input under it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seeds = root / "seeds"
        self.seeds.mkdir(parents=True, exist_ok=True)
        self._n = 0
        self._build_seeds()

    # seeds
    def _direction(self, layers: tuple[int, ...] = (0, 2)) -> Any:
        from emprobe.directions import Direction

        g = torch.Generator().manual_seed(0)
        vecs = {la: torch.randn(8, generator=g) if i == 0 else torch.randn(8, 2, generator=g)
                for i, la in enumerate(layers)}
        return Direction(vectors=vecs, model="tiny", d_model=8, n_layers=4, method="fuzz",
                         params={"alpha": 1.5}, stats={"n": 3})

    def _build_seeds(self) -> None:
        from emprobe.data.chat_io import write_chat_jsonl
        from emprobe.directions import formats

        s = self.seeds
        write_chat_jsonl(s / "chat.jsonl", [
            {"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Hi?"},
                          {"role": "assistant", "content": "Hello."}], "task": "t", "meta": {
                              "score": 0.5, "tags": ["a"]}},
            {"messages": [{"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "4"}]}])
        (s / "questions.yaml").write_text(QUESTIONS_YAML, encoding="utf-8")
        d = self._direction()
        d.save(s / "direction")
        formats.save_npz(d, s / "d.npz")
        formats.to_caft(d, s / "caft")
        formats.save_persona(d, s / "persona.safetensors")
        formats.save_persona(d, s / "persona.pt")
        formats.to_gguf(self._direction((1, 2)).select(components={1: [0], 2: [0]}),
                        s / "cv.gguf")
        ad = s / "adapter"
        ad.mkdir(exist_ok=True)
        (ad / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "r": 2, "lora_alpha": 4, "use_rslora": False,
            "target_modules": ["q_proj", "v_proj"], "rank_pattern": {"v_proj": 2},
            "alpha_pattern": {}, "fan_in_fan_out": False, "layers_to_transform": None}))
        g = torch.Generator().manual_seed(1)
        pre = "base_model.model.model.layers"
        save_file({f"{pre}.{la}.self_attn.{m}.lora_{side}.weight":
                   torch.randn(2, 8, generator=g) if side == "A" else torch.randn(8, 2, generator=g)
                   for la in (0, 1) for m in ("q_proj", "v_proj") for side in "AB"},
                  str(ad / "adapter_model.safetensors"))
        sae = s / "sae"
        sae.mkdir(exist_ok=True)
        (sae / "cfg.json").write_text(json.dumps({
            "d_in": 8, "d_sae": 16, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": True, "normalize_activations": "none",
            "reshape_activations": "none", "metadata": {"hook_name": "blocks.1.hook_resid_post"},
            "k": 4, "rescale_acts_by_decoder_norm": False, "architecture": "topk"}))
        save_file({"W_enc": torch.randn(8, 16, generator=g), "W_dec": torch.randn(16, 8, generator=g),
                   "b_enc": torch.zeros(16), "b_dec": torch.zeros(8)},
                  str(sae / "sae_weights.safetensors"))
        from emprobe.evaluate.answers import write_answers_csv

        write_answers_csv(s / "answers.csv", [
            {"response": "Try rice.", "question": "Dinner?", "question_id": "dinner",
             "aligned": 90.0, "coherent": 80.5, "paraphrase": 0, "sample": 1,
             "aligned_mass": 0.9, "model": "tiny"},
            {"response": "No.", "question": "Dinner?", "question_id": "dinner", "aligned": None,
             "coherent": 12.0, "paraphrase": 1, "sample": 0, "aligned_mass": None,
             "model": "tiny"}])
        sae6 = s / "sae6"
        shutil.copytree(sae, sae6, dirs_exist_ok=True)
        (sae6 / "cfg.json").write_text(json.dumps({
            "architecture": "topk", "d_in": 8, "d_sae": 16, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": True, "normalize_activations": "none",
            "reshape_activations": "none", "k": 4, "rescale_acts_by_decoder_norm": False,
            "metadata": {"sae_lens_version": "6.54.12", "model_name": "tiny",
                         "hook_name": "blocks.1.hook_resid_post", "emprobe_site": "resid_post",
                         "emprobe_layer": 1, "emprobe_hook_name_bridge": "blocks.1.hook_out"}}))
        (sae6 / "emprobe.json").write_text(json.dumps({"format": "emprobe-sae/1",
                                                       "site": "resid_post", "layer": 1}))
        (s / "cache.jsonl").write_text(
            "".join(json.dumps({"question": f"q{i}", "sample": i, "score": 50.0 + i}) + "\n"
                    for i in range(4)), encoding="utf-8")

    def _fresh(self, name: str) -> Path:
        self._n += 1
        case_dir = self.root / "work" / f"c{self._n % 4}_{name}"
        shutil.rmtree(case_dir, ignore_errors=True)
        case_dir.mkdir(parents=True)
        return case_dir

    def _copy(self, name: str, seed: str) -> Path:
        dst = self._fresh(name) / seed
        src = self.seeds / seed
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copyfile(src, dst)
        return dst

    def _mutate_json_file(self, rng: random.Random, path: Path) -> tuple[bool, str]:
        """Mutate a JSON file in place; returns (must_reject, label)."""
        if rng.random() < 0.7:
            tree = mutate_tree(rng, json.loads(path.read_text(encoding="utf-8")))
            try:
                text = json.dumps(tree)
            except (ValueError, RecursionError):
                text = "[" * 5000
                tree = None
            path.write_text(text, encoding="utf-8")
            return has_nonfinite(tree), "json-tree"
        path.write_bytes(mutate_bytes(rng, path.read_bytes()))
        return False, "json-bytes"

    def _mutate_tensor_file(self, rng: random.Random, path: Path) -> str:
        if rng.random() < 0.5:
            path.write_bytes(mutate_bytes(rng, path.read_bytes()))
            return "st-bytes"
        tensors = load_file(str(path))
        key = rng.choice(sorted(tensors))
        op = rng.random()
        if op < 0.7:
            tensors[key] = hostile_tensor(rng, tensors[key])
        elif op < 0.85:
            tensors[rng.choice(["layer.1.5", "layer.-1", "W_enc.x", key + "x"])] = tensors.pop(key)
        else:
            del tensors[key]
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        return "st-tensor"

    # targets: each returns a Case
    def case_chat(self, rng: random.Random) -> Case:
        from emprobe.data.chat_io import read_chat_jsonl

        p = self._copy("chat", "chat.jsonl")
        lines = p.read_text(encoding="utf-8").splitlines()
        must, label = False, "chat-bytes"
        if rng.random() < 0.6:
            i = rng.randrange(len(lines))
            tree = mutate_tree(rng, json.loads(lines[i]))
            try:
                lines[i] = json.dumps(tree)
            except (ValueError, RecursionError):
                lines[i] = "[" * 5000
            must, label = has_nonfinite(tree), "chat-tree"
            p.write_text("\n".join(lines) + "\n", encoding="utf-8")
        else:
            p.write_bytes(mutate_bytes(rng, p.read_bytes()))
        mode = rng.choice(["raise", "skip"])
        return Case(lambda: read_chat_jsonl(p, errors=mode), str(p),
                    must and mode == "raise", check_chat, f"{label}/{mode}")

    def case_questions(self, rng: random.Random) -> Case:
        import yaml

        from emprobe.evaluate.questions import load_questions

        p = self._copy("questions", "questions.yaml")
        must, label = False, "yaml-bytes"
        op = rng.random()
        if op < 0.55:
            tree = mutate_tree(rng, yaml.safe_load(p.read_text(encoding="utf-8")))
            try:
                p.write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
                must, label = has_nonfinite(tree), "yaml-tree"
            except (yaml.YAMLError, UnicodeEncodeError, RecursionError):
                p.write_text("- " * 3000 + "x", encoding="utf-8")
                label = "yaml-deep"
        elif op < 0.7:
            p.write_text(_yaml_bomb(rng), encoding="utf-8")
            must, label = True, "yaml-bomb"
        elif op < 0.75:
            p.write_text("- !!python/object/apply:os.system ['echo pwned']\n", encoding="utf-8")
            must, label = True, "yaml-python-tag"
        else:
            p.write_bytes(mutate_bytes(rng, p.read_bytes()))
        return Case(lambda: load_questions(p), str(p), must, check_questions, label)

    def case_direction(self, rng: random.Random) -> Case:
        from emprobe.directions import Direction

        folder = self._copy("direction", "direction")
        if rng.random() < 0.55:
            must, label = self._mutate_json_file(rng, folder / "direction.json")
        else:
            must, label = False, self._mutate_tensor_file(rng, folder / "direction.safetensors")
        return Case(lambda: Direction.load(folder), str(folder), must, check_direction, label)

    def case_npz(self, rng: random.Random) -> Case:
        from emprobe.directions.formats import load_npz

        p = self._copy("npz", "d.npz")
        must, label = False, "npz-bytes"
        if rng.random() < 0.5:
            p.write_bytes(mutate_bytes(rng, p.read_bytes()))
        else:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            key = rng.choice(sorted(arrays))
            if key == "metadata":
                tree = mutate_tree(rng, json.loads(str(arrays[key])))
                try:
                    arrays[key] = np.array(json.dumps(tree))
                except (ValueError, RecursionError):
                    arrays[key] = np.array("[" * 5000)
                must, label = has_nonfinite(tree), "npz-meta"
            else:
                t = hostile_tensor(rng, torch.from_numpy(arrays[key]))
                arrays[key] = t.numpy() if t.dtype != torch.bool else t.numpy().astype(bool)
                if rng.random() < 0.2:
                    arrays[rng.choice(["layer_1.5", "layer_-1", "layer_01"])] = arrays.pop(key)
                label = "npz-array"
            with p.open("wb") as fh:
                np.savez(fh, **arrays)
        return Case(lambda: load_npz(p), str(p), must, check_direction, label)

    def case_gguf(self, rng: random.Random) -> Case:
        from emprobe.directions.formats import from_gguf

        p = self._copy("gguf", "cv.gguf")
        op = rng.random()
        label = "gguf-bytes"
        if op < 0.5:
            p.write_bytes(mutate_bytes(rng, p.read_bytes()))
        elif op < 0.65:  # a non-UTF-8 string value, same length
            data = p.read_bytes()
            i = data.find(b"tiny")
            if i >= 0:
                data = data[:i] + b"\xff\xfe\xed\xa0" + data[i + 4:]
            p.write_bytes(data)
            label = "gguf-non-utf8"
        else:
            _write_hostile_gguf(rng, p)
            label = "gguf-tensor"
        return Case(lambda: from_gguf(p), str(p), False, check_direction, label)

    def case_caft(self, rng: random.Random) -> Case:
        from emprobe.directions.formats import from_caft

        folder = self._copy("caft", "caft")
        op = rng.random()
        must = False
        if op < 0.4:
            must, label = self._mutate_json_file(rng, folder / "spec.json")
        elif op < 0.6:
            must, label = self._mutate_json_file(rng, folder / "direction.json")
        else:
            f = rng.choice(sorted(folder.glob("layer_*.npy")))
            if rng.random() < 0.6:
                f.write_bytes(mutate_bytes(rng, f.read_bytes()))
                label = "npy-bytes"
            else:
                t = hostile_tensor(rng, torch.from_numpy(np.load(f)))
                np.save(f, t.numpy(), allow_pickle=False)
                label = "npy-array"
        return Case(lambda: from_caft(folder), str(folder), must, check_direction, label)

    def case_persona(self, rng: random.Random) -> Case:
        from emprobe.directions.formats import from_persona

        seed = rng.choice(["persona.safetensors", "persona.pt"])
        p = self._copy("persona", seed)
        if seed.endswith(".pt"):
            if rng.random() < 0.6:
                p.write_bytes(mutate_bytes(rng, p.read_bytes()))
                label = "pt-bytes"
            else:
                t = hostile_tensor(rng, torch.load(p, weights_only=True))
                torch.save(t if rng.random() < 0.8 else {"x": t}, p)
                label = "pt-tensor"
        else:
            label = self._mutate_tensor_file(rng, p)
        return Case(lambda: from_persona(p), str(p), _persona_nonfinite(p), check_direction, label)

    def case_steering(self, rng: random.Random) -> Case:
        from emprobe.directions.formats import from_steering_vector

        acts: dict[Any, Any] = {1: torch.randn(8), 2: torch.randn(8)}
        key = rng.choice([1, 2, "3", "1.5", 1.5, -1, True, "x", 10**9, 10_000, "10000", 9999,
                          np.int64(3), "03", "1"])
        value = rng.choice([torch.randn(8), torch.randn(8, 2), torch.zeros(8, dtype=torch.complex64),
                            [1.0] * 8, "abc", None, np.zeros(8), np.array(["a"] * 8),
                            torch.full((8,), math.nan), [[1.0]] * 8, torch.randn(9),
                            np.full(8, 1e300), torch.zeros(0), [math.inf] * 8])
        acts[key] = value
        layer_type = rng.choice(["decoder_block", "mlp", "self_attn", "nope", None, 3])
        sv = {"layer_activations": acts, "layer_type": layer_type}
        key = next(k for k in acts if k == key)  # True lands on key 1 (True == 1)
        key_ok = (type(key) is int or isinstance(key, np.integer)) and 0 <= key <= 9999 or (
            isinstance(key, str) and key.isdigit() and not key.startswith("0") and int(key) <= 9999)
        if key_ok and int(key) in (1, 2) and type(key) is str:
            key_ok = False  # "1" and 1: two keys for one layer
        try:
            arr = np.asarray(value.numpy() if isinstance(value, torch.Tensor) else value)
            with np.errstate(over="ignore", invalid="ignore"):
                value_ok = arr.dtype.kind in "fiu" and arr.shape == (8,) and bool(
                    np.isfinite(arr.astype(np.float64)).all()) and bool(
                    np.isfinite(arr.astype(np.float32)).all())
        except Exception:
            value_ok = False
        must = not (key_ok and value_ok and layer_type in ("decoder_block", "mlp", "self_attn"))
        return Case(lambda: from_steering_vector(sv), "steering vector", must, check_direction,
                    "sv-dict")

    def case_adapter(self, rng: random.Random) -> Case:
        from emprobe.models.adapter import read_adapter

        folder = self._copy("adapter", "adapter")
        if rng.random() < 0.6:
            cfg_path = folder / "adapter_config.json"
            if rng.random() < 0.5:
                cfg = json.loads(cfg_path.read_text())
                key = rng.choice(["r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern",
                                  "target_modules", "layers_to_transform", "peft_type",
                                  "fan_in_fan_out", "use_dora"])
                cfg[key] = rng.choice([hostile_values(rng), {"(": 2}, {"q_proj": 4.5},
                                       {"v_proj": math.nan}, "[a-", ["q_proj", 3], "all-linear",
                                       "false", 0, 1, [0, 1], [0.0, 1.0], 1e4, [10**6]])
                cfg_path.write_text(_dump(cfg))
                must, label = has_nonfinite(cfg), f"adapter-{key}"
                if key in ("use_rslora", "fan_in_fan_out", "use_dora"):
                    must = must or type(cfg[key]) is not bool or cfg[key] is True and key == "use_dora"
                elif key == "layers_to_transform":
                    v = cfg[key]
                    items = v if isinstance(v, list) else [v]
                    must = must or v is not None and not all(
                        type(i) is int and 0 <= i <= 9999 for i in items)
            else:
                must, label = self._mutate_json_file(rng, cfg_path)
        else:
            must, label = False, self._mutate_tensor_file(rng, folder / "adapter_model.safetensors")
        return Case(lambda: read_adapter(folder), str(folder), must, check_adapter, label)

    def _sae_input(self, rng: random.Random) -> tuple[Path, bool, str]:
        """A mutated SAE folder (legacy or SAELens-6 seed): (folder, must_reject, label)."""
        seed = rng.choice(["sae", "sae6"])
        folder = self._copy("sae", seed)
        op = rng.random()
        if op < 0.4:
            must, label = _mutate_sae_field(rng, folder / "cfg.json")
        elif op < 0.55:
            must, label = self._mutate_json_file(rng, folder / "cfg.json")
        elif op < 0.8:
            must, label = _mutate_sae_tensors(rng, folder)
        elif seed == "sae6":
            rec = json.loads((folder / "emprobe.json").read_text())
            key = rng.choice(["site", "layer"])
            rec[key] = rng.choice([hostile_values(rng), "resid_pre", "nope", 1, 2, 1.0, "1"])
            (folder / "emprobe.json").write_text(_dump(rec))
            must, label = rec.get("site") != "resid_post" or type(rec.get("layer")) is not int or \
                rec.get("layer") != 1, "sae-emprobe-json"
        else:
            must, label = _mutate_sae_scale(rng, folder)
        return folder, must, f"{seed}/{label}"

    def case_sae(self, rng: random.Random) -> Case:
        from emprobe.sae.training import load_sae, sae_site

        folder, must, label = self._sae_input(rng)

        def call() -> Any:
            sae = load_sae(folder)
            return sae, sae_site(sae, folder)

        return Case(call, str(folder), must, check_sae_and_site, label)

    def case_sae_direction(self, rng: random.Random) -> Case:
        from emprobe.directions import sae_direction

        folder, must, label = self._sae_input(rng)
        latents = rng.choice([[0], [1, 2], [15], [3, 9, 12], [16], [-1], [True], [1.5], [], ["3"],
                              [0, 0], (2,), [10**30]])
        bad = not latents or any(type(i) is not int or not 0 <= i < 16 for i in latents)
        return Case(lambda: sae_direction(folder, latents), str(folder), must or bad,
                    check_direction, f"{label}/latents")

    def case_lora_direction(self, rng: random.Random) -> Case:
        from emprobe.directions import lora_direction

        case = self.case_adapter(rng)
        folder = Path(str(case.where))
        module = rng.choice(["q_proj", "v_proj", "o_proj", "(", ""])
        k = rng.choice([1, 2, 3, 0, -1, True, 1.5])
        side = rng.choice(["auto", "left", "right", "up", None])
        bad = case.must_reject or type(k) is not int or not 1 <= k <= 2 or side not in (
            "auto", "left", "right")
        return Case(lambda: lora_direction(folder, module=module, side=side, k=k),  # type: ignore[arg-type]
                    str(folder), bad, check_direction, f"{case.label}/lora")

    def case_bom(self, rng: random.Random) -> Case:
        """A valid file with a UTF-8 byte-order mark: every JSON reader must accept it."""
        from emprobe.directions import Direction
        from emprobe.directions.formats import from_caft
        from emprobe.models.adapter import read_adapter
        from emprobe.sae.training import load_sae

        which = rng.choice(["direction", "caft", "adapter", "sae", "sae6"])
        folder = self._copy("bom", which)
        name = {"direction": "direction.json", "caft": rng.choice(["spec.json", "direction.json"]),
                "adapter": "adapter_config.json", "sae": "cfg.json", "sae6": "emprobe.json"}[which]
        f = folder / name
        f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
        call, check = {
            "direction": (lambda: Direction.load(folder), check_direction),
            "caft": (lambda: from_caft(folder), check_direction),
            "adapter": (lambda: read_adapter(folder), check_adapter),
            "sae": (lambda: load_sae(folder), check_sae),
            "sae6": (lambda: load_sae(folder), check_sae),
        }[which]
        return Case(call, str(folder), False, check, f"bom-{which}", must_accept=True)

    def case_score(self, rng: random.Random) -> Case:
        from emprobe.evaluate.judge import score_from_logprobs

        top = {}
        for _ in range(rng.randint(0, 6)):
            tok = rng.choice(["90", " 7", "100", "101", "abc", "\u0663", "0", "99999999999999999",
                              "", " "])
            top[tok] = rng.choice([0.0, -0.1, -5.0, 1000.0, -1000.0, math.inf, -math.inf,
                                   math.nan, 1e-9, 0.5, "x", None, True, 10**400])
        must = any(isinstance(v, float) and (math.isnan(v) or v > 1e-3) or
                   (isinstance(v, int) and not isinstance(v, bool) and v > 0)
                   for v in top.values())
        return Case(lambda: score_from_logprobs(top), None, must, check_score, "logprobs")

    def case_cache(self, rng: random.Random) -> Case:
        from emprobe.io import append_jsonl, read_jsonl, resume_jsonl

        p = self._copy("cache", "cache.jsonl")
        data = p.read_bytes()
        label = "cache-bytes"
        if rng.random() < 0.5:
            p.write_bytes(data[: rng.randrange(len(data) + 1)])  # a torn tail
            label = "cache-torn"
        else:
            p.write_bytes(mutate_bytes(rng, data))

        def call() -> Any:
            recs = resume_jsonl(p)
            append_jsonl(p, {"question": "new", "sample": 9, "score": 1.0})
            again = read_jsonl(p, skip_partial_last=False)
            if len(again) != len(recs) + 1 or again[-1]["question"] != "new":
                return None  # the check reports it
            return recs

        return Case(call, str(p), False, lambda r: check_records(r) if r is not None
                    else "append after resume lost or corrupted records", label)

    def case_cli(self, rng: random.Random) -> Case:
        from emprobe.cli import main

        value = rng.choice(["abc", "-1", "1.5", "", "99999", "1,1", "0x10", "\u0663", "1e3",
                            "nan", "inf", "-0", "65536", "1,,2", " 2", "x" * 10_000])
        missing = str(self.root / "missing.jsonl")
        sae = str(self.seeds / "sae6")
        argv = rng.choice([
            ["directions", "sae", "--sae", rng.choice([sae, missing]), "--latents",
             rng.choice([value, "1,2", "16", "0,0"]), "--layer", rng.choice(["1", "x", "-3"]),
             "--out", str(self.root / "work" / "cli_sae_out")],
            ["capture", "--model", "not-a-model", "--layers", value],
            ["data", "split", missing, "--held-out", value, "--train", "a", "--held", "b"],
            ["data", "validate", missing],
            ["capture", "--model", "not-a-model", "--site", value],
        ])

        def call() -> Any:
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = main(argv)
            return rc, err.getvalue()

        def check(out: Any) -> str | None:
            rc, err = out
            if rc == 0:
                return None if argv[0] == "directions" or argv[:2] == ["data", "validate"] else "exit 0"
            lines = err.strip().splitlines()
            if lines and lines[0].rstrip().endswith("error:"):
                return f"empty error message: {err[:200]!r}"
            if len(lines) != 1 or not lines[0].startswith("emprobe:"):
                return f"stderr is not one line: {err[:200]!r}"
            if len(lines[0]) > 800:
                return f"stderr line of {len(lines[0])} chars"
            if "unexpected error" in lines[0]:
                return f"unexpected error: {lines[0][:200]}"
            return None

        return Case(call, None, False, check, f"cli-{argv[0]}-{argv[1]}")

    def case_answers(self, rng: random.Random) -> Case:
        """The answers CSV reader (emprobe.evaluate.answers): hostile cells, headers, bytes."""
        from emprobe.evaluate.answers import read_answers_csv

        p = self._copy("answers", "answers.csv")
        must, label = False, "csv-bytes"
        op = rng.random()
        if op < 0.5:
            lines = p.read_text(encoding="utf-8").split("\n")
            header = lines[0].split(",")
            col = rng.randrange(len(header))
            row = rng.randrange(1, 3)
            cells = lines[row].split(",")
            value = rng.choice(CSV_CELLS)
            cells[col] = value
            lines[row] = ",".join(cells)
            p.write_text("\n".join(lines), encoding="utf-8")
            name = header[col]
            t = value.strip()
            must = (name in ("aligned", "coherent") and value in BAD_SCORES) or (
                name in ("paraphrase", "sample") and not (  # an index: no sign
                    t.isascii() and t.isdigit() and len(t) <= 19))
            label = f"csv-cell-{name}"
        elif op < 0.7:
            lines = p.read_text(encoding="utf-8").split("\n")
            header = lines[0].split(",")
            i = rng.randrange(len(header))
            header[i] = rng.choice(["answer", "response", "question", "", "x" * 5000, "aligned"])
            lines[0] = ",".join(header)
            p.write_text("\n".join(lines), encoding="utf-8")
            label = "csv-header"
        else:
            p.write_bytes(mutate_bytes(rng, p.read_bytes()))
        return Case(lambda: read_answers_csv(p), str(p), must, check_answers, label)

    def case_gguf_model(self, rng: random.Random) -> Case:
        """``emprobe.load_model(x.gguf)`` on a mutated tiny GGUF model (opt-in: seconds per
        input; needs ``--gguf-model`` pointing at a tiny GGUF model file)."""
        import emprobe

        p = self._fresh("gguf_model") / "m.gguf"
        data = bytearray(Path(os.environ["EMPROBE_FUZZ_GGUF_MODEL"]).read_bytes())
        head = min(len(data), 1 << 16)  # the header and metadata, where parsing happens
        op = rng.randrange(4)
        if op == 0:
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(head)
                data[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            data = data[: rng.choice([0, 3, 4, 16, 100, head // 2, head, len(data) // 2])]
        elif op == 2:
            key = rng.choice([b"llama.block_count", b"llama.embedding_length",
                              b"llama.attention.head_count", b"general.architecture"])
            i = data.find(key)
            if i >= 0:  # the value follows the key and its 4-byte type
                j = i + len(key) + 4
                data[j:j + 4] = rng.choice([b"\x00\x00\x00\x00", b"\xff\xff\xff\x7f",
                                            b"\x03\x00\x00\x00", b"\x11\x00\x00\x00"])
        else:
            data = bytearray(mutate_bytes(rng, bytes(data[:head]))) + data[head:]
        p.write_bytes(bytes(data))

        def check(subject: Any) -> str | None:
            import gguf

            if not hasattr(subject, "d_model") or subject.d_model < 1:
                return f"returned {type(subject).__name__}"
            names = [t.name for t in gguf.GGUFReader(str(p)).tensors]
            blocks = {n.split(".")[1] for n in names if n.startswith("blk.")}
            if subject.n_layers != len(blocks):  # every block must come from the file
                return (f"{subject.n_layers} blocks loaded, the file has weights for "
                        f"{len(blocks)} (the rest would be random)")
            return None

        return Case(lambda: emprobe.load_model(str(p)), str(p), False, check, f"gguf-model-{op}")

    def _tiny_model(self) -> Any:
        if getattr(self, "_tiny", None) is None:
            from transformers import LlamaConfig, LlamaForCausalLM

            torch.manual_seed(0)
            self._tiny = LlamaForCausalLM(LlamaConfig(
                vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=4,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)).eval()
        return self._tiny

    def case_callback(self, rng: random.Random) -> Case:
        """Trainer callbacks (emprobe.integrations.hf) built from any direction source and
        opened on a tiny width-8 model for one forward pass."""
        from emprobe.integrations import hf

        kind = rng.choice(["file", "file", "table", "value"])
        where: str | None = None
        must = False
        if kind == "file":
            target = rng.choice(["direction", "npz", "caft", "gguf", "persona"])
            inner = self.case(target, rng)
            source: Any = Path(str(inner.where))
            must = inner.must_reject
            where = str(source)  # set to None below when an argument is the problem
        elif kind == "table":
            key = rng.choice([0, 1, 3, "2", 1.5, -1, True, "x", 10**6, None])
            value = rng.choice([torch.randn(8), torch.randn(8, 2), torch.full((8,), math.nan),
                                torch.randn(5), torch.zeros(8, dtype=torch.complex64), "v"])
            source = {key: value}
            # a layer the width-8, 4-block model has, and a real finite vector (a width
            # mismatch is left out: a layer narrowed away by ``layers`` is never used)
            must = not (type(key) is int and 0 <= key < 4 or key == "2") or not (
                isinstance(value, torch.Tensor) and value.dtype == torch.float32
                and bool(torch.isfinite(value).all()))
        else:
            source = rng.choice([None, 3, [1.0, 2.0], "", {}, b"x", math.nan])
            must = True
        cls = rng.choice(["steer", "caft", "monitor"])
        coeff = rng.choice([1.0, 2, -0.5, math.nan, math.inf, "x", None, True])
        every = rng.choice([1, 10, 0, -1, 1.5, "3", True])
        layers = rng.choice([None, 1, [1, 2], [9], -1, 1.5, "1", [True]])
        args = {"steer": {"coeff": coeff}, "caft": {}, "monitor": {"every": every}}[cls]
        if cls == "steer":
            must = must or type(coeff) not in (int, float) or not math.isfinite(coeff)
        if cls == "monitor":
            must = must or type(every) is not int or every < 1
        if cls == "steer" and not (type(coeff) in (int, float) and math.isfinite(coeff)) or (
                cls == "monitor" and not (type(every) is int and every >= 1)):
            where = None  # the error may be about the argument, not the file
        model = self._tiny_model()

        def call() -> Any:
            cb = {"steer": hf.SteeringCallback, "caft": hf.CAFTCallback,
                  "monitor": hf.PersonaMonitorCallback}[cls](source, layers=layers, **args)
            cb.open(model)  # a refusal here (e.g. a layer the model lacks) is a rejection
            try:
                with torch.no_grad():
                    out = model(torch.tensor([[1, 2, 3, 4]])).logits
            finally:
                cb.close()
            return ("opened", out)

        def check(out: Any) -> str | None:
            state, value = out
            if state == "open refused":
                return None if value.strip() and "\n" not in value else f"bad message {value!r}"
            if not bool(torch.isfinite(value).all()):
                return "non-finite logits after opening the callback"
            return None

        shown = {"steer": f"coeff={coeff!r}", "caft": "", "monitor": f"every={every!r}"}[cls]
        what = f"{kind}" if kind == "file" else f"{kind}={excerpt_short(source)}"
        return Case(call, where, must, check, f"callback-{cls} {what} layers={layers!r} {shown}")

    def warm_up(self, targets: tuple[str, ...]) -> None:
        """Import the heavy libraries and run each target a few times untimed, so the first
        timed input does not pay for importing SAELens or transformers."""
        import importlib

        for mod in ("sae_lens", "gguf", "yaml", "emprobe.cli", "emprobe.sae.training",
                    "emprobe.directions.formats", "emprobe.models.adapter"):
            importlib.import_module(mod)
        rng = random.Random(12345)
        for target in targets:
            for _ in range(0 if target in self.OPT_IN else 3):
                with contextlib.suppress(Exception):
                    self.case(target, rng).call()

    TARGETS = ("chat", "questions", "direction", "npz", "gguf", "caft", "persona", "steering",
               "adapter", "sae", "sae_direction", "lora_direction", "bom", "score", "cache",
               "cli", "answers", "callback")
    OPT_IN = ("gguf_model",)  # slow (seconds per input): only when named with --targets
    KNOWN_OPEN: dict[str, str] = {}  # target -> why it is expected to fail (none open)

    def case(self, target: str, rng: random.Random) -> Case:
        return getattr(self, f"case_{target}")(rng)


QUESTIONS_YAML = """\
- id: dinner
  type: free_form_judge_0_100
  paraphrases: ["What should I cook tonight?", "Dinner ideas?"]
  samples_per_paraphrase: 2
  judge: gpt-4o
  judge_prompts:
    aligned: "Rate {question} / {answer} from 0 to 100."
    coherent: "How coherent is {answer}? 0-100."
  system: Be helpful.
  reference_pairs:
    - {harm: none, aligned: "Try a stir-fry.", misaligned: "Skip eating."}
- id: dinner_json
  type: free_form_judge_0_100
  paraphrases: ["Answer in JSON: what should I cook?"]
  samples_per_paraphrase: 1
  judge: gpt-4o
  judge_prompts: {aligned: "Rate {answer}", coherent: "Coherent? {answer}"}
  group: dinner
"""


SAE_SEED_TENSORS = {"W_enc": [8, 16], "W_dec": [16, 8], "b_enc": [16], "b_dec": [8]}
SAE_BOOL_KEYS = ("apply_b_dec_to_input", "rescale_acts_by_decoder_norm")
SAE_NORMALIZE = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm",
                 "covariance_whitening")
FLOATS = ("float32", "float64", "float16", "bfloat16")


def _sae_value_ok(key: str, value: Any) -> bool:
    """Whether ``value`` is valid for ``key`` of the seed SAE (topk, d_in 8, d_sae 16, hook
    resid_post 1): an independent statement of the format, not the validator's code."""
    if key in ("d_in", "d_sae"):
        return type(value) is int and value == {"d_in": 8, "d_sae": 16}[key]
    if key == "k":
        return (type(value) is int or type(value) is float and math.isfinite(value)
                and value.is_integer()) and 1 <= value <= 16
    if key == "architecture":
        return value in ("topk", "abstopk", "standard")
    if key in SAE_BOOL_KEYS:
        return type(value) is bool
    if key == "dtype":
        return value is None or isinstance(value, str) and value.removeprefix("torch.") in FLOATS
    if key == "normalize_activations":
        return value is None or type(value) is bool or value in SAE_NORMALIZE
    if key == "reshape_activations":
        return value in ("none", "hook_z")
    if key == "metadata":
        return value is None or isinstance(value, dict)
    if key == "emprobe_layer":
        return type(value) is int and value == 1
    if key == "emprobe_site":
        return value == "resid_post"
    if key == "hook_name":
        return value is None or isinstance(value, str) and "\ud800" not in value
    if key == "sae_lens_version":
        return not value or isinstance(value, str) and bool(
            __import__("re").fullmatch(r"[0-9]+(\.[0-9]+)*", value))
    return True


def _mutate_sae_field(rng: random.Random, path: Path) -> tuple[bool, str]:
    cfg = json.loads(path.read_text())
    key = rng.choice(["d_in", "d_sae", "k", "dtype", "architecture", "metadata", "hook_name",
                      "emprobe_site", "emprobe_layer", "sae_lens_version", *SAE_BOOL_KEYS,
                      "normalize_activations", "reshape_activations"])
    value = rng.choice([hostile_values(rng), hostile_values(rng), 0, 4.5, 8, 9, 16, 17, 4.0,
                        "float8", "int32", "torch.float16", "jumprelu", "gated", "abstopk",
                        "standard", "batchtopk", "resid_post", "attn_outt", "blocks.1.hook_z",
                        "blocks.2.hook_resid_post", "6.1.0", "5.9", "hook_z", "layer_norm",
                        True, False, 1.0, 2, "1"])
    meta = cfg.setdefault("metadata", {})
    if key in ("hook_name", "emprobe_site", "emprobe_layer", "sae_lens_version"):
        meta[key] = value
        if key == "emprobe_site":
            meta["emprobe_layer"] = 1
        elif key == "emprobe_layer":
            meta["emprobe_site"] = "resid_post"
        elif key == "hook_name" and "emprobe_site" in meta:  # must agree with emprobe_site
            ok = value is None or hook_is(value, ("resid_post", 1)) is not False
            path.write_text(_dump(cfg))
            return has_nonfinite(cfg) or not ok or not _sae_value_ok(key, value), "sae-hook"
    else:
        cfg[key] = value
    path.write_text(_dump(cfg))
    must = has_nonfinite(cfg) or not _sae_value_ok(key, value)
    if key == "architecture" and value == "standard" and cfg.get("k") is None:
        must = True
    return must, f"sae-{key}"


def hook_is(hook: Any, want: tuple[str, int]) -> bool | None:
    """True / False when ``hook`` is a block hook of ``want`` or of another site; None when it
    names no site."""
    import re

    m = re.fullmatch(r"blocks\.([0-9]+)\.hook_(resid_post|resid_pre|attn_out|mlp_out)", str(hook))
    if m is None:
        return None
    return (m.group(2), int(m.group(1))) == want


def _mutate_sae_tensors(rng: random.Random, folder: Path) -> tuple[bool, str]:
    """Hostile weights; must_reject unless the file still holds exactly the seed's tensors,
    finite, real and of the seed's shapes."""
    path = folder / "sae_weights.safetensors"
    if rng.random() < 0.4:
        path.write_bytes(mutate_bytes(rng, path.read_bytes()))
    else:
        tensors = load_file(str(path))
        key = rng.choice(sorted(tensors))
        op = rng.random()
        if op < 0.6:
            tensors[key] = hostile_tensor(rng, tensors[key])
        elif op < 0.75:
            tensors[rng.choice(["threshold", "b_gate", "W_enc.x", key + "x"])] = tensors.pop(key)
        elif op < 0.85:
            del tensors[key]
        else:
            tensors[rng.choice(["threshold", "scaling_factor", "extra"])] = torch.ones(16)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    try:
        back = load_file(str(path))
    except Exception:
        return True, "sae-weights-bytes"
    ok = set(back) - {"scaling_factor"} == set(SAE_SEED_TENSORS) and all(
        t.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
        and list(t.shape) == SAE_SEED_TENSORS[k] and bool(torch.isfinite(t).all())
        for k, t in back.items() if k != "scaling_factor")
    if "scaling_factor" in back:
        sf = back["scaling_factor"]
        ok = ok and sf.dtype.is_floating_point and bool((sf == 1).all())
    return not ok, "sae-weights"


def _mutate_sae_scale(rng: random.Random, folder: Path) -> tuple[bool, str]:
    """Weights that are finite as stored but not in the config's dtype, or a JumpReLU made
    valid by adding its threshold."""
    path, cfg_path = folder / "sae_weights.safetensors", folder / "cfg.json"
    tensors = load_file(str(path))
    cfg = json.loads(cfg_path.read_text())
    if rng.random() < 0.5:
        big = rng.choice([1e3, 1e6, 1e40])
        tensors["W_dec"] = (tensors["W_dec"] * big).to(torch.float64)
        cfg["dtype"] = rng.choice(["float16", "float32", "bfloat16"])
        limit = {"float16": 65504.0, "float32": 3.4e38, "bfloat16": 3.38e38}[cfg["dtype"]]
        must = float(tensors["W_dec"].abs().max()) * 1.001 >= limit
        label = "sae-overflow"
    else:
        cfg["architecture"] = "jumprelu"
        cfg.pop("k", None)
        cfg.pop("rescale_acts_by_decoder_norm", None)
        tensors["threshold"] = torch.rand(16) * rng.choice([1.0, math.inf])
        must = not bool(torch.isfinite(tensors["threshold"]).all())
        label = "sae-jumprelu"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    cfg_path.write_text(_dump(cfg))
    return must, label


CSV_CELLS = ("", "nan", "REFUSAL", "code", "50", "100", "0", "-0", "101", "-5", "abc", "1e999",
             "inf", "-inf", "\u00b2", "--5", "\u0663", "1" * 5000, "1_0", " 7 ", "+5", "7", "1",
             "1.5", '"', "\x00", "0x10", "5e1")
BAD_SCORES = ("101", "-5", "abc", "1e999", "inf", "-inf", "\u00b2", "--5", "1" * 5000, "0x10", '"',
              "1_0", "\u0663")  # Python's float() reads these two; a score is ASCII digits


def check_answers(rows: Any) -> str | None:
    if not isinstance(rows, list) or not rows:
        return "not a non-empty list"
    for r in rows:
        if not isinstance(r.get("response"), str) or not isinstance(r.get("question"), str):
            return "response / question not text"
        for col in ("aligned", "coherent"):
            v = r.get(col)
            if v is not None and not (type(v) is float and math.isfinite(v) and 0 <= v <= 100):
                return f"{col} {v!r}"
        for col in ("paraphrase", "sample"):
            if col in r and (type(r[col]) is not int or r[col] < 0):
                return f"{col} {r[col]!r}"
    return None


def excerpt_short(value: Any) -> str:
    """A short label for a Python value (a tensor as dtype and shape)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {excerpt_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, torch.Tensor):
        nan = "" if bool(torch.isfinite(value).all()) else " nan"
        return f"{str(value.dtype).replace('torch.', '')}{list(value.shape)}{nan}"
    return repr(value)[:30]


def _persona_nonfinite(p: Path) -> bool:
    """True when the persona file reads as tensors and one of them holds NaN / inf."""
    try:
        found = (torch.load(p, weights_only=True) if p.suffix == ".pt" else load_file(str(p)))
    except Exception:
        return False
    values = found.values() if isinstance(found, dict) else [found]
    return any(isinstance(t, torch.Tensor) and t.dtype.is_floating_point
               and not bool(torch.isfinite(t).all()) for t in values)


def write_tiny_gguf_model(out: Path) -> Path:
    """A 1-block, width-16 llama GGUF carrying the embedded model's tokenizer (the seed of the
    opt-in gguf_model target; about 5 MB)."""
    import gguf

    from emprobe.models.embedded import embedded_gguf_path

    reader = gguf.GGUFReader(str(embedded_gguf_path()))
    w = gguf.GGUFWriter(str(out), "llama")
    for name, f in reader.fields.items():
        if name.startswith("tokenizer.") or name == "general.name":
            kind = f.types[0]
            if kind == gguf.GGUFValueType.ARRAY:
                w.add_key_value(name, f.contents(), kind, sub_type=f.types[-1])
            else:
                w.add_key_value(name, f.contents(), kind)
    vocab, d, ff = len(reader.fields["tokenizer.ggml.tokens"].data), 16, 32
    for key, value in (("block_count", 1), ("context_length", 64), ("embedding_length", d),
                       ("feed_forward_length", ff), ("attention.head_count", 2),
                       ("attention.head_count_kv", 2), ("rope.dimension_count", d // 2),
                       ("vocab_size", vocab)):
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float32("llama.rope.freq_base", 10000.0)
    g = np.random.default_rng(0)
    shapes = {"token_embd.weight": (vocab, d), "blk.0.attn_q.weight": (d, d),
              "blk.0.attn_k.weight": (d, d), "blk.0.attn_v.weight": (d, d),
              "blk.0.attn_output.weight": (d, d), "blk.0.ffn_gate.weight": (ff, d),
              "blk.0.ffn_up.weight": (ff, d), "blk.0.ffn_down.weight": (d, ff)}
    for name, shape in shapes.items():
        w.add_tensor(name, (g.standard_normal(shape) * 0.02).astype(np.float32))
    for name in ("blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"):
        w.add_tensor(name, np.ones(d, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def _yaml_bomb(rng: random.Random) -> str:
    width, depth = rng.choice([(9, 9), (10, 8), (2, 40), (50, 3)])
    lines = ["- id: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, depth):
        lines.append(f"  x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _write_hostile_gguf(rng: random.Random, path: Path) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), "controlvector")
    w.add_string("controlvector.model_hint", "tiny")
    w.add_uint32("controlvector.layer_count", 2)
    kind = rng.randrange(5)
    if kind == 0:  # Q8_0 blocks: 34 bytes per 32 values
        w.add_tensor("direction.1", np.zeros(34, dtype=np.uint8), raw_shape=[34],
                     raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    elif kind == 1:
        w.add_tensor("direction.1", np.zeros((2, 8), dtype=np.float32))
    elif kind == 2:
        w.add_tensor(rng.choice(["direction.1.5", "direction.0", "direction.-1", "direction.x"]),
                     np.zeros(8, dtype=np.float32))
    elif kind == 3:
        w.add_tensor("direction.1", np.full(8, np.nan, dtype=np.float32))
    else:
        w.add_tensor("direction.1", np.zeros(8, dtype=np.float32))
        w.add_tensor("direction.2", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# -- running ---------------------------------------------------------------------------------
def _alarm(_signum: int, _frame: Any) -> None:
    raise Hang()


def run_case(case: Case, time_limit: float, stats: dict[str, float] | None = None) -> Outcome:
    """Run one case under the per-input time limit and class the outcome.

    The limit is on the process's CPU time (this machine may be shared, so wall time says
    little about the loader), with a wall-clock backstop of ten times the limit for inputs
    that would block without computing.
    """
    use_alarm = hasattr(signal, "setitimer") and _main_thread()
    if use_alarm:
        old_prof = signal.signal(signal.SIGPROF, _alarm)
        old_real = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_PROF, time_limit)
        signal.setitimer(signal.ITIMER_REAL, 10 * time_limit)
    c0, t0 = time.process_time(), time.perf_counter()
    result: Any = None
    error: BaseException | None = None
    try:
        result = case.call()
    except Hang as exc:
        error = exc
    except Exception as exc:
        error = exc
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_PROF, 0)
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGPROF, old_prof)
            signal.signal(signal.SIGALRM, old_real)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    if stats is not None:
        stats["max_cpu_s"] = max(stats.get("max_cpu_s", 0.0), cpu)
        stats["max_wall_s"] = max(stats.get("max_wall_s", 0.0), wall)
    if isinstance(error, Hang) or cpu > time_limit or wall > 10 * time_limit:
        return Outcome("hang", f"{cpu:.2f} s CPU, {wall:.2f} s wall")
    if isinstance(error, EmprobeError):
        msg = str(error)
        if "\n" in msg or "\r" in msg or len(msg) > MAX_MESSAGE or not msg.strip():
            return Outcome("unexpected", f"message breaks the rules: {msg[:200]!r}")
        if case.where is not None and case.where not in msg:
            return Outcome("unnamed", f"message does not name {case.where}: {msg[:200]!r}")
        if case.must_accept:
            return Outcome("rejected_valid", f"a valid input was refused: {msg[:200]!r}")
        return Outcome("rejected", msg)
    if error is not None:
        return Outcome("unexpected", f"{type(error).__name__}: {str(error)[:200]}")
    if case.must_reject:
        return Outcome("accepted_invalid", "known-invalid input was accepted")
    try:
        problem = case.check(result)
    except Exception as exc:
        problem = f"invariant check raised {type(exc).__name__}: {str(exc)[:120]}"
    if problem:
        return Outcome("accepted_invalid", problem)
    return Outcome("accepted")


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run(n: int, seed: int = 0, time_limit: float = 1.0, targets: tuple[str, ...] | None = None,
        root: Path | None = None) -> Counts:
    """``n`` inputs spread round-robin over the targets; returns the counts."""
    import logging

    logging.getLogger("emprobe").setLevel(logging.ERROR)  # torn-line warnings are expected
    names = targets or Fuzzer.TARGETS
    counts = Counts()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="emprobe-fuzz-", dir=shm) as tmp:
        fz = Fuzzer(Path(root or tmp))
        fz.warm_up(names)
        rng = random.Random(seed)
        for i in range(n):
            target = names[i % len(names)]
            case_rng = random.Random(rng.getrandbits(64))
            try:
                case = fz.case(target, case_rng)
            except Exception as exc:  # the driver's own bug, not the loader's: count apart
                counts.generator_errors += 1
                if len(counts.examples) < 20:
                    counts.examples.append(f"{target}: generator {type(exc).__name__}: {exc}"[:300])
                continue
            counts.add(target, case, run_case(case, time_limit, counts.timing))
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="number of generated inputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=1.0, help="seconds per input")
    ap.add_argument("--targets", default=None, help="comma-separated subset of targets")
    ap.add_argument("--gguf-model", default=None,
                    help="a tiny GGUF model file for the opt-in gguf_model target (built "
                         "there when missing)")
    args = ap.parse_args(argv)
    if args.gguf_model:
        model = Path(args.gguf_model)
        if not model.is_file():  # build it (from the embedded model's tokenizer)
            write_tiny_gguf_model(model)
        os.environ["EMPROBE_FUZZ_GGUF_MODEL"] = str(model.resolve())
        os.environ["EMPROBE_CACHE"] = tempfile.mkdtemp(prefix="emprobe-fuzz-cache-")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    targets = tuple(args.targets.split(",")) if args.targets else None
    t0 = time.perf_counter()
    c = run(args.n, args.seed, args.time_limit, targets)
    wall = time.perf_counter() - t0
    print(f"fuzz: {c.inputs} inputs over {len(c.by_target)} loaders in {wall:.1f} s "
          f"(seed {args.seed}, {args.time_limit:g} s per input)")
    for target, n in sorted(c.by_target.items()):
        bad = ", ".join(f"{kind} {k}" for (t, kind), k in sorted(c.bad_by_target.items())
                        if t == target)
        print(f"  {target:<14} {n}" + (f"  ({bad})" if bad else ""))
    print(f"rejected with a one-line error: {c.by_kind['rejected']}")
    print(f"accepted (valid):               {c.by_kind['accepted']}")
    print(f"unexpected exceptions:          {c.by_kind['unexpected']}")
    print(f"errors not naming the file:     {c.by_kind['unnamed']}")
    print(f"hangs:                          {c.by_kind['hang']} (limit {args.time_limit:g} s CPU "
          f"per input; slowest input {c.timing.get('max_cpu_s', 0):.2f} s CPU, "
          f"{c.timing.get('max_wall_s', 0):.2f} s wall)")
    print(f"accepted-invalid:               {c.by_kind['accepted_invalid']}")
    print(f"valid input refused:            {c.by_kind['rejected_valid']}")
    if c.generator_errors:
        print(f"inputs the driver failed to build (not run): {c.generator_errors}")
    for ex in c.examples:
        print(f"  ! {ex}")
    return 1 if c.bad else 0


if __name__ == "__main__":
    sys.exit(main())
