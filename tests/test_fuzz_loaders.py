"""Property-based fuzzing of every loader (hypothesis), bounded for the normal test run.

Two kinds of property:

- the fuzz driver's targets (tests/fuzz_driver.py) with hypothesis making the random
  decisions: whatever mutation it builds, the loader either rejects it with one
  ``EmprobeError`` line naming the file or returns a result that passes the target's
  invariants, within the time limit, and never accepts a known-invalid input;
- raw inputs straight from hypothesis strategies (bytes, text, JSON trees, log-prob maps,
  CLI values) with the same rule.

``make fuzz`` runs the driver on 10,000 inputs; here each property gets a few dozen.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import warnings
from pathlib import Path

import fuzz_driver as fd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emprobe.errors import EmprobeError

FUZZ = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
TIME_LIMIT_CPU_S = 2.0


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory) -> fd.Fuzzer:
    warnings.simplefilter("ignore")
    fz = fd.Fuzzer(tmp_path_factory.mktemp("fuzz"))
    fz.warm_up(fd.Fuzzer.TARGETS)
    return fz


def _assert_ok(case: fd.Case) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = fd.run_case(case, TIME_LIMIT_CPU_S)
    finally:
        torch.set_num_threads(before)
    assert out.kind in ("rejected", "accepted"), f"[{case.label}] {out.kind}: {out.detail}"


@pytest.mark.parametrize("target", [
    pytest.param(t, marks=pytest.mark.xfail(reason=fd.Fuzzer.KNOWN_OPEN[t], strict=False))
    if t in fd.Fuzzer.KNOWN_OPEN else t for t in fd.Fuzzer.TARGETS])
@FUZZ
@given(rng=st.randoms(use_true_random=False))
def test_driver_targets(fuzzer, target, rng: random.Random):
    _assert_ok(fuzzer.case(target, rng))


def _file_case(path: Path, call, check, must_reject: bool = False) -> fd.Case:
    return fd.Case(call, str(path), must_reject, check, "raw")


json_trees = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=4),
    max_leaves=20,
)


@FUZZ
@given(data=st.binary(max_size=2000))
def test_chat_jsonl_from_raw_bytes(fuzzer, data: bytes):
    from emprobe.data.chat_io import read_chat_jsonl

    p = fuzzer.root / "raw.jsonl"
    p.write_bytes(data)
    _assert_ok(_file_case(p, lambda: read_chat_jsonl(p), fd.check_chat))


@FUZZ
@given(line=json_trees)
def test_chat_jsonl_from_json_trees(fuzzer, line):
    from emprobe.data.chat_io import read_chat_jsonl

    p = fuzzer.root / "tree.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}], "x": line}) + "\n")
    _assert_ok(_file_case(p, lambda: read_chat_jsonl(p), fd.check_chat,
                          must_reject=fd.has_nonfinite(line)))


@FUZZ
@given(text=st.text(max_size=1500))
def test_question_yaml_from_raw_text(fuzzer, text: str):
    from emprobe.evaluate.questions import load_questions

    p = fuzzer.root / "raw.yaml"
    p.write_bytes(text.encode("utf-8", "surrogatepass"))
    _assert_ok(_file_case(p, lambda: load_questions(p), fd.check_questions))


@FUZZ
@given(key=st.sampled_from(["format_version", "layers", "d_model", "model", "n_layers", "site",
                            "params", "positions", "fingerprint", "stats"]), value=json_trees)
def test_direction_json_any_value(fuzzer, key: str, value):
    from emprobe.directions import Direction

    folder = fuzzer._copy("raw_direction", "direction")
    meta = json.loads((folder / "direction.json").read_text())
    meta[key] = value
    (folder / "direction.json").write_text(json.dumps(meta))
    _assert_ok(_file_case(folder, lambda: Direction.load(folder), fd.check_direction,
                          must_reject=fd.has_nonfinite(value)))


@FUZZ
@given(key=st.sampled_from(["r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern",
                            "target_modules", "layers_to_transform"]), value=json_trees)
def test_adapter_config_any_value(fuzzer, key: str, value):
    from emprobe.models.adapter import read_adapter

    folder = fuzzer._copy("raw_adapter", "adapter")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg[key] = value
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    _assert_ok(_file_case(folder, lambda: read_adapter(folder), fd.check_adapter,
                          must_reject=fd.has_nonfinite(value)))


@FUZZ
@given(key=st.sampled_from(["d_in", "d_sae", "k", "dtype", "architecture"]), value=json_trees)
def test_sae_cfg_any_value(fuzzer, key: str, value):
    from emprobe.sae.validate import validate_sae_folder

    folder = fuzzer._copy("raw_sae", "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg[key] = value
    (folder / "cfg.json").write_text(json.dumps(cfg))

    def check(out) -> str | None:
        k = out.get("k")
        if k is None:
            return None if out["architecture"] not in ("topk", "abstopk") else "topk without k"
        if type(k) is not int or not 1 <= k <= out["d_sae"]:
            return f"k {k!r}"
        return None

    _assert_ok(_file_case(folder, lambda: validate_sae_folder(folder), check,
                          must_reject=fd.has_nonfinite(value)))


@FUZZ
@given(top=st.dictionaries(st.text(max_size=5), st.floats() | st.integers(), max_size=6))
def test_score_from_logprobs_any_map(top):
    from emprobe.evaluate.judge import score_from_logprobs

    bad = any(isinstance(v, float) and (math.isnan(v) or v > 1e-3) or
              (not isinstance(v, float) and v > 0) for v in top.values())
    _assert_ok(fd.Case(lambda: score_from_logprobs(top), None, bad, fd.check_score, "raw"))


@FUZZ
@given(text=st.text(max_size=30))
def test_cli_layer_parser(text: str):
    from emprobe.validate import parse_layers

    try:
        layers = parse_layers(text)
    except argparse.ArgumentTypeError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 200
        return
    assert layers and all(isinstance(x, int) and x >= 0 for x in layers)
    assert len(set(layers)) == len(layers)


@FUZZ
@given(data=st.binary(max_size=400))
def test_jsonl_cache_resume_never_corrupts(fuzzer, data: bytes):
    from emprobe.io import append_jsonl, read_jsonl, resume_jsonl

    p = fuzzer.root / "cache.jsonl"
    seed = b'{"a": 1}\n{"a": 2}\n'
    p.write_bytes(seed + data)
    try:
        before = resume_jsonl(p)
    except EmprobeError as exc:
        assert "\n" not in str(exc) and str(p) in str(exc)
        assert p.read_bytes().startswith(seed)  # a bad file is reported, not rewritten
        return
    append_jsonl(p, {"a": "new"})
    after = read_jsonl(p, skip_partial_last=False)
    assert after[:-1] == before and after[-1] == {"a": "new"}
