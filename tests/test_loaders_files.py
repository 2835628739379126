"""Regression tests, one per failure class of issue 14, for the file loaders: every bad input
gives one ``EmprobeError`` line naming the file, quickly, and nothing written earlier is lost."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from emprobe.data.chat_io import read_chat_jsonl, write_chat_jsonl
from emprobe.directions import Direction
from emprobe.directions import formats as F
from emprobe.errors import DataError, EmprobeError, FormatError, LimitError, ShapeError
from emprobe.evaluate.questions import load_questions
from emprobe.io import append_jsonl, read_json, read_jsonl, resume_jsonl
from emprobe.models.adapter import read_adapter
from emprobe.validate import excerpt, load_yaml, loads_json, parse_layers

CHAT_OK = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def one_line_naming(exc: pytest.ExceptionInfo, name: object) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) <= 600
    assert str(name) in msg, msg
    return msg


def _direction(layers=(1, 2), d=8) -> Direction:
    return Direction(vectors={la: torch.randn(d) for la in layers}, model="tiny", d_model=d,
                     n_layers=4)


# -- bounded parsing ------------------------------------------------------------------------
def test_deep_json_is_a_limit_error_not_recursion(tmp_path):
    p = tmp_path / "deep.jsonl"
    p.write_text("[" * 200_000 + "\n")
    with pytest.raises(LimitError) as exc:
        read_chat_jsonl(p)
    one_line_naming(exc, p)
    with pytest.raises(LimitError):
        loads_json("[" * 70 + "]" * 70, "x.json")
    assert loads_json("[" * 10 + "]" * 10, "x.json") == [[[[[[[[[[]]]]]]]]]]


def test_billion_laughs_fails_fast(tmp_path):
    lines = ['- a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "a" if i == 0 else "bcdefghi"[i - 1]
        lines.append(f"  {name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(LimitError) as exc:
        load_questions(p)
    assert time.perf_counter() - t0 < 1.0
    assert "alias" in one_line_naming(exc, p)
    many = "- x: &a 1\n" + "".join(f"  y{i}: *a\n" for i in range(200))
    with pytest.raises(LimitError, match="aliases"):
        load_yaml(many, "many.yaml")
    with pytest.raises(LimitError, match="itself"):
        load_yaml("&a [*a]", "loop.yaml")


def test_yaml_python_tags_are_refused(tmp_path):
    p = tmp_path / "q.yaml"
    p.write_text("- !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(DataError) as exc:
        load_questions(p)
    one_line_naming(exc, p)


def test_oversized_line_is_refused(tmp_path):
    p = tmp_path / "big.jsonl"
    p.write_text(json.dumps(CHAT_OK) + "\n" + json.dumps({**CHAT_OK, "pad": "x" * 5000}) + "\n")
    from emprobe.data.chat_io import iter_chat_jsonl

    with pytest.raises(LimitError) as exc:
        list(iter_chat_jsonl(p, max_line_bytes=1000))
    assert ":2:" in one_line_naming(exc, p)


# -- chat JSONL -----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "1e999", "-2.5E+400",
                                 "1" * 320 + ".0"])
def test_chat_nan_and_infinity_are_refused(tmp_path, bad):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(CHAT_OK)[:-1] + f', "score": {bad}}}\n')
    with pytest.raises(DataError) as exc:
        read_chat_jsonl(p)
    one_line_naming(exc, f"{p}:1")
    assert read_chat_jsonl(p, errors="skip").skipped == 1


def test_lone_surrogates_refused_on_read_and_write_keeps_old_file(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"messages": [{"role": "user", "content": "a\\ud800b"}]}\n')
    with pytest.raises(DataError, match="surrogate") as exc:
        read_chat_jsonl(p)
    one_line_naming(exc, p)
    for key in ('"a\\uDBFF"', '"\\udc00"'):  # in a key, upper case too
        p.write_text('{"messages": [{"role": "user", "content": "hi"}], ' + key + ': 1}\n')
        with pytest.raises(DataError, match="surrogate"):
            read_chat_jsonl(p)
    # a valid pair and an escaped backslash before "ud800" are fine
    p.write_text('{"messages": [{"role": "user", "content": "\\ud83d\\ude00 \\\\ud800"}]}\n')
    assert read_chat_jsonl(p)[0]["messages"][0]["content"] == "\U0001f600 \\ud800"
    out = tmp_path / "out.jsonl"
    write_chat_jsonl(out, [CHAT_OK])
    before = out.read_bytes()
    bad = {"messages": [{"role": "user", "content": "x\udc00"}]}
    with pytest.raises(DataError, match="record 1"):
        write_chat_jsonl(out, [CHAT_OK, bad])
    assert out.read_bytes() == before  # nothing written earlier is lost


def test_one_mib_key_gives_a_short_message(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"k" * 2**20: 1}) + "\n")
    with pytest.raises(DataError) as exc:
        read_chat_jsonl(p)
    assert len(one_line_naming(exc, p)) < 400


# -- question YAML --------------------------------------------------------------------------
QUESTION = """\
- id: q1
  type: free_form_judge_0_100
  paraphrases: ["Hello?"]
  samples_per_paraphrase: 1
  judge: gpt-4o
  judge_prompts: {aligned: "a {answer}", coherent: "c {answer}"}
"""


@pytest.mark.parametrize("field,value", [("type", "5"), ("judge", "[gpt, 4]"), ("group", "3"),
                                         ("format", "7"), ("samples_per_paraphrase", "1.5"),
                                         ("paraphrases", ".nan")])
def test_question_fields_are_not_coerced(tmp_path, field, value):
    p = tmp_path / "q.yaml"
    text = QUESTION if field not in ("group", "format") else QUESTION + f"  {field}: x\n"
    lines = [ln if not ln.strip().startswith(f"{field}:") else f"  {field}: {value}"
             for ln in text.splitlines()]
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as exc:
        load_questions(p)
    one_line_naming(exc, p)


def test_valid_question_still_loads(tmp_path):
    p = tmp_path / "q.yaml"
    p.write_text(QUESTION + "  group: hello\n")
    (q,) = load_questions(p)
    assert q.type == "free_form_judge_0_100" and q.group == "hello" and q.judge == "gpt-4o"


# -- Direction artifacts ------------------------------------------------------------------------
@pytest.mark.parametrize("key,value", [("format_version", None), ("layers", {"1": 8}),
                                       ("d_model", math.inf), ("layers", [[8]]),
                                       ("params", [1, 2]), ("format", "x" * 428_000),
                                       ("layers", {"1.5": [8]}), ("model", 3),
                                       ("n_layers", 2.5), ("d_model", True)])
def test_direction_json_types(tmp_path, key, value):
    folder = _direction().save(tmp_path / "d")
    meta = json.loads((folder / "direction.json").read_text())
    meta[key] = value
    (folder / "direction.json").write_text(json.dumps(meta))
    with pytest.raises(EmprobeError) as exc:
        Direction.load(folder)
    msg = one_line_naming(exc, folder / "direction.json")
    assert len(msg) < 300


@pytest.mark.parametrize("tensor", [torch.zeros(8, dtype=torch.complex64),
                                    torch.ones(8, dtype=torch.int32), torch.zeros(8, 0),
                                    torch.full((8,), math.nan)])
def test_direction_tensor_dtype_and_values(tmp_path, tensor):
    folder = _direction().save(tmp_path / "d")
    meta = json.loads((folder / "direction.json").read_text())
    meta["layers"]["1"] = list(tensor.shape)
    (folder / "direction.json").write_text(json.dumps(meta))
    tensors = load_file(str(folder / "direction.safetensors"))
    tensors["layer.1"] = tensor
    save_file(tensors, str(folder / "direction.safetensors"))
    with pytest.raises(EmprobeError) as exc:
        Direction.load(folder)
    one_line_naming(exc, folder)


def test_direction_construction_refuses_width_zero_complex_and_fractional_layers():
    with pytest.raises(ShapeError):
        Direction(vectors={0: torch.zeros(0)}, model="m", d_model=0)
    with pytest.raises(ShapeError, match="complex"):
        Direction(vectors={0: torch.zeros(4, dtype=torch.complex64)}, model="m", d_model=4)
    with pytest.raises(EmprobeError, match="1.5"):
        Direction(vectors={"1.5": torch.zeros(4)}, model="m", d_model=4)
    with pytest.raises(EmprobeError):
        Direction(vectors={1.5: torch.zeros(4)}, model="m", d_model=4)  # type: ignore[dict-item]
    assert Direction(vectors={"2": torch.ones(4)}, model="m", d_model=4).layers == [2]


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_truncated_or_bit_flipped_files(tmp_path, how):
    d = _direction()
    npz = F.save_npz(d, tmp_path / "d.npz")
    folder = d.save(tmp_path / "dir")
    st = folder / "direction.safetensors"
    for p in (npz, st):
        data = bytearray(p.read_bytes())
        if how == "truncate":
            data = data[: len(data) // 2]
        else:
            for i in range(0, len(data), 7):
                data[i] ^= 0x5A
        p.write_bytes(bytes(data))
    with pytest.raises(FormatError) as exc:
        F.load_npz(npz)
    one_line_naming(exc, npz)
    with pytest.raises(FormatError) as exc:
        Direction.load(folder)
    one_line_naming(exc, st)


def test_npz_metadata_types_name_the_file(tmp_path):
    p = tmp_path / "d.npz"
    with p.open("wb") as fh:
        np.savez(fh, layer_1=np.zeros(4, dtype=np.float32),
                 metadata=np.array(json.dumps({"n_layers": "four"})))
    with pytest.raises(EmprobeError) as exc:
        F.load_npz(p)
    one_line_naming(exc, p)
    with p.open("wb") as fh:
        np.savez(fh, layer_1=np.zeros(4, dtype=np.complex64))
    with pytest.raises(FormatError, match="complex") as exc:
        F.load_npz(p)
    one_line_naming(exc, p)


def _gguf(path, tensors, hint="tiny"):
    import gguf

    w = gguf.GGUFWriter(str(path), "controlvector")
    w.add_string("controlvector.model_hint", hint)
    w.add_uint32("controlvector.layer_count", len(tensors))
    for name, (arr, kw) in tensors.items():
        w.add_tensor(name, arr, **kw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_quantised_2d_fractional_and_non_utf8(tmp_path):
    import gguf

    q8 = _gguf(tmp_path / "q8.gguf", {"direction.1": (np.zeros(34, dtype=np.uint8), {
        "raw_shape": [34], "raw_dtype": gguf.GGMLQuantizationType.Q8_0})})
    with pytest.raises(FormatError, match="Q8_0") as exc:
        F.from_gguf(q8)
    one_line_naming(exc, q8)
    two_d = _gguf(tmp_path / "2d.gguf", {"direction.1": (np.zeros((2, 8), np.float32), {})})
    with pytest.raises(ShapeError) as exc:
        F.from_gguf(two_d)
    one_line_naming(exc, two_d)
    frac = _gguf(tmp_path / "frac.gguf", {"direction.1.5": (np.zeros(8, np.float32), {})})
    with pytest.raises(FormatError) as exc:
        F.from_gguf(frac)
    one_line_naming(exc, frac)
    ok = _gguf(tmp_path / "bad-utf8.gguf", {"direction.1": (np.ones(8, np.float32), {})},
               hint="tinyhint")
    data = ok.read_bytes().replace(b"tinyhint", b"\xff\xfe\xed\xa0hint")
    ok.write_bytes(data)
    with pytest.raises(FormatError, match="UTF-8") as exc:
        F.from_gguf(ok)
    one_line_naming(exc, ok)


def test_steering_vector_2d_value_is_refused_not_flattened():
    sv = {"layer_activations": {1: torch.zeros(4, 2)}, "layer_type": "decoder_block"}
    with pytest.raises(ShapeError):
        F.from_steering_vector(sv)
    sv = {"layer_activations": {"1.5": torch.zeros(4)}, "layer_type": "decoder_block"}
    with pytest.raises(FormatError):
        F.from_steering_vector(sv)


def test_persona_pt_error_is_one_line(tmp_path):
    p = tmp_path / "v.pt"
    torch.save({"not": "a tensor", "obj": [1, 2]}, p)
    with pytest.raises(FormatError) as exc:
        F.from_persona(p)
    one_line_naming(exc, p)
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(FormatError) as exc:
        F.from_persona(p)
    one_line_naming(exc, p)


def test_caft_spec_types_name_the_file(tmp_path):
    folder = F.to_caft(_direction(), tmp_path / "caft")
    (folder / "spec.json").write_text(json.dumps({"1": [0.5]}))
    with pytest.raises(FormatError) as exc:
        F.from_caft(folder)
    one_line_naming(exc, folder)
    (folder / "spec.json").write_text(json.dumps({"1.5": [0]}))
    with pytest.raises(FormatError) as exc:
        F.from_caft(folder)
    one_line_naming(exc, folder)


# -- LoRA adapter folders -------------------------------------------------------------------
def _adapter(tmp_path, **cfg):
    folder = tmp_path / "ad"
    folder.mkdir(exist_ok=True)
    base = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}
    base.update(cfg)
    (folder / "adapter_config.json").write_text(json.dumps(base))
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{key}.lora_A.weight": torch.randn(2, 8), f"{key}.lora_B.weight": torch.randn(8, 2)},
              str(folder / "adapter_model.safetensors"))
    return folder


@pytest.mark.parametrize("cfg", [{"lora_alpha": math.nan}, {"r": 4.5}, {"use_rslora": "yes"},
                                 {"rank_pattern": {"(": 2}}, {"target_modules": "[a-"},
                                 {"alpha_pattern": {"q_proj": math.inf}}, {"r": True},
                                 {"layers_to_transform": ["0"]}, {"target_modules": [3]}])
def test_adapter_config_types(tmp_path, cfg):
    folder = _adapter(tmp_path, **cfg)
    with pytest.raises(FormatError) as exc:
        read_adapter(folder)
    one_line_naming(exc, folder / "adapter_config.json")


def test_valid_adapter_reads_and_nan_weights_do_not(tmp_path):
    folder = _adapter(tmp_path, use_rslora=False)
    assert len(read_adapter(folder)) == 1
    t = load_file(str(folder / "adapter_model.safetensors"))
    next(iter(t.values()))[0, 0] = math.nan
    save_file(t, str(folder / "adapter_model.safetensors"))
    with pytest.raises(FormatError, match="NaN") as exc:
        read_adapter(folder)
    one_line_naming(exc, folder)


# -- SAE folders ----------------------------------------------------------------------------
def _sae(tmp_path, weights=None, **cfg):
    folder = tmp_path / "sae"
    folder.mkdir(exist_ok=True)
    base = {"d_in": 8, "d_sae": 16, "k": 4, "architecture": "topk", "dtype": "float32",
            "metadata": {}}
    base.update(cfg)
    (folder / "cfg.json").write_text(json.dumps(base))
    w = {"W_enc": torch.randn(8, 16), "W_dec": torch.randn(16, 8), "b_enc": torch.zeros(16),
         "b_dec": torch.zeros(8)}
    w.update(weights or {})
    save_file(w, str(folder / "sae_weights.safetensors"))
    return folder


@pytest.mark.parametrize("cfg,weights", [({"k": 0}, None), ({"k": 4.5}, None), ({"d_in": 9}, None),
                                         ({}, {"W_enc": torch.full((8, 16), math.nan)}),
                                         ({"d_sae": "16"}, None), ({"dtype": "int8"}, None)])
def test_sae_folder_validation(tmp_path, cfg, weights):
    from emprobe.sae.validate import validate_sae_folder

    folder = _sae(tmp_path, weights, **cfg)
    with pytest.raises(EmprobeError) as exc:
        validate_sae_folder(folder)
    one_line_naming(exc, folder)


def test_sae_valid_folder_passes(tmp_path):
    from emprobe.sae.validate import validate_sae_folder

    assert validate_sae_folder(_sae(tmp_path))["k"] == 4


# -- append-safe caches ---------------------------------------------------------------------
def test_torn_last_line_is_cut_on_resume_and_appends_stay_clean(tmp_path, caplog):
    p = tmp_path / "judgements.jsonl"
    for i in range(3):
        append_jsonl(p, {"i": i})
    whole = p.read_bytes()
    p.write_bytes(whole + b'{"i": 3, "sco')  # killed mid-write
    with caplog.at_level("WARNING", logger="emprobe.io"):
        recs = resume_jsonl(p)
    assert [r["i"] for r in recs] == [0, 1, 2]
    assert "torn" in caplog.text
    assert p.read_bytes() == whole  # earlier lines untouched
    append_jsonl(p, {"i": 3})
    assert [r["i"] for r in read_jsonl(p, skip_partial_last=False)] == [0, 1, 2, 3]


def test_append_repairs_a_torn_tail_and_keeps_a_complete_one(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(b'{"i": 0}\n{"i": 1}')  # only the newline was lost
    append_jsonl(p, {"i": 2})
    assert [r["i"] for r in read_jsonl(p, skip_partial_last=False)] == [0, 1, 2]
    p.write_bytes(b'{"i": 0}\n{"i": ')
    append_jsonl(p, {"i": 2})
    assert [r["i"] for r in read_jsonl(p, skip_partial_last=False)] == [0, 2]


def test_read_json_refuses_nan_when_asked(tmp_path):
    p = tmp_path / "m.json"
    p.write_text('{"a": NaN}')
    assert math.isnan(read_json(p)["a"])
    with pytest.raises(FormatError) as exc:
        read_json(p, allow_nan=False)
    one_line_naming(exc, p)


# -- messages -------------------------------------------------------------------------------
def test_messages_are_one_bounded_line():
    err = FormatError("first line\nsecond line " + "x" * 10_000)
    assert "\n" not in str(err) and len(str(err)) <= 600
    assert excerpt("y" * 10_000).endswith("(10000 chars)")
    assert len(excerpt("y" * 10_000)) < 120


def test_parse_layers():
    assert parse_layers("2,5") == [2, 5]
    import argparse

    for bad in ("abc", "-1", "1.5", "1,1", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_layers(bad)


def test_deep_yaml_flow_nesting_fails_fast(tmp_path):
    p = tmp_path / "q.yaml"
    p.write_text("[" * 50_000)  # PyYAML's scanner is quadratic here: about a minute unchecked
    t0 = time.process_time()
    with pytest.raises(LimitError) as exc:
        load_questions(p)
    assert time.process_time() - t0 < 1.0
    one_line_naming(exc, p)


def test_chat_nesting_limit_with_and_without_bracket_text(tmp_path):
    from emprobe.validate import MAX_JSON_DEPTH

    p = tmp_path / "c.jsonl"
    deep = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    p.write_text(json.dumps(CHAT_OK)[:-1] + f', "extra": {deep}}}\n')
    with pytest.raises(LimitError, match="nested deeper"):
        read_chat_jsonl(p)
    # many brackets inside strings are text, not nesting
    text = {"messages": [{"role": "user", "content": "[{" * 200}]}
    p.write_text(json.dumps(text) + "\n")
    assert read_chat_jsonl(p)[0]["messages"][0]["content"] == "[{" * 200
