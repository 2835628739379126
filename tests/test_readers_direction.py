"""Direction folders and the converters that read direction metadata JSON (issue 26): a UTF-8
byte-order mark is read the same by every reader, non-finite layers are refused naming the
tensors file, and properties over mutated folders."""

from __future__ import annotations

import json
import math
import random
import warnings

import fuzz_driver as fd
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from emprobe.directions import Direction
from emprobe.directions import formats as F
from emprobe.errors import FormatError
from emprobe.validate import loads_json

QUICK = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))
BOM = b"\xef\xbb\xbf"


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory) -> fd.Fuzzer:
    warnings.simplefilter("ignore")
    fz = fd.Fuzzer(tmp_path_factory.mktemp("readers_direction"))
    fz.warm_up(())  # import SAELens & co. outside the timed cases
    return fz


def _same(a: Direction, b: Direction) -> None:
    assert a.metadata() == b.metadata()
    assert all(torch.equal(a.vectors[la], b.vectors[la]) for la in a.layers)


def test_bom_is_read_the_same_by_every_reader(fuzzer, tmp_path):
    folder = fuzzer._copy("t", "direction")
    plain = Direction.load(folder)
    f = folder / "direction.json"
    f.write_bytes(BOM + f.read_bytes())
    _same(Direction.load(folder), plain)

    caft = fuzzer._copy("t", "caft")
    before = F.from_caft(caft)
    for name in ("spec.json", "direction.json"):
        (caft / name).write_bytes(BOM + (caft / name).read_bytes())
    _same(F.from_caft(caft), before)

    # metadata held as text (npz string, GGUF key): the mark is read as from a file
    meta = json.dumps(plain.metadata())
    assert loads_json("\ufeff" + meta, "x") == loads_json(meta.encode(), "x") == \
        loads_json(BOM + meta.encode(), "x")
    npz = tmp_path / "d.npz"
    arrays = {f"layer_{la}": plain.vectors[la].numpy() for la in plain.layers}
    np.savez(npz, metadata=np.array("\ufeff" + meta), **arrays)  # type: ignore[arg-type]
    _same(F.load_npz(npz), plain.replace())


def test_non_finite_layer_names_the_tensors_file(fuzzer):
    folder = fuzzer._copy("t", "direction")
    path = folder / "direction.safetensors"
    tensors = load_file(str(path))
    tensors["layer.0"][1] = math.inf
    save_file(tensors, str(path))
    with pytest.raises(FormatError) as exc:
        Direction.load(folder)
    assert str(path) in str(exc.value) and "NaN or inf" in str(exc.value)


@QUICK
@given(key=st.sampled_from(["layers", "d_model", "n_layers", "site", "positions", "model",
                            "params", "format_version", "normalisation"]),
       value=st.recursive(st.none() | st.booleans() | st.integers(-1, 10**5) | st.floats() |
                          st.sampled_from(["resid_post", "x", "0", "1.5", "all"]),
                          lambda kids: st.lists(kids, max_size=3) |
                          st.dictionaries(st.sampled_from(["0", "2", "x", "10000"]), kids,
                                          max_size=3), max_leaves=6),
       bom=st.booleans())
def test_any_metadata_value(fuzzer, key, value, bom):
    folder = fuzzer._copy("p", "direction")
    meta = json.loads((folder / "direction.json").read_text())
    meta[key] = value
    (folder / "direction.json").write_bytes((BOM if bom else b"") + json.dumps(meta).encode())
    out = fd.run_case(fd.Case(lambda: Direction.load(folder), str(folder),
                              fd.has_nonfinite(value), fd.check_direction, "p"), 2.0)
    assert out.kind in ("accepted", "rejected"), out.detail


@QUICK
@given(rng=st.randoms(use_true_random=False))
def test_driver_direction_formats(fuzzer, rng: random.Random):
    for target in ("direction", "npz", "caft", "gguf", "bom"):
        case = fuzzer.case(target, rng)
        out = fd.run_case(case, 2.0)
        assert out.kind in ("accepted", "rejected"), f"[{case.label}] {out.kind}: {out.detail}"
