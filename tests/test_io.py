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


def test_load_tensors_reads_only_the_names_asked(tmp_path):
    save_tensors(tmp_path / "t.safetensors", {"a": torch.arange(3.0), "b": torch.ones(2)})
    got = load_tensors(tmp_path / "t.safetensors", ["b"])
    assert list(got) == ["b"] and torch.equal(got["b"], torch.ones(2))
    with pytest.raises(FormatError, match="no tensor 'c'"):
        load_tensors(tmp_path / "t.safetensors", ["c"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("rows_per_shard", "n", "batch"), [(7, 50, 5), (3, 20, 8), (5, 23, 4)])
def test_shard_batches_are_the_shuffled_rows_in_order(tmp_path, dtype, rows_per_shard, n, batch):
    """``ShardReader.batches`` converts batch by batch; the rows and their order are those of
    the plain recipe (shards in a seeded order, each converted to float32 and permuted, the
    remainder carried into the next shard's rows), batches crossing shards and shards
    smaller than a batch included. The null: another seed gives another order."""
    from emprobe.hooks.shards import ShardReader, ShardWriter

    with ShardWriter(tmp_path / "s", [2, 5], 4, rows_per_shard=rows_per_shard,
                     dtype=dtype) as w:
        for _ in range(n):
            w.add({2: torch.randn(1, 4), 5: torch.randn(1, 4)})
    reader = ShardReader(tmp_path / "s")

    def plain(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        shards = len(reader.manifest["shards"])
        order = torch.randperm(shards, generator=gen).tolist()
        parts = []
        for i in order:
            x = reader.shard(i)[5].float()
            parts.append(x[torch.randperm(x.shape[0], generator=gen)])
        return torch.cat(parts)

    got = list(reader.batches(5, batch, shuffle_seed=3))
    assert all(b.dtype == torch.float32 for b in got)
    assert [b.shape[0] for b in got] == [batch] * (n // batch) + ([n % batch] if n % batch else [])
    assert torch.equal(torch.cat(got), plain(3))
    assert not torch.equal(torch.cat(list(reader.batches(5, batch, shuffle_seed=4))), plain(3))
    unshuffled = torch.cat(list(reader.batches(2, batch)))
    assert torch.equal(unshuffled, reader.load(2))
