"""The PEFT adapter reader (emprobe.models.adapter.read_adapter) and lora_direction: typed,
bounded config fields and properties over mutated adapters (issue 26)."""

from __future__ import annotations

import json
import random
import warnings

import fuzz_driver as fd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emprobe.directions import lora_direction
from emprobe.errors import ConfigError, EmprobeError, FormatError
from emprobe.models.adapter import read_adapter

QUICK = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory) -> fd.Fuzzer:
    warnings.simplefilter("ignore")
    fz = fd.Fuzzer(tmp_path_factory.mktemp("readers_adapter"))
    fz.warm_up(())  # import SAELens & co. outside the timed cases
    return fz


def _with(fuzzer, **changes):
    folder = fuzzer._copy("t", "adapter")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def _refused(call, where, kind=EmprobeError) -> str:
    with pytest.raises(kind) as exc:
        call()
    msg = str(exc.value)
    assert "\n" not in msg and str(where) in msg, msg
    return msg


@pytest.mark.parametrize("key", ["fan_in_fan_out", "use_rslora", "use_dora"])
@pytest.mark.parametrize("value", [None, 0, 1, "false", "true", [False], {}])
def test_flags_must_be_json_booleans(fuzzer, key, value):
    folder = _with(fuzzer, **{key: value})
    assert key in _refused(lambda: read_adapter(folder), folder / "adapter_config.json",
                           FormatError)


@pytest.mark.parametrize("key,value", [
    ("r", 2.0), ("r", True), ("r", "2"), ("r", None), ("lora_alpha", True), ("lora_alpha", "4"),
    ("lora_alpha", 0), ("target_modules", 3), ("target_modules", ["q_proj", 3]),
    ("target_modules", "("), ("layers_to_transform", 0.0), ("layers_to_transform", [0, 1.5]),
    ("layers_to_transform", [10**6]), ("layers_to_transform", True),
    ("base_model_name_or_path", ["x"]), ("layers_pattern", 3), ("rank_pattern", {"q_proj": 2.0}),
])
def test_typed_fields(fuzzer, key, value):
    folder = _with(fuzzer, **{key: value})
    _refused(lambda: read_adapter(folder), folder / "adapter_config.json", FormatError)


def test_valid_flags_and_layers_are_kept(fuzzer):
    folder = _with(fuzzer, use_rslora=True, fan_in_fan_out=False, layers_to_transform=[0, 1],
                   base_model_name_or_path="tiny")
    ad = read_adapter(folder)
    assert fd.check_adapter(ad) is None and len(ad) == 4
    m = next(iter(ad))
    assert m.fan_in_fan_out is False and m.scale == pytest.approx(4 / 2 ** 0.5)
    folder = _with(fuzzer, layers_to_transform=[1])
    assert "layers_to_transform" in _refused(lambda: read_adapter(folder), folder, FormatError)


def test_byte_order_mark(fuzzer):
    folder = fuzzer._copy("t", "adapter")
    plain = read_adapter(folder).config
    f = folder / "adapter_config.json"
    f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    assert read_adapter(folder).config == plain


@pytest.mark.parametrize("kwargs", [{"side": "up"}, {"side": None}, {"k": 0}, {"k": 3},
                                    {"k": True}, {"k": 1.0}, {"module": "o_proj"}])
def test_lora_direction_errors_name_the_adapter(fuzzer, kwargs):
    folder = fuzzer._copy("t", "adapter")
    _refused(lambda: lora_direction(folder, **{"module": "v_proj", **kwargs}), folder,
             (ConfigError, FormatError))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 10**7) | st.floats() | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids,
                                                              max_size=3),
    max_leaves=6,
)


@QUICK
@given(key=st.sampled_from(["r", "lora_alpha", "use_rslora", "fan_in_fan_out", "use_dora",
                            "rank_pattern", "alpha_pattern", "target_modules",
                            "layers_to_transform", "layers_pattern", "peft_type",
                            "base_model_name_or_path"]), value=json_values)
def test_any_config_value(fuzzer, key, value):
    folder = _with(fuzzer, **{key: value})
    must = fd.has_nonfinite(value) or (key in ("use_rslora", "fan_in_fan_out", "use_dora")
                                       and type(value) is not bool)
    out = fd.run_case(fd.Case(lambda: read_adapter(folder), str(folder), must,
                              fd.check_adapter, "prop"), 2.0)
    assert out.kind in ("accepted", "rejected"), out.detail


@QUICK
@given(rng=st.randoms(use_true_random=False))
def test_driver_adapter_mutations(fuzzer, rng: random.Random):
    for target in ("adapter", "lora_direction"):
        case = fuzzer.case(target, rng)
        out = fd.run_case(case, 2.0)
        assert out.kind in ("accepted", "rejected"), f"[{case.label}] {out.kind}: {out.detail}"
