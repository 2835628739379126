"""Converters: round trips, GGUF read back with the gguf package, layer mappings."""

import json

import numpy as np
import pytest
import torch

from emprobe.directions import Direction
from emprobe.directions import formats as f
from emprobe.errors import FormatError, ShapeError, SiteError


@pytest.fixture
def direction():
    g = torch.Generator().manual_seed(0)
    return Direction({la: torch.randn(64, generator=g) for la in (0, 1, 3)}, model="tiny-llama",
                     d_model=64, n_layers=4, fingerprint="abc", method="mean_difference",
                     sign="pos minus neg")


def test_gguf_written_is_read_by_gguf_package(direction, tmp_path):
    import gguf

    path = tmp_path / "cv.gguf"
    info = f.to_gguf(direction, path, model_hint="llama")
    assert info["layers"] == [1, 3] and info["dropped"] == [0]
    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "controlvector"
    hint = reader.fields["controlvector.model_hint"]
    assert bytes(hint.parts[hint.data[0]]).decode() == "llama"
    count = reader.fields["controlvector.layer_count"]
    assert int(count.parts[count.data[0]][0]) == 2
    names = {t.name: t for t in reader.tensors}
    assert sorted(names) == ["direction.1", "direction.3"]
    for la in (1, 3):
        t = names[f"direction.{la}"]
        assert list(t.shape) == [64] and t.tensor_type == gguf.GGMLQuantizationType.F32
        assert np.allclose(np.array(t.data), direction.vector(la).numpy())
    back = f.from_gguf(path)
    assert back.layers == [1, 3] and back.model == "tiny-llama" and back.fingerprint == "abc"
    assert torch.allclose(back.vector(3), direction.vector(3))
    with pytest.raises(FormatError, match="layer 0"):
        f.to_gguf(direction, tmp_path / "x.gguf", strict=True)


def test_gguf_foreign_file_and_errors(direction, tmp_path):
    import gguf

    path = tmp_path / "repeng.gguf"
    w = gguf.GGUFWriter(str(path), "controlvector")
    w.add_string("controlvector.model_hint", "mistral")
    w.add_uint32("controlvector.layer_count", 1)
    w.add_tensor("direction.5", np.ones(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    d = f.from_gguf(path)
    assert d.layers == [5] and d.model == "mistral" and d.method == "imported_gguf"
    (tmp_path / "bad.gguf").write_bytes(b"nope")
    with pytest.raises(FormatError):
        f.from_gguf(tmp_path / "bad.gguf")
    with pytest.raises(FormatError, match="resid_post"):
        f.to_gguf(direction.replace(site="mlp_out"), tmp_path / "m.gguf")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_persona_roundtrip(direction, tmp_path, suffix):
    path = tmp_path / f"trait_response_avg_diff{suffix}"
    with pytest.warns(UserWarning, match="final-norm"):
        f.save_persona(direction, path)
    t = f.load_persona_tensor(path)
    assert t.shape == (5, 64)  # n_layers + 1 rows, row 0 = embeddings
    assert torch.all(t[0] == 0)
    assert torch.allclose(t[2], direction.vector(1))  # emprobe layer 1 -> row 2
    # layer 3 is the last block: row 4 is post final-norm in HF / persona_vectors
    assert torch.all(t[4] == 0)
    back = f.from_persona(path, model="tiny-llama")
    assert back.layers == [0, 1]
    for la in back.layers:
        assert torch.allclose(back.vector(la), direction.vector(la))


def test_persona_refuses_pickled_objects(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"a": 1, "f": print}, path)
    with pytest.raises(FormatError):
        f.load_persona_tensor(path)
    with pytest.raises(SiteError):
        f.from_persona(torch.zeros(5, 8), layers=[4])


def test_caft_roundtrip_and_spec(tmp_path):
    g = torch.Generator().manual_seed(1)
    d = Direction({10: torch.linalg.qr(torch.randn(64, 20, generator=g))[0],
                   2: torch.linalg.qr(torch.randn(64, 20, generator=g))[0]},
                  model="m", d_model=64, normalisation="orthonormal", method="pca_difference")
    f.to_caft(d, tmp_path / "caft")
    arr = np.load(tmp_path / "caft" / "layer_10.npy")
    assert arr.shape == (20, 64)
    full = f.from_caft(tmp_path / "caft")
    assert torch.allclose(full.vectors[10], d.vectors[10]) and full.model == "m"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"10": [0, 12]}))
    chosen = f.from_caft(tmp_path / "caft", spec=spec)
    assert chosen.layers == [10] and chosen.vectors[10].shape == (64, 2)
    assert torch.allclose(chosen.vectors[10][:, 1], d.vectors[10][:, 12])
    with pytest.raises(ShapeError, match="out of range"):
        f.from_caft(tmp_path / "caft", spec={"10": [25]})
    with pytest.raises(FormatError, match="missing"):
        f.from_caft(tmp_path / "caft", spec={"7": [0]})


def test_steering_vectors_roundtrip(direction):
    sv = f.to_steering_vector(direction)
    acts = sv["layer_activations"] if isinstance(sv, dict) else sv.layer_activations
    layer_type = sv["layer_type"] if isinstance(sv, dict) else sv.layer_type
    assert layer_type == "decoder_block" and sorted(acts) == [0, 1, 3]
    back = f.from_steering_vector(sv, model="tiny-llama")
    assert back.site == "resid_post"
    assert torch.allclose(back.vector(3), direction.vector(3))
    as_dict = f.to_steering_vector(direction.replace(site="mlp_out"), as_dict=True)
    assert as_dict["layer_type"] == "mlp"
    assert f.from_steering_vector(as_dict).site == "mlp_out"


def test_steering_vectors_package_object(direction):
    sv_mod = pytest.importorskip("steering_vectors")
    sv = f.to_steering_vector(direction)
    assert isinstance(sv, sv_mod.SteeringVector)


def test_numpy_roundtrip(direction, tmp_path):
    arrays = f.to_numpy(direction)
    assert set(arrays) == {0, 1, 3} and arrays[1].dtype == np.float32
    back = f.from_numpy(arrays, model="tiny-llama")
    assert torch.allclose(back.vector(1), direction.vector(1))
    f.save_npz(direction, tmp_path / "d.npz")
    loaded = f.load_npz(tmp_path / "d.npz")
    assert loaded.fingerprint == "abc" and loaded.layers == [0, 1, 3]
    assert torch.allclose(loaded.vector(0), direction.vector(0))
