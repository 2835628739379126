import pytest
import torch

from emprobe.errors import FormatError
from emprobe.io import (
    append_jsonl,
    atomic_dir,
    atomic_path,
    load_tensors,
    read_json,
    read_jsonl,
    save_tensors,
    write_json,
)


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "x.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_atomic_dir(tmp_path):
    target = tmp_path / "d"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "f").write_text("x")
        raise RuntimeError
    assert not target.exists()
    with atomic_dir(target) as tmp:
        (tmp / "f").write_text("y")
    assert (target / "f").read_text() == "y"


def test_jsonl_partial_last_line(tmp_path):
    p = tmp_path / "log.jsonl"
    append_jsonl(p, {"step": 1})
    with p.open("a") as fh:
        fh.write('{"step": 2')
    assert read_jsonl(p) == [{"step": 1}]
    with p.open("a") as fh:
        fh.write('\n{"step": 3}\n')
    with pytest.raises(FormatError, match="log.jsonl:2"):
        read_jsonl(p)


def test_tensors_roundtrip_and_refuse_pickles(tmp_path):
    save_tensors(tmp_path / "t.safetensors", {"a": torch.arange(3.0)})
    assert torch.equal(load_tensors(tmp_path / "t.safetensors")["a"], torch.arange(3.0))
    (tmp_path / "evil.pt").write_bytes(b"\x80\x04junk")
    with pytest.raises(FormatError, match="refusing to unpickle"):
        load_tensors(tmp_path / "evil.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(FormatError, match="not a valid safetensors"):
        load_tensors(tmp_path / "bad.safetensors")
    with pytest.raises(FormatError, match="not valid JSON"):
        (tmp_path / "b.json").write_text("{")
        read_json(tmp_path / "b.json")
