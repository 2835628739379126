"""The Direction artifact: save / load, validation errors, compatibility checks."""

import json

import pytest
import torch

from emprobe import load_model
from emprobe.directions import Direction, ModelMismatchError
from emprobe.errors import FormatError, ShapeError, SiteError


def _direction(subject, k=None):
    g = torch.Generator().manual_seed(0)
    shape = (subject.d_model,) if k is None else (subject.d_model, k)
    return Direction.from_subject(
        subject, {1: torch.randn(shape, generator=g), 3: torch.randn(shape, generator=g)},
        method="test", sign="test sign", params={"a": 1},
    )


def test_save_load_roundtrip(tiny_llama, tmp_path):
    d = _direction(tiny_llama, k=3)
    d.save(tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["direction.json", "direction.safetensors"]
    back = Direction.load(tmp_path / "d")
    assert back.layers == [1, 3] and back.d_model == 64 and back.n_layers == 4
    for la in d.layers:
        assert torch.equal(back.vectors[la], d.vectors[la])
    meta = json.loads((tmp_path / "d" / "direction.json").read_text())
    for key in ("model", "fingerprint", "d_model", "site", "layer_convention", "positions",
                "normalisation", "sign", "method", "params", "provenance", "created",
                "emprobe_version", "layers"):
        assert key in meta
    assert meta["fingerprint"] == tiny_llama.fingerprint()
    assert meta["layers"] == {"1": [64, 3], "3": [64, 3]}


def test_helpers(tiny_llama):
    d = _direction(tiny_llama, k=3)
    q = d.basis(1)
    assert torch.allclose(q.T @ q, torch.eye(3), atol=1e-5)
    assert torch.allclose(d.unit().vectors[1].norm(dim=0), torch.ones(3), atol=1e-5)
    assert d.vector(3, 2).shape == (64,)
    with pytest.raises(ShapeError):
        d.vector(3, 5)
    with pytest.raises(SiteError, match="no layer 2"):
        d.vector(2)
    sel = d.select(components={3: [0, 2]})
    assert sel.layers == [3] and sel.vectors[3].shape == (64, 2)
    single = _direction(tiny_llama)
    assert single.stack().shape == (2, 64)


def test_load_errors(tiny_llama, tmp_path):
    d = _direction(tiny_llama)
    d.save(tmp_path / "d")
    meta_path = tmp_path / "d" / "direction.json"
    good = json.loads(meta_path.read_text())
    # missing key
    bad = dict(good)
    del bad["site"]
    meta_path.write_text(json.dumps(bad))
    with pytest.raises(FormatError, match="missing key 'site'"):
        Direction.load(tmp_path / "d")
    # declared shape disagrees with the tensor
    bad = dict(good, layers={"1": [32], "3": [64]})
    meta_path.write_text(json.dumps(bad))
    with pytest.raises(ShapeError, match="layer.1"):
        Direction.load(tmp_path / "d")
    # d_model disagrees with the tensors
    meta_path.write_text(json.dumps(dict(good, d_model=32)))
    with pytest.raises(ShapeError, match="d_model is 32"):
        Direction.load(tmp_path / "d")
    # layer beyond the model
    meta_path.write_text(json.dumps(dict(good, n_layers=2)))
    with pytest.raises(SiteError, match="out of range"):
        Direction.load(tmp_path / "d")
    # corrupt JSON
    meta_path.write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        Direction.load(tmp_path / "d")
    meta_path.write_text(json.dumps(good))
    # corrupt tensors
    (tmp_path / "d" / "direction.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(FormatError, match="safetensors"):
        Direction.load(tmp_path / "d")
    with pytest.raises(FormatError, match="not a direction folder"):
        Direction.load(tmp_path / "missing")


def test_constructor_validation():
    with pytest.raises(ShapeError, match="d_model is 8"):
        Direction({0: torch.ones(4)}, model="m", d_model=8)
    with pytest.raises(SiteError, match="unknown site"):
        Direction({0: torch.ones(8)}, model="m", d_model=8, site="resid_mid")
    with pytest.raises(ShapeError, match="NaN"):
        Direction({0: torch.full((8,), float("nan"))}, model="m", d_model=8)
    with pytest.raises(ShapeError, match="no layers"):
        Direction({}, model="m", d_model=8)


def test_check_compatible(tiny_llama, narrow_model):
    d = _direction(tiny_llama)
    d.check_compatible(tiny_llama)
    other = load_model("tiny-qwen2")  # same width, another model
    with pytest.raises(ModelMismatchError, match="allow_other_model"):
        d.check_compatible(other)
    d.check_compatible(other, allow_other_model=True)
    wide = Direction({1: torch.ones(narrow_model.d_model)}, model="x",
                     d_model=narrow_model.d_model)
    with pytest.raises(ShapeError, match="width"):
        wide.check_compatible(tiny_llama, allow_other_model=True)


@pytest.fixture
def narrow_model():
    class _Fake:  # a 32-wide "model" is enough to test the width check
        d_model = 32
    return _Fake()
