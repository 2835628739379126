"""One intervention input: a Direction, a tensor or {layer: tensor} through as_layer_table,
accepted the same way by steer, ablate, record_projections, CAFT, preventative steering and
monitoring."""

from __future__ import annotations

import pytest
import torch

from emprobe.directions import Direction, ModelMismatchError
from emprobe.errors import ConfigError, ShapeError, SiteError
from emprobe.hooks import ablate, as_layer_table, check_positions, collect, steer
from emprobe.train import CAFT, PreventativeSteering
from emprobe.train.monitor import normalise_directions

CONV = [[{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello there."}]]


def _direction(subject, layers=(1,), **kw) -> Direction:
    gen = torch.Generator().manual_seed(0)
    vecs = {la: torch.randn(subject.d_model, generator=gen) for la in layers}
    return Direction.from_subject(subject, vecs, **kw)


def test_three_kinds_of_input_give_the_same_table(tiny_llama):
    d = _direction(tiny_llama, layers=(1, 2))
    v = d.vectors[1]
    from_dir = as_layer_table(d, tiny_llama, layers=[1])
    from_tensor = as_layer_table(v, tiny_llama, layers=1)
    from_map = as_layer_table({1: v, 2: d.vectors[2]}, tiny_llama, layers=[1])
    for table in (from_dir, from_tensor, from_map):
        assert list(table) == [1] and torch.equal(table[1], v)
    assert list(as_layer_table({-1: v}, tiny_llama)) == [tiny_llama.n_layers - 1]


def test_refusals_are_one_line_emprobe_errors(tiny_llama):
    d = _direction(tiny_llama)
    other = d.replace(model="someone/else", fingerprint="0" * 16)
    cases = [
        (lambda: as_layer_table(torch.randn(tiny_llama.d_model), tiny_llama), ConfigError),
        (lambda: as_layer_table({1: torch.randn(3)}, tiny_llama), ShapeError),
        (lambda: as_layer_table({99: torch.randn(tiny_llama.d_model)}, tiny_llama), SiteError),
        (lambda: as_layer_table(d, tiny_llama, layers=[0]), SiteError),
        (lambda: as_layer_table(other, tiny_llama), ModelMismatchError),
        (lambda: as_layer_table("nope", tiny_llama), ConfigError),  # type: ignore[arg-type]
        (lambda: check_positions("middle"), SiteError),
    ]
    for call, err in cases:
        with pytest.raises(err) as info:
            call()
        assert "\n" not in str(info.value)
    assert as_layer_table(other, tiny_llama, allow_other_model=True).keys() == {1}


def test_steer_and_ablate_take_a_direction_and_its_site(tiny_llama):
    d = _direction(tiny_llama, site="resid_pre")
    base = collect(tiny_llama, CONV, layers=[1], site="resid_pre").acts[1]
    with steer(tiny_llama, d, coeff=3.0):
        moved = collect(tiny_llama, CONV, layers=[1], site="resid_pre").acts[1]
    with steer(tiny_llama, {1: d.vectors[1]}, coeff=3.0, site="resid_pre"):
        same = collect(tiny_llama, CONV, layers=[1], site="resid_pre").acts[1]
    assert torch.allclose(moved, same)
    assert torch.allclose(moved - base, 3.0 * d.vectors[1].expand_as(base), atol=1e-4)
    with ablate(tiny_llama, d):
        cut = collect(tiny_llama, CONV, layers=[1], site="resid_pre").acts[1]
    unit = d.vectors[1] / d.vectors[1].norm()
    assert (cut.float() @ unit).abs().max() < 1e-4
    assert (base.float() @ unit).abs().max() > 1e-3


def test_training_interventions_and_monitoring_accept_directions(tiny_llama):
    d = _direction(tiny_llama, site="resid_pre")
    caft = CAFT(d, mode="zero")
    steer_iv = PreventativeSteering(d, coeff=2.0)
    assert caft.site == steer_iv.site == "resid_pre"
    assert caft.bases[1].shape == (tiny_llama.d_model, 1)
    caft.validate(tiny_llama)
    steer_iv.validate(tiny_llama)
    other = d.replace(model="someone/else", fingerprint="0" * 16)
    with pytest.raises(ModelMismatchError):
        CAFT(other).validate(tiny_llama)
    with pytest.raises(ConfigError):
        CAFT(d, mode="half")
    mon = normalise_directions({"persona": d, "raw": {2: d.vectors[1]}}, tiny_llama)
    assert set(mon) == {"persona", "raw"} and torch.equal(mon["persona"][1], d.vectors[1])
    assert list(normalise_directions(d, tiny_llama)) == ["dir"]
