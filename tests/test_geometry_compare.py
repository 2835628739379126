"""Pairwise adapter geometry: matrices, groups, baselines, files, direction links."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from emprobe.errors import ConfigError, DataError
from emprobe.geometry import GeometryConfig, compare_adapters, direction_alignment, read_adapter
from emprobe.geometry import factors as F

MODS = {"self_attn.q_proj": (96, 96), "mlp.down_proj": (96, 160)}


def write_adapter(folder: Path, r: int = 4, seed: int = 0, share_from: int | None = None,
                  layers=(0, 1, 2)) -> Path:
    """Random LoRA folder; with ``share_from`` its factors are a noisy copy of that seed's."""
    g = torch.Generator().manual_seed(seed)
    g_shared = torch.Generator().manual_seed(share_from) if share_from is not None else None
    tensors = {}
    for layer in layers:
        for mod, (d_out, d_in) in MODS.items():
            A = torch.randn(r, d_in, generator=g)
            B = torch.randn(d_out, r, generator=g)
            if g_shared is not None:
                A = torch.randn(r, d_in, generator=g_shared) + 0.3 * A
                B = torch.randn(d_out, r, generator=g_shared) + 0.3 * B
            key = f"base_model.model.model.layers.{layer}.{mod}"
            tensors[f"{key}.lora_A.weight"] = A
            tensors[f"{key}.lora_B.weight"] = B
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r,
         "target_modules": ["q_proj", "down_proj"]}))
    return folder


@pytest.fixture
def family(tmp_path):
    """Two 'related' adapters (noisy copies of one update) and two unrelated ones."""
    return [write_adapter(tmp_path / "em1", seed=1, share_from=100),
            write_adapter(tmp_path / "em2", seed=2, share_from=100),
            write_adapter(tmp_path / "ctrl1", seed=3),
            write_adapter(tmp_path / "ctrl2", seed=4)]


def test_pairwise_matrices_match_direct_computation(family):
    res = compare_adapters(family, config=GeometryConfig(k=3), progress=False)
    assert res.labels == ["em1", "em2", "ctrl1", "ctrl2"]
    assert len(res.modules) == 6
    ov = res.matrix("overlap_right")
    assert torch.allclose(torch.diagonal(ov), torch.ones(4, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(ov, ov.mT)
    # one module by hand
    a, b = read_adapter(family[0]).by_key(), read_adapter(family[2]).by_key()
    ma, mb = a[(1, "down_proj")], b[(1, "down_proj")]
    da = (ma.scale * ma.B.double() @ ma.A.double())
    db = (mb.scale * mb.B.double() @ mb.A.double())
    Va = torch.linalg.svd(da, full_matrices=False)[2][:3].mT
    Vb = torch.linalg.svd(db, full_matrices=False)[2][:3].mT
    mi = res.modules.index((1, "down_proj"))
    dense_overlap = float((Va.mT @ Vb).square().sum() / 3)
    assert math.isclose(float(res.pairwise["overlap_right"][0, 2, mi]), dense_overlap,
                        abs_tol=1e-8)
    dense_cos = float((da * db).sum() / (da.norm() * db.norm()))
    assert math.isclose(float(res.pairwise["frob_cos"][0, 2, mi]), dense_cos, abs_tol=1e-8)


def test_related_adapters_overlap_more_than_unrelated_and_baselines(family):
    res = compare_adapters(family, config=GeometryConfig(k=4), progress=False)
    summary = res.group_summary(["em", "em", "ctrl", "ctrl"])
    within_em = summary["within:em"]["overlap_right"]["mean"]
    across = summary["across:em|ctrl"]["overlap_right"]["mean"]
    gauss = summary["gaussian"]["overlap_right"]["mean"]
    assert within_em > 0.5
    assert across < 0.3 and gauss < 0.3
    assert summary["within:em"]["angle_right"]["mean"] < summary["across:em|ctrl"]["angle_right"][
        "mean"]
    # the random-subspace expectation k/d is what unrelated pairs sit near
    assert summary["random_overlap_expected"]["right"] == pytest.approx(
        (4 / 96 + 4 / 160) / 2)
    per_layer = res.per_layer("overlap_right")
    assert per_layer.shape == (4, 4, 3)
    assert res.per_type("angle_left").shape == (4, 4, 2)


def test_base_weight_baseline(family):
    g = torch.Generator().manual_seed(5)
    weights = {f"model.layers.{lay}.{mod}": torch.randn(*shape, generator=g)
               for lay in range(3) for mod, shape in MODS.items()}
    # adapter aligned with its base weight's top directions on one module
    res = compare_adapters(family[:2], base_weights=weights, progress=False)
    assert set(res.base) >= {"frob_cos", "overlap_right", "angle_left"}
    assert torch.isfinite(res.base["overlap_right"]).all()
    assert float(res.base["overlap_right"].mean()) < 0.4


def test_base_weights_from_folder_reads_single_tensors(tmp_path):
    from emprobe.models.base_weights import base_weights_from_folder

    w = torch.randn(96, 96)
    save_file({"model.layers.0.self_attn.q_proj.weight": w, "other": torch.zeros(2)},
              str(tmp_path / "model.safetensors"))
    get = base_weights_from_folder(tmp_path)
    assert torch.equal(get("model.layers.0.self_attn.q_proj"), w)
    assert get("model.layers.9.self_attn.q_proj") is None


def test_save_writes_json_jsonl_safetensors(family, tmp_path):
    res = compare_adapters(family, labels=["a", "b", "c", "d"], progress=False)
    paths = res.save(tmp_path / "out", groups={"a": "x", "b": "x", "c": "y", "d": "y"})
    summary = json.loads(paths["summary"].read_text())
    assert summary["labels"] == ["a", "b", "c", "d"]
    assert len(summary["matrices"]["overlap_right"]) == 4
    tensors = load_file(str(paths["tensors"]))
    assert tensors["pairwise.angle_right"].shape == (4, 4, 6)
    assert tensors["per_layer.overlap_left"].shape == (4, 4, 3)
    lines = paths["pairs"].read_text().splitlines()
    assert len(lines) == 10 * 6  # pairs i <= j times modules
    groups = json.loads(paths["groups"].read_text())
    assert {"within:x", "within:y", "across:x|y", "gaussian"} <= set(groups)


def test_bad_inputs(family, tmp_path):
    with pytest.raises(ConfigError, match="labels"):
        compare_adapters(family, labels=["only-one"], progress=False)
    other = write_adapter(tmp_path / "other", layers=(7,))
    with pytest.raises(DataError, match="share no"):
        compare_adapters([family[0], other], progress=False)
    res = compare_adapters(family[:2], progress=False)
    with pytest.raises(ConfigError, match="unknown geometry metric"):
        res.matrix("nope")


def test_direction_alignment_finds_planted_direction(tmp_path):
    folder = write_adapter(tmp_path / "a", seed=9)
    ad = read_adapter(folder)
    mo = ad.by_key()[(1, "q_proj")]
    top_left = F.lowrank_svd(mo.B.double(), mo.A.double(), mo.scale).U[:, 0]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(96, generator=g, dtype=torch.float64)
    recs = direction_alignment(ad, {1: top_left, 2: noise}, k=4, side="left")
    by = {(r["layer"], r["module_type"]): r for r in recs}
    assert by[(1, "q_proj")]["abs_cos"][0] == pytest.approx(1.0, abs=1e-6)
    assert by[(2, "q_proj")]["max_abs_cos"] < 0.6
    assert (0, "q_proj") not in by  # no direction at layer 0
    # auto side: down_proj writes 96-wide outputs; a 160-wide vector would only fit its input
    recs_auto = direction_alignment(ad, torch.ones(160), k=2)
    assert {r["side"] for r in recs_auto} == {"right"}
    assert {r["module_type"] for r in recs_auto} == {"down_proj"}


def test_direction_alignment_accepts_direction_objects(tmp_path):
    directions = pytest.importorskip("emprobe.directions")
    Direction = getattr(directions, "Direction", None)
    if Direction is None:
        pytest.skip("emprobe.directions.Direction not available")
    folder = write_adapter(tmp_path / "a", seed=9)
    vec = torch.randn(96)
    try:
        d = Direction(vectors={1: vec}, model="test", d_model=96)
    except TypeError:
        pytest.skip("Direction constructor differs")
    recs = direction_alignment(folder, d, k=2)
    ref = direction_alignment(folder, {1: vec}, k=2)
    assert [r["abs_cos"] for r in recs] == [r["abs_cos"] for r in ref]
