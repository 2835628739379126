"""Streaming captured activations to disk in safetensors shards (bounded RAM).

Folder layout::

    acts/
      manifest.json           {"site", "layers", "d_model", "dtype", "shards": [{"file", "rows"}], ...}
      shard-00000.safetensors tensors "layer.{l}" of shape [rows, d_model]

Shards are written atomically and the manifest is rewritten after each one, so an
interrupted harvest keeps every finished shard and can resume.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import torch

from emprobe.errors import FormatError
from emprobe.io import load_tensors, read_json, save_tensors, write_json


class ShardEntry(TypedDict):
    """One shard in the manifest: its file name and how many rows it holds."""

    file: str
    rows: int


class ShardWriter:
    """Buffer rows per layer and flush them as shards of ``rows_per_shard`` rows."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        layers: list[int],
        d_model: int,
        site: str = "resid_post",
        rows_per_shard: int = 16384,
        dtype: torch.dtype = torch.float32,
        meta: dict[str, object] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.layers, self.d_model, self.site = list(layers), d_model, site
        self.rows_per_shard, self.dtype = rows_per_shard, dtype
        self.meta = meta or {}
        manifest = self.folder / "manifest.json"
        self.shards: list[ShardEntry] = []
        if manifest.exists():  # resume
            old = read_json(manifest)
            if old.get("layers") != self.layers or old.get("d_model") != d_model:
                raise FormatError(f"{manifest}: existing harvest has other layers or width")
            self.shards = old["shards"]
        self._buf: dict[int, list[torch.Tensor]] = {la: [] for la in self.layers}
        self._rows = 0

    @property
    def rows_written(self) -> int:
        return sum(s["rows"] for s in self.shards)

    def add(self, acts: dict[int, torch.Tensor]) -> None:
        """Add ``{layer: [rows, d_model]}`` (same rows for every layer)."""
        n = {int(v.shape[0]) for v in acts.values()}
        if len(n) != 1:
            raise FormatError("every layer must add the same number of rows")
        for layer in self.layers:
            self._buf[layer].append(acts[layer].detach().to("cpu", self.dtype))
        self._rows += n.pop()
        while self._rows >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def write_shard(self, acts: dict[int, torch.Tensor]) -> None:
        """Write ``{layer: [rows, d_model]}`` as the next shard at once, without buffering
        (no copy when the rows are contiguous CPU tensors of the storage dtype). Only
        between ``add`` calls that left no buffered rows."""
        n = {int(v.shape[0]) for v in acts.values()}
        if len(n) != 1 or set(acts) != set(self.layers) or self._rows:
            raise FormatError(f"{self.folder}: a shard needs the same rows for layers {self.layers}")
        name = f"shard-{len(self.shards):05d}.safetensors"
        save_tensors(self.folder / name,
                     {f"layer.{la}": acts[la].to("cpu", self.dtype) for la in self.layers})
        self.shards.append({"file": name, "rows": n.pop()})
        self._write_manifest()

    def _flush(self, rows: int) -> None:
        if rows <= 0:
            return
        tensors: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            cat = torch.cat(self._buf[layer])
            tensors[f"layer.{layer}"] = cat[:rows]
            self._buf[layer] = [cat[rows:]] if cat.shape[0] > rows else []
        self._rows -= rows
        name = f"shard-{len(self.shards):05d}.safetensors"
        save_tensors(self.folder / name, tensors)
        self.shards.append({"file": name, "rows": rows})
        self._write_manifest()

    def _write_manifest(self) -> None:
        write_json(
            self.folder / "manifest.json",
            {
                "site": self.site,
                "layers": self.layers,
                "d_model": self.d_model,
                "dtype": str(self.dtype).removeprefix("torch."),
                "shards": self.shards,
                **self.meta,
            },
        )

    def close(self) -> None:
        """Flush the remaining rows as a last (smaller) shard."""
        self._flush(self._rows)
        self._write_manifest()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


class ShardReader:
    """Iterate over a shard folder: ``for batch in reader.batches(layer, 4096)``."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.manifest = read_json(self.folder / "manifest.json")
        for key in ("layers", "d_model", "shards"):
            if key not in self.manifest:
                raise FormatError(f"{self.folder}/manifest.json: missing key {key!r}")

    @property
    def n_rows(self) -> int:
        return sum(s["rows"] for s in self.manifest["shards"])

    @property
    def layers(self) -> list[int]:
        return list(self.manifest["layers"])

    def shard(self, i: int) -> dict[int, torch.Tensor]:
        tensors = load_tensors(self.folder / self.manifest["shards"][i]["file"])
        return {int(k.split(".")[1]): v for k, v in tensors.items()}

    def rows(self, i: int, layer: int) -> torch.Tensor:
        """Shard ``i``'s rows of one layer ``[rows, d_model]`` in the storage dtype (the
        other layers' tensors are not read)."""
        name = f"layer.{layer}"
        return load_tensors(self.folder / self.manifest["shards"][i]["file"], [name])[name]

    def batches(
        self, layer: int, batch_size: int, shuffle_seed: int | None = None
    ) -> Iterator[torch.Tensor]:
        """Yield ``[batch_size, d_model]`` float32 batches of one layer (the last one may be
        shorter); with ``shuffle_seed`` the shards come in a seeded order and each one's rows
        in a seeded permutation.

        One shard's rows of the layer are in RAM at a time, in their storage dtype: each
        batch is gathered and converted to float32 on its own, so no float32 copy of a whole
        shard is made (converting, permuting and joining whole shards first held three, each
        twice the size of a bf16 shard; the batches are the same).
        """
        order = list(range(len(self.manifest["shards"])))
        gen = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
        if gen is not None:
            order = [order[i] for i in torch.randperm(len(order), generator=gen).tolist()]
        carry: torch.Tensor | None = None  # float32 rows short of a batch, copied
        for i in order:
            x = self.rows(i, layer)
            perm = torch.randperm(x.shape[0], generator=gen) if gen is not None else None
            n, start = int(x.shape[0]), 0
            if carry is not None:
                start = min(n, batch_size - carry.shape[0])
                carry = torch.cat([carry, _float_rows(x, perm, 0, start)])
                if carry.shape[0] < batch_size:
                    continue
                yield carry
                carry = None
            while start + batch_size <= n:
                yield _float_rows(x, perm, start, start + batch_size)
                start += batch_size
            if start < n:  # copied: not a view that would keep the shard alive
                carry = _float_rows(x, perm, start, n).clone()
            del x  # before the next shard is read
        if carry is not None:
            yield carry

    def load(self, layer: int) -> torch.Tensor:
        """All rows of one layer ``[n_rows, d_model]`` (only when it fits in memory)."""
        return torch.cat([self.rows(i, layer).float() for i in range(len(self.manifest["shards"]))])


def _float_rows(x: torch.Tensor, perm: torch.Tensor | None, a: int, b: int) -> torch.Tensor:
    """Rows ``a:b`` of ``x`` (through the permutation ``perm`` when given) as float32."""
    return (x[a:b] if perm is None else x[perm[a:b]]).float()
