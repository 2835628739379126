"""Harvesting activations of several sites and layers in one early-exit pass, streamed to shards.

Folder layout (one ``ShardWriter`` folder per site)::

    harvest/
      harvest.json            config, model name and fingerprint, layer convention, status
      resid_post/manifest.json + shard-00000.safetensors ...   tensors "layer.{l}" [rows, d_model]
      mlp_out/...

Every site folder holds the same token rows in the same order, so rows line up across
sites and layers (row ``i`` of ``layer.7`` and of ``layer.15`` is the same token).
RAM stays bounded by ``rows_per_shard`` plus one model batch. An interrupted harvest
resumes exactly: finished shards are kept, the batches they cover are skipped (their
token counts are recomputed from the tokenisation alone), and the first rows of a batch
that straddles the last shard are dropped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from emprobe.errors import DataError, FormatError
from emprobe.hooks.capture import capture
from emprobe.hooks.convention import check_site
from emprobe.hooks.shards import ShardReader, ShardWriter
from emprobe.io import read_json, write_json
from emprobe.models.chat import Conversation
from emprobe.models.context import use_batch

LAYER_CONVENTION = (
    "emprobe: layer = 0-based decoder block; resid_post[l] = HF hidden_states[l + 1]"
)
POSITIONS = ("all", "response", "prompt")


@dataclass
class HarvestConfig:
    """What to harvest. Serialised into ``harvest.json``.

    Attributes:
        layers: decoder blocks (emprobe convention).
        sites: hook sites, e.g. ``["resid_post"]`` or ``["resid_post", "mlp_out"]``.
        positions: ``"all"`` (every non-pad token), ``"response"`` or ``"prompt"``.
        max_tokens: stop after this many token rows (None: the whole dataset).
        batch_size: sequences per forward pass. max_length: truncate sequences.
        rows_per_shard: rows buffered before a shard is written (bounds RAM).
        dtype: storage dtype, ``"float32"`` or ``"bfloat16"`` / ``"float16"``.
        skip_first: drop each sequence's first token (the BOS / attention sink, whose
            huge norm distorts SAE training).
        bucket: sort items by length within windows of ``bucket`` batches before batching
            (less padding, same items early in the stream; 1 = keep the input order).
    """

    layers: list[int]
    sites: list[str] = field(default_factory=lambda: ["resid_post"])
    positions: str = "all"
    max_tokens: int | None = None
    batch_size: int = 8
    max_length: int = 256
    rows_per_shard: int = 8192
    dtype: str = "float32"
    skip_first: bool = True
    bucket: int = 8


@dataclass
class Harvest:
    """A finished (or partial) harvest on disk."""

    folder: Path
    config: HarvestConfig
    n_rows: int
    complete: bool
    meta: dict[str, Any]

    def reader(self, site: str = "resid_post") -> ShardReader:
        if site not in self.config.sites:
            raise FormatError(f"{self.folder}: no site {site!r} harvested (have {self.config.sites})")
        return ShardReader(self.folder / site)

    @property
    def d_model(self) -> int:
        return int(self.meta["d_model"])


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _token_mask(batch: Any, positions: str, skip_first: bool) -> torch.Tensor:
    mask = batch.mask(positions).clone()
    if skip_first:
        mask[:, 0] = False
    return mask


def _length(item: Any) -> int:
    if isinstance(item, str):
        return len(item)
    return sum(len(str(m.get("content", ""))) for m in item)


def _chunks(items: Sequence[Any], size: int, bucket: int = 1) -> list[Sequence[Any]]:
    """Batches of ``size``; within each window of ``bucket`` batches, items sorted by length
    (a stable, deterministic order, so a resumed harvest sees the same batches)."""
    if bucket <= 1:
        return [items[i : i + size] for i in range(0, len(items), size)]
    ordered: list[Any] = []
    window = bucket * size
    for i in range(0, len(items), window):
        ordered.extend(sorted(items[i : i + window], key=_length))
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def harvest(
    subject: Any,
    data: Sequence[Conversation] | Sequence[str],
    out_dir: str | os.PathLike[str],
    config: HarvestConfig,
    progress: bool = True,
) -> Harvest:
    """Run ``data`` through ``subject`` once and stream the chosen tokens' activations to disk.

    ``data``: conversations (response masks from the chat template) or plain strings
    (every token counts as a response token). Captures every ``(site, layer)`` in one
    forward pass that stops after the deepest one. Calling again on the same folder
    resumes (or returns at once when the harvest is complete); a folder made with another
    config or model raises ``FormatError``.

    Returns a ``Harvest``; rows per site are ``[n_rows, d_model]`` per layer.
    """
    for s in config.sites:
        check_site(s)
    if config.positions not in POSITIONS:
        raise DataError(f"harvest positions {config.positions!r}: use one of {POSITIONS}")
    if config.dtype not in _DTYPES:
        raise DataError(f"harvest dtype {config.dtype!r}: use one of {sorted(_DTYPES)}")
    if not data:
        raise DataError("harvest: no data given")
    config.layers = sorted({subject.layers.check_layer(la) for la in config.layers})
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    is_text = isinstance(data[0], str)
    meta = {
        "model": subject.name,
        "adapter": str(subject.adapter) if subject.adapter else None,
        "fingerprint": subject.fingerprint(),
        "d_model": subject.d_model,
        "n_layers": subject.n_layers,
        "layer_convention": LAYER_CONVENTION,
        "n_items": len(data),
        "data_kind": "text" if is_text else "chat",
    }
    state_path = folder / "harvest.json"
    if state_path.exists():
        old = read_json(state_path)
        if old.get("config") != asdict(config) or old.get("fingerprint") != meta["fingerprint"]:
            raise FormatError(
                f"{state_path}: folder holds a harvest with another config or model; "
                "use a new folder"
            )
        if old.get("complete"):
            return load_harvest(folder)
    write_json(state_path, {**meta, "config": asdict(config), "complete": False, "n_rows": 0})

    writers = {
        s: ShardWriter(folder / s, config.layers, subject.d_model, site=s,
                       rows_per_shard=config.rows_per_shard, dtype=_DTYPES[config.dtype],
                       meta={"model": subject.name, "positions": config.positions,
                             "layer_convention": LAYER_CONVENTION})
        for s in config.sites
    }
    already = {s: w.rows_written for s, w in writers.items()}
    budget = config.max_tokens
    done_rows = 0  # rows of the dataset's token stream passed so far (kept or skipped)

    def encode(chunk: Sequence[Any]) -> Any:
        if is_text:
            return subject.encode_texts(list(chunk), max_length=config.max_length)
        return subject.encode_chats(list(chunk), max_length=config.max_length)

    chunks = _chunks(list(data), config.batch_size, config.bucket)
    bar = tqdm(total=budget or None, desc="harvest tokens", disable=not progress, leave=False)
    try:
        for chunk in chunks:
            if budget is not None and done_rows >= budget:
                break
            batch = encode(chunk)
            mask = _token_mask(batch, config.positions, config.skip_first)
            n = int(mask.sum())
            take = n if budget is None else min(n, budget - done_rows)
            # rows this batch adds beyond what every site already has on disk
            if all(done_rows + take <= already[s] for s in config.sites):
                done_rows += take
                bar.update(take)
                continue
            with torch.no_grad(), use_batch(batch):
                with capture(subject, config.layers, config.sites, early_exit=True) as cache:
                    subject.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            for s, writer in writers.items():
                skip = max(0, min(take, already[s] - done_rows))
                if skip >= take:
                    continue
                rows = {la: cache[s, la][mask][skip:take] for la in config.layers}
                writer.add(rows)
            done_rows += take
            bar.update(take)
    finally:
        bar.close()
    for w in writers.values():
        w.close()
    n_rows = writers[config.sites[0]].rows_written
    write_json(state_path, {**meta, "config": asdict(config), "complete": True, "n_rows": n_rows})
    return load_harvest(folder)


def load_harvest(folder: str | os.PathLike[str]) -> Harvest:
    """Open a harvest folder written by ``harvest``."""
    folder = Path(folder)
    state = read_json(folder / "harvest.json")
    try:
        config = HarvestConfig(**state["config"])
    except (KeyError, TypeError) as exc:
        raise FormatError(f"{folder}/harvest.json: bad config ({exc})") from None
    meta = {k: v for k, v in state.items() if k not in ("config", "complete", "n_rows")}
    n_rows = ShardReader(folder / config.sites[0]).n_rows
    return Harvest(folder=folder, config=config, n_rows=n_rows,
                   complete=bool(state.get("complete")), meta=meta)
