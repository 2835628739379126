"""Persona-vector files and steering-vectors dicts (issue 26): NaN / inf anywhere refused,
sane layer keys, errors naming the file (or "steering vector") and the field, and properties
over mutated inputs."""

from __future__ import annotations

import math
import random
import warnings

import fuzz_driver as fd
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from emprobe.directions.formats import from_persona, from_steering_vector, load_persona_tensor
from emprobe.errors import EmprobeError, FormatError, ShapeError

QUICK = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory) -> fd.Fuzzer:
    warnings.simplefilter("ignore")
    fz = fd.Fuzzer(tmp_path_factory.mktemp("readers_vectors"))
    fz.warm_up(())  # import SAELens & co. outside the timed cases
    return fz


def _save(path, t) -> None:
    if path.suffix == ".pt":
        torch.save(t, path)
    else:
        save_file({"vectors": t.contiguous()}, str(path))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("row", [0, 2, 4])  # the embeddings row and the final-norm row too
def test_persona_nan_rows_are_refused_anywhere(tmp_path, suffix, row):
    t = torch.randn(5, 8)
    t[row] = math.nan
    p = tmp_path / f"v{suffix}"
    _save(p, t)
    with pytest.raises(FormatError) as exc:
        from_persona(p)
    assert str(p) in str(exc.value) and "NaN" in str(exc.value)


def test_persona_errors_name_the_file(tmp_path):
    p = tmp_path / "v.safetensors"
    _save(p, torch.randn(1, 8))
    with pytest.raises(ShapeError, match=str(p)):
        load_persona_tensor(p)
    _save(p, torch.randn(5, 8))
    for layers in ([3], [9], [-1], [1.5], ["x"]):
        with pytest.raises(EmprobeError) as exc:
            from_persona(p, layers=layers)
        assert str(exc.value).startswith(str(p)), str(exc.value)
    _save(p, torch.full((5, 8), 1e300, dtype=torch.float64))
    with pytest.raises(FormatError, match="overflow"):
        load_persona_tensor(p)
    d = from_persona(_ok(tmp_path))
    assert d.layers == [0, 1, 2] and fd.check_direction(d) is None


def _ok(tmp_path):
    p = tmp_path / "ok.safetensors"
    _save(p, torch.randn(5, 8))
    return p


@pytest.mark.parametrize("key", [10**9, 10_000, "10000", -1, "01", 1.0, True, "1.5", None])
def test_steering_absurd_layer_keys(key):
    with pytest.raises(FormatError) as exc:
        from_steering_vector({"layer_activations": {key: torch.randn(8)}})
    assert str(exc.value).startswith("steering vector: layer_activations")


def test_steering_duplicate_and_non_finite():
    with pytest.raises(FormatError, match="two keys for layer 3"):
        from_steering_vector({"layer_activations": {3: torch.randn(8), "3": torch.randn(8)}})
    for bad in (torch.full((8,), math.inf), np.full(8, 1e300), [math.nan] * 8):
        with pytest.raises(FormatError, match=r"^steering vector: layer_activations\[2\]"):
            from_steering_vector({"layer_activations": {2: bad}})
    with pytest.raises(FormatError, match="^steering vector: layer_type"):
        from_steering_vector({"layer_activations": {2: torch.randn(8)}, "layer_type": "nope"})
    d = from_steering_vector({"layer_activations": {9999: torch.randn(8), np.int64(3):
                                                    torch.randn(8)}, "layer_type": "mlp"})
    assert d.layers == [3, 9999] and d.site == "mlp_out"


@QUICK
@given(shape=st.lists(st.integers(0, 6), min_size=0, max_size=3),
       bad=st.sampled_from([None, math.nan, math.inf, -math.inf]),
       where=st.integers(0, 200), suffix=st.sampled_from([".pt", ".safetensors"]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64]))
def test_persona_any_tensor(fuzzer, shape, bad, where, suffix, dtype):
    t = torch.randn(shape, dtype=torch.float64)
    if bad is not None and t.numel():
        t.view(-1)[where % t.numel()] = bad
    p = fuzzer.root / f"prop{suffix}"
    _save(p, t.to(dtype) if dtype.is_floating_point or bad is None else t)
    must = bad is not None and t.numel() > 0
    out = fd.run_case(fd.Case(lambda: from_persona(p), str(p), must, fd.check_direction, "p"), 2.0)
    assert out.kind in ("accepted", "rejected"), out.detail


@QUICK
@given(rng=st.randoms(use_true_random=False))
def test_driver_persona_and_steering(fuzzer, rng: random.Random):
    for target in ("persona", "steering"):
        case = fuzzer.case(target, rng)
        out = fd.run_case(case, 2.0)
        assert out.kind in ("accepted", "rejected"), f"[{case.label}] {out.kind}: {out.detail}"
