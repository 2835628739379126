"""Harvesting activations of several sites and layers in one early-exit pass.

Folder layout (one ``ShardWriter`` folder per site)::

    harvest/
      harvest.json            config, model name and fingerprint, layer convention, status
      resid_post/manifest.json + shard-00000.safetensors ...   tensors "layer.{l}" [rows, d_model]
      mlp_out/...

Every site folder holds the same token rows in the same order, so rows line up across
sites and layers (row ``i`` of ``layer.7`` and of ``layer.15`` is the same token).

Throughput: items are tokenised a window at a time (``bucket`` batches), sorted by their
token count and cut into batches trimmed to their longest member, so almost no padded
position is computed, and the batch in which the token budget ends runs only the rows it
needs; batches of a window run in a fixed random order, so a budget that ends inside a window
samples its items without a length bias; activations are cast to the storage dtype (bfloat16 by default) and
shard writes run on a background thread, off the forward pass's critical path. When the
harvest fits in ``memory_limit_mb`` the rows are also kept in RAM (``Harvest.memory``) so
``emprobe.sae.training`` can train without reading the shards back.

RAM stays bounded by ``rows_per_shard`` plus a few pending batches (plus ``memory_limit_mb``
for the in-memory copy). An interrupted harvest resumes exactly: finished shards are kept,
the batches they cover are skipped (their token counts are recomputed from the
tokenisation alone), and the first rows of a batch that straddles the last shard are dropped.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
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
from emprobe.models.chat import ChatBatch, Conversation
from emprobe.models.context import use_batch

LAYER_CONVENTION = (
    "emprobe: layer = 0-based decoder block; resid_post[l] = HF hidden_states[l + 1]"
)
POSITIONS = ("all", "response", "prompt")

Key = tuple[str, int]


@dataclass
class HarvestConfig:
    """What to harvest. Serialised into ``harvest.json``.

    Attributes:
        layers: decoder blocks (emprobe convention).
        sites: hook sites, e.g. ``["resid_post"]`` or ``["resid_post", "mlp_out"]``.
        positions: ``"all"`` (every non-pad token), ``"response"`` or ``"prompt"``.
        max_tokens: stop after this many token rows (None: the whole dataset).
        batch_size: sequences per forward pass. max_length: truncate sequences (tokens).
        rows_per_shard: rows buffered before a shard is written (bounds RAM).
        dtype: storage dtype, ``"bfloat16"`` (default), ``"float16"`` or ``"float32"``;
            training up-casts each batch to float32.
        skip_first: drop each sequence's first token (the BOS / attention sink, whose
            huge norm distorts SAE training).
        bucket: tokenise ``bucket`` batches at a time and sort them by token count before
            batching (no padding waste; 1 = keep the input order).
        memory_limit_mb: also keep the rows in RAM while they fit in this many MiB
            (0: never), so training needs no disk round trip. The default, 256 MiB (about
            230k rows of d_model 576 in bf16), keeps the peak RAM of a harvest-and-train at
            or below SAELens' runner with its default buffer; past it training streams the
            shards, one in RAM at a time. Raise it when RAM is plentiful.
        autocast: run the forward under ``torch.autocast`` in bfloat16 (much faster on
            CPUs with bf16 matmuls; activations then carry bf16 rounding).
    """

    layers: list[int]
    sites: list[str] = field(default_factory=lambda: ["resid_post"])
    positions: str = "all"
    max_tokens: int | None = None
    batch_size: int = 32
    max_length: int = 256
    rows_per_shard: int = 16384
    dtype: str = "bfloat16"
    skip_first: bool = True
    bucket: int = 32
    memory_limit_mb: int = 256
    autocast: bool = False


@dataclass
class Harvest:
    """A finished (or partial) harvest on disk, plus its rows in RAM when they were kept.

    ``memory``: ``{(site, layer): [n_rows, d_model]}`` in the storage dtype, or None.
    ``seconds``: wall time of the harvest call that produced it (None after a reload).
    """

    folder: Path
    config: HarvestConfig
    n_rows: int
    complete: bool
    meta: dict[str, Any]
    memory: dict[Key, torch.Tensor] | None = None
    seconds: float | None = None

    def reader(self, site: str = "resid_post") -> ShardReader:
        if site not in self.config.sites:
            raise FormatError(f"{self.folder}: no site {site!r} harvested (have {self.config.sites})")
        return ShardReader(self.folder / site)

    def rows(self, site: str, layer: int) -> torch.Tensor | None:
        """The in-memory rows ``[n_rows, d_model]`` of ``(site, layer)``, or None."""
        if self.memory is None:
            return None
        return self.memory.get((site, int(layer)))

    @property
    def d_model(self) -> int:
        return int(self.meta["d_model"])


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _token_mask(batch: Any, positions: str, skip_first: bool) -> torch.Tensor:
    mask = batch.mask(positions).clone()
    if skip_first:
        mask[:, 0] = False
    return mask


def _rows_of(batch: ChatBatch, index: torch.Tensor) -> ChatBatch:
    """Rows ``index`` of a right-padded batch, trimmed to their longest member."""
    width = int(batch.attention_mask[index].sum(1).max())
    return ChatBatch(batch.input_ids[index, :width], batch.attention_mask[index, :width],
                     batch.response_mask[index, :width])


def _head_rows(batch: ChatBatch, mask: torch.Tensor, take: int) -> ChatBatch:
    """The first rows of ``batch`` that hold its first ``take`` selected tokens (``mask``),
    trimmed to their longest member: the rows after them would be computed and dropped."""
    keep = int((mask.sum(1).cumsum(0) < take).sum()) + 1
    return _rows_of(batch, torch.arange(min(keep, len(mask)), device=mask.device))


def _batches(encode: Any, items: Sequence[Any], size: int, bucket: int) -> Iterator[ChatBatch]:
    """Padded batches of ``size`` items; with ``bucket > 1`` each window of ``bucket`` batches is
    tokenised once and sorted by token count (stable) before it is cut, so each batch is
    padded to a near-equal length.

    The batches of a window are then run in a fixed pseudo-random order (seeded by the
    window's position, so a resumed harvest sees the same batches in the same order): a
    token budget that ends inside a window takes an unbiased sample of its items rather
    than its shortest ones."""
    window = max(1, bucket) * size
    for start in range(0, len(items), window):
        enc = encode(items[start : start + window])
        lengths = enc.attention_mask.sum(1)
        if bucket > 1:
            order = torch.sort(lengths, stable=True).indices
            cuts = list(range(0, len(order), size))
            gen = torch.Generator().manual_seed(start)
            cuts = [cuts[i] for i in torch.randperm(len(cuts), generator=gen).tolist()]
        else:
            order = torch.arange(len(lengths))
            cuts = list(range(0, len(order), size))
        for i in cuts:
            yield _rows_of(enc, order[i : i + size])


class _BackgroundWriter:
    """Runs ``ShardWriter.add`` on a thread; at most ``max_pending`` batches wait (bounded RAM)."""

    def __init__(self, writers: dict[str, ShardWriter], max_pending: int = 8) -> None:
        self.writers = writers
        self.jobs: queue.Queue[tuple[str, dict[int, torch.Tensor]] | None] = queue.Queue(max_pending)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="emprobe-shard-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if self.error is not None:
                continue  # drain after a failure so the producer never blocks
            try:
                self.writers[job[0]].add(job[1])
            except BaseException as exc:  # re-raised on the caller's thread
                self.error = exc

    def add(self, site: str, rows: dict[int, torch.Tensor]) -> None:
        if self.error is not None:
            raise self.error
        self.jobs.put((site, rows))

    def close(self, flush: bool = True) -> None:
        self.jobs.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        if flush:
            for w in self.writers.values():
                w.close()


class _MemoryRows:
    """Rows kept in RAM per ``(site, layer)`` until they pass ``limit_bytes`` (then dropped).

    With ``capacity`` (the harvest's token budget) each key's rows go into one buffer of
    ``capacity`` rows allocated on first use (pages are only touched as rows arrive), so
    ``result`` needs no concatenation and the in-memory copy never exists twice (a
    ``torch.cat`` of the parts would double it for a moment, raising the peak RSS).
    Without a budget the parts are concatenated at the end.
    """

    def __init__(self, limit_bytes: int, capacity: int | None = None, n_keys: int = 1) -> None:
        self.parts: dict[Key, list[torch.Tensor]] | None = {} if limit_bytes > 0 else None
        self.buffers: dict[Key, torch.Tensor] = {}
        self.filled: dict[Key, int] = {}
        self.limit, self.used = limit_bytes, 0
        self.capacity, self.n_keys = capacity, max(1, n_keys)

    def _buffer(self, key: Key, like: torch.Tensor) -> torch.Tensor | None:
        if self.capacity is None:
            return None
        buf = self.buffers.get(key)
        if buf is None:
            row_bytes = like.shape[1] * like.element_size()
            if self.capacity * row_bytes * self.n_keys > self.limit:
                return None  # a full-budget buffer would not fit: keep parts, drop past the limit
            buf = torch.empty((self.capacity, like.shape[1]), dtype=like.dtype)
            self.buffers[key], self.filled[key] = buf, 0
        return buf

    def add(self, site: str, rows: dict[int, torch.Tensor]) -> None:
        if self.parts is None:
            return
        self.used += sum(t.numel() * t.element_size() for t in rows.values())
        if self.used > self.limit:
            self.parts, self.buffers, self.filled = None, {}, {}  # train from the shards instead
            return
        for layer, t in rows.items():
            key = (site, layer)
            buf = self._buffer(key, t)
            start = self.filled.get(key, 0)
            if buf is not None and start + t.shape[0] <= buf.shape[0]:
                buf[start : start + t.shape[0]].copy_(t)
                self.filled[key] = start + t.shape[0]
            else:
                self.parts.setdefault(key, []).append(t)

    def result(self) -> dict[Key, torch.Tensor] | None:
        if self.parts is None:
            return None
        out: dict[Key, torch.Tensor] = {}
        for key in set(self.buffers) | set(self.parts):
            head = [self.buffers[key][: self.filled[key]]] if key in self.buffers else []
            tail = self.parts.get(key, [])
            out[key] = head[0] if not tail and head else torch.cat(head + tail)
        return out


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

    Returns a ``Harvest``; rows per site are ``[n_rows, d_model]`` per layer, also in
    ``Harvest.memory`` when a fresh harvest fit in ``config.memory_limit_mb``.
    """
    t_start = time.perf_counter()
    for s in config.sites:
        check_site(s)
    if config.positions not in POSITIONS:
        raise DataError(f"harvest positions {config.positions!r}: use one of {POSITIONS}")
    if config.dtype not in _DTYPES:
        raise DataError(f"harvest dtype {config.dtype!r}: use one of {sorted(_DTYPES)}")
    if config.batch_size < 1 or config.rows_per_shard < 1:
        raise DataError(f"harvest: batch_size and rows_per_shard must be >= 1 "
                        f"(got {config.batch_size}, {config.rows_per_shard})")
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

    dtype = _DTYPES[config.dtype]
    writers = {
        s: ShardWriter(folder / s, config.layers, subject.d_model, site=s,
                       rows_per_shard=config.rows_per_shard, dtype=dtype,
                       meta={"model": subject.name, "positions": config.positions,
                             "layer_convention": LAYER_CONVENTION})
        for s in config.sites
    }
    already = {s: w.rows_written for s, w in writers.items()}
    # a resumed harvest is only partly in RAM: train from the shards then
    memory = _MemoryRows(0 if any(already.values()) else config.memory_limit_mb * 2**20,
                         capacity=config.max_tokens,
                         n_keys=len(config.sites) * len(config.layers))
    budget = config.max_tokens
    done_rows = 0  # rows of the dataset's token stream passed so far (kept or skipped)

    def encode(chunk: Sequence[Any]) -> ChatBatch:
        if is_text:
            return subject.encode_texts(list(chunk), max_length=config.max_length)
        return subject.encode_chats(list(chunk), max_length=config.max_length)

    amp = (torch.autocast(device_type=subject.device.type, dtype=torch.bfloat16)
           if config.autocast else contextlib.nullcontext())
    background = _BackgroundWriter(writers)
    bar = tqdm(total=budget or None, desc="harvest tokens", disable=not progress, leave=False)
    finished = False
    try:
        for batch in _batches(encode, list(data), config.batch_size, config.bucket):
            if budget is not None and done_rows >= budget:
                break
            mask = _token_mask(batch, config.positions, config.skip_first)
            n = int(mask.sum())
            take = n if budget is None else min(n, budget - done_rows)
            # rows this batch adds beyond what every site already has on disk
            if all(done_rows + take <= already[s] for s in config.sites):
                done_rows += take
                bar.update(take)
                continue
            if take < n:  # the budget ends inside this batch: run only the rows it needs
                batch = _head_rows(batch, mask, take)
                mask = _token_mask(batch, config.positions, config.skip_first)
            with torch.no_grad(), use_batch(batch), amp:
                with capture(subject, config.layers, config.sites, early_exit=True) as cache:
                    subject.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            for s in config.sites:
                skip = max(0, min(take, already[s] - done_rows))
                if skip >= take:
                    continue
                rows = {la: cache[s, la][mask][skip:take].to("cpu", dtype) for la in config.layers}
                memory.add(s, rows)
                background.add(s, rows)
            done_rows += take
            bar.update(take)
        finished = True
    finally:
        bar.close()
        background.close(flush=finished)
    n_rows = writers[config.sites[0]].rows_written
    write_json(state_path, {**meta, "config": asdict(config), "complete": True, "n_rows": n_rows})
    out = load_harvest(folder)
    out.memory = memory.result()
    out.seconds = time.perf_counter() - t_start
    return out


def load_harvest(folder: str | os.PathLike[str]) -> Harvest:
    """Open a harvest folder written by ``harvest`` (rows on disk only)."""
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
