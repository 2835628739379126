"""The SAELens folder reader (emprobe.saelens_format, used by load_sae, sae_site and
sae_direction): regression tests for each failure class of issue 26, and properties that any
mutated folder either loads to a consistent SAE or raises one EmprobeError line naming it."""

from __future__ import annotations

import json
import math
import random
import warnings

import fuzz_driver as fd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from emprobe.directions import sae_direction
from emprobe.errors import EmprobeError, FormatError, ShapeError
from emprobe.sae.training import load_sae, sae_site
from emprobe.saelens_format import hook_site, read_sae_config, read_sae_folder

QUICK = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))
SEEDS = ("sae", "sae6")


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory) -> fd.Fuzzer:
    warnings.simplefilter("ignore")
    fz = fd.Fuzzer(tmp_path_factory.mktemp("readers_sae"))
    fz.warm_up(())  # import SAELens & co. outside the timed cases
    return fz


def _edit_cfg(folder, **changes) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    meta = changes.pop("metadata_changes", None)
    cfg.update(changes)
    if meta:
        cfg["metadata"].update(meta)
    (folder / "cfg.json").write_text(json.dumps(cfg))


def _edit_weights(folder, **changes) -> None:
    path = folder / "sae_weights.safetensors"
    tensors = load_file(str(path))
    for k, v in changes.items():
        if v is None:
            tensors.pop(k, None)
        else:
            tensors[k] = v
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def _refused(call, folder, kind=EmprobeError) -> str:
    with pytest.raises(kind) as exc:
        call()
    msg = str(exc.value)
    assert "\n" not in msg and str(folder) in msg, msg
    return msg


# -- issue 26: raw exceptions ----------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("key,value", [
    ("metadata", None), ("metadata", [1, 2]), ("metadata", "x"), ("d_in", None),
    ("d_in", [8]), ("d_sae", "16"), ("k", [4]), ("architecture", None), ("architecture", ["topk"]),
    ("dtype", 3), ("normalize_activations", ["none"]), ("activation_fn_kwargs", [1]),
])
def test_cfg_fields_of_the_wrong_type_are_one_line_errors(fuzzer, seed, key, value):
    folder = fuzzer._copy("t", seed)
    _edit_cfg(folder, **{key: value})
    if key == "activation_fn_kwargs" and seed == "sae":
        _edit_cfg(folder, activation_fn="topk")
    elif key == "activation_fn_kwargs":
        return  # SAELens 6 configs do not read it
    if key == "metadata" and value is None:  # no metadata: loads; only emprobe.json names a site
        sae = load_sae(folder)
        if seed == "sae6":
            assert sae_site(sae, folder) == ("resid_post", 1)
        else:
            _refused(lambda: sae_site(sae, folder), folder, FormatError)
        return
    _refused(lambda: load_sae(folder), folder, FormatError)
    _refused(lambda: sae_direction(folder, [0]), folder, FormatError)


def test_emprobe_json_without_layer_is_a_format_error(fuzzer):
    folder = fuzzer._copy("t", "sae6")
    (folder / "emprobe.json").write_text(json.dumps({"site": "resid_post"}))
    msg = _refused(lambda: sae_site(None, folder), folder / "emprobe.json", FormatError)
    assert "'layer'" in msg


# -- issue 26: accepted although invalid -----------------------------------------------------
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_weights_are_refused(fuzzer, bad):
    folder = fuzzer._copy("t", "sae6")
    w = load_file(str(folder / "sae_weights.safetensors"))["W_enc"].clone()
    w[3, 5] = bad
    _edit_weights(folder, W_enc=w)
    assert "NaN or inf" in _refused(lambda: load_sae(folder), folder, FormatError)


def test_weights_that_overflow_the_config_dtype_are_refused(fuzzer):
    folder = fuzzer._copy("t", "sae6")
    _edit_weights(folder, W_dec=torch.full((16, 8), 1e6, dtype=torch.float32))
    _edit_cfg(folder, dtype="float16")
    assert "float16" in _refused(lambda: load_sae(folder), folder, FormatError)


@pytest.mark.parametrize("name,shape", [("W_dec", (8, 16)), ("W_dec", (16, 9)),
                                        ("b_enc", (8,)), ("b_dec", (16,)), ("W_enc", (8, 17))])
def test_weights_of_the_wrong_shape_are_refused(fuzzer, name, shape):
    folder = fuzzer._copy("t", "sae6")
    _edit_weights(folder, **{name: torch.zeros(shape)})
    assert name in _refused(lambda: load_sae(folder), folder, ShapeError)


@pytest.mark.parametrize("key,value", [("d_in", 9), ("d_sae", 32), ("d_in", 16), ("d_sae", 8)])
def test_config_widths_must_match_the_weights(fuzzer, key, value):
    folder = fuzzer._copy("t", "sae6")
    _edit_cfg(folder, **{key: value})
    _refused(lambda: load_sae(folder), folder, ShapeError)
    _refused(lambda: sae_direction(folder, [0]), folder, ShapeError)


def test_architecture_must_match_the_tensors(fuzzer):
    folder = fuzzer._copy("t", "sae6")
    _edit_cfg(folder, architecture="jumprelu")
    assert "threshold" in _refused(lambda: load_sae(folder), folder, FormatError)
    _edit_weights(folder, threshold=torch.rand(16))
    assert type(load_sae(folder)).__name__ == "JumpReLUSAE"  # now consistent
    _edit_cfg(folder, architecture="topk")
    assert "threshold" in _refused(lambda: load_sae(folder), folder, FormatError)
    _edit_cfg(folder, architecture="gated")
    _refused(lambda: load_sae(folder), folder, FormatError)
    _edit_cfg(folder, architecture="batchtopk")  # a training architecture, saved as jumprelu
    assert "architecture" in _refused(lambda: load_sae(folder), folder, FormatError)


@pytest.mark.parametrize("key", ["apply_b_dec_to_input", "rescale_acts_by_decoder_norm"])
@pytest.mark.parametrize("value", [1, 0, "true", "false", None, [True]])
def test_flags_must_be_json_booleans(fuzzer, key, value):
    folder = fuzzer._copy("t", "sae6")
    _edit_cfg(folder, **{key: value})
    assert key in _refused(lambda: load_sae(folder), folder, FormatError)


@pytest.mark.parametrize("meta", [
    {"emprobe_site": "resid_mid"}, {"emprobe_layer": 1.5}, {"emprobe_layer": True},
    {"emprobe_layer": "1"}, {"emprobe_layer": 2}, {"emprobe_site": "attn_out"},
    {"hook_name": "blocks.3.hook_resid_post"}, {"emprobe_layer": None},
])
def test_site_and_layer_are_known_integral_and_agree(fuzzer, meta):
    folder = fuzzer._copy("t", "sae6")
    _edit_cfg(folder, metadata_changes=meta)
    _refused(lambda: load_sae(folder), folder / "cfg.json", FormatError)


@pytest.mark.parametrize("rec", [{"site": "resid_post", "layer": 1.0},
                                 {"site": "resid_post", "layer": 2},
                                 {"site": "nope", "layer": 1}])
def test_emprobe_json_is_checked_against_the_config(fuzzer, rec):
    folder = fuzzer._copy("t", "sae6")
    (folder / "emprobe.json").write_text(json.dumps(rec))
    _refused(lambda: load_sae(folder), folder / "emprobe.json", FormatError)


def test_a_valid_folder_loads_consistently_in_both_layouts(fuzzer):
    for seed in SEEDS:
        folder = fuzzer._copy("t", seed)
        sae = load_sae(folder)
        assert fd.check_sae(sae) is None
        assert sae_site(sae, folder) == sae_site(sae) == ("resid_post", 1)
        got = read_sae_folder(folder)
        assert got.d_in == 8 and got.d_sae == 16 and got.k == 4 and got.site == "resid_post"
        weights = load_file(str(folder / "sae_weights.safetensors"))
        assert torch.equal(sae.W_dec.detach(), weights["W_dec"])
        d = sae_direction(folder, [2, 5])
        assert d.layers == [1] and d.site == "resid_post" and d.vectors[1].shape == (8, 2)


def test_byte_order_mark_is_read_like_plain_utf8(fuzzer):
    for seed in SEEDS:
        folder = fuzzer._copy("t", seed)
        plain = read_sae_config(folder).cfg
        for name in ("cfg.json", "emprobe.json"):
            if (folder / name).is_file():
                f = folder / name
                f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
        assert read_sae_config(folder).cfg == plain
        assert fd.check_sae(load_sae(folder)) is None


def test_hook_names():
    assert hook_site("blocks.4.hook_resid_post") == ("resid_post", 4)
    assert hook_site("blocks.0.mlp.hook_out") == ("mlp_out", 0)
    assert hook_site("model.layers.7.resid_pre") == ("resid_pre", 7)
    for bad in ("blocks.1.5.hook_resid_post", "blocks.01.hook_in", "blocks.1.hook_z",
                "blocks.99999.hook_out", "embed.hook_out", ""):
        assert hook_site(bad) is None


def test_cli_directions_sae_bad_latents_is_one_line(fuzzer, capsys):
    from emprobe.cli import main

    folder = fuzzer._copy("t", "sae6")
    for latents in ("", "a", "1,,2", "-1", "99"):
        rc = main(["directions", "sae", "--sae", str(folder), "--latents", latents,
                   "--out", str(fuzzer.root / "out")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1, err
        assert len(err.split("error:", 1)[1].strip()) > 10, err


# -- properties ------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=True) |
    st.sampled_from(["topk", "jumprelu", "standard", "float16", "none", "hook_z", "resid_post",
                     "blocks.1.hook_resid_post", "6.0.0", "x", ""]),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids,
                                                              max_size=3),
    max_leaves=6,
)
CFG_KEYS = ["architecture", "d_in", "d_sae", "k", "dtype", "apply_b_dec_to_input",
            "rescale_acts_by_decoder_norm", "normalize_activations", "reshape_activations",
            "metadata", "sae_lens_version", "hook_point", "activation_fn", "activation_fn_kwargs"]
META_KEYS = ["hook_name", "model_name", "emprobe_site", "emprobe_layer", "sae_lens_version",
             "emprobe_hook_name_bridge", "hook_head_index", "prepend_bos", "context_size"]


def _consistent_or_named(folder) -> None:
    case = fd.Case(lambda: (load_sae(folder), sae_site(load_sae(folder), folder)), str(folder),
                   False, fd.check_sae_and_site, "prop")
    out = fd.run_case(case, 2.0)
    assert out.kind in ("accepted", "rejected"), out.detail


@QUICK
@given(seed=st.sampled_from(SEEDS), key=st.sampled_from(CFG_KEYS), value=json_values)
def test_any_cfg_value(fuzzer, seed, key, value):
    folder = fuzzer._copy("p", seed)
    _edit_cfg(folder, **{key: value})
    _consistent_or_named(folder)


@QUICK
@given(seed=st.sampled_from(SEEDS), key=st.sampled_from(META_KEYS), value=json_values)
def test_any_metadata_value(fuzzer, seed, key, value):
    folder = fuzzer._copy("p", seed)
    _edit_cfg(folder, metadata_changes={key: value})
    _consistent_or_named(folder)


@QUICK
@given(seed=st.sampled_from(SEEDS),
       name=st.sampled_from(["W_enc", "W_dec", "b_enc", "b_dec", "threshold", "b_gate", "x"]),
       shape=st.lists(st.sampled_from([0, 1, 8, 16]), min_size=0, max_size=3),
       fill=st.sampled_from([0.0, 1.0, 1e5, math.inf, math.nan]),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.float64, torch.int32]))
def test_any_tensor(fuzzer, seed, name, shape, fill, dtype):
    folder = fuzzer._copy("p", seed)
    t = torch.full(shape, fill, dtype=torch.float64)
    _edit_weights(folder, **{name: t.to(dtype) if dtype.is_floating_point or math.isfinite(fill)
                             else t})
    case = fd.Case(lambda: load_sae(folder), str(folder), not math.isfinite(fill) and
                   0 not in shape, fd.check_sae, "prop")
    out = fd.run_case(case, 2.0)
    assert out.kind in ("accepted", "rejected"), out.detail


@QUICK
@given(rng=st.randoms(use_true_random=False))
def test_driver_sae_mutations(fuzzer, rng: random.Random):
    for target in ("sae", "sae_direction"):
        case = fuzzer.case(target, rng)
        out = fd.run_case(case, 2.0)
        assert out.kind in ("accepted", "rejected"), f"[{case.label}] {out.kind}: {out.detail}"


def test_cli_directions_sae_out_never_replaces_a_file(fuzzer, capsys):
    from emprobe.cli import main

    folder = fuzzer._copy("t", "sae6")
    afile = fuzzer.root / "afile"
    afile.write_text("keep me")
    for out in (str(afile), ""):
        rc = main(["directions", "sae", "--sae", str(folder), "--latents", "1", "--out", out])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "unexpected" not in err, err
    assert afile.read_text() == "keep me"
    assert not (fuzzer.root / ".afile.old").exists()
