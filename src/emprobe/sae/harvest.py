"""Harvesting activations of several sites and layers in one early-exit pass.

Folder layout (one ``ShardWriter`` folder per site)::

    harvest/
      harvest.json            config, model name and fingerprint, layer convention, status
      resid_post/manifest.json + shard-00000.safetensors ...   tensors "layer.{l}" [rows, d_model]
      mlp_out/...

Every site folder holds the same token rows in the same order, so rows line up across
sites and layers (row ``i`` of ``layer.7`` and of ``layer.15`` is the same token).

Throughput (the goal: the bare early-exit forward's speed on the same tokens). Items are
tokenised a window at a time (``bucket`` batches), on a prefetch thread two batches ahead of
the forward when the model runs on an accelerator, inline on a CPU (there every core runs
the forward's threads, and a Python thread beside them stalls them: over the same 16,384
tokens a threaded harvest ran at 0.87-0.94x a bare forward, an inline one at 0.95-1.07x);
each window is sorted by token count and cut into batches trimmed to their
longest member, so almost no padded position is computed, and the batch in which the token
budget ends runs only the rows it needs; batches of a window run in a fixed random order,
so a budget that ends inside a window samples its items without a length bias. The chosen
rows are copied once, straight from the layer's output into shard blocks of the storage
dtype (bfloat16 by default), run by run of the token mask (no masked intermediate); a full
block is handed as is to the shard writer (a background thread on an accelerator, inline on
a CPU, as above). When the harvest fits
in ``memory_limit_mb`` the blocks are slices of one in-RAM buffer per layer
(``Harvest.memory``), so ``emprobe.sae.training`` trains without reading the shards back
and the rows exist once.

``skip_first`` (default True; the name is kept for old configs) drops the attention-sink
tokens that ``Subject.sink_mask`` names: each sequence's first *real* token (the BOS where
the tokenizer adds one, whatever the padding side) and every BOS of a tokenizer that
prepends one. Their residual norms are often tens of times the others' and distort SAE
training. Batches may be padded on either side: trimming and masks follow the attention
mask, never a fixed position.

RAM stays bounded by a few shard blocks of ``rows_per_shard`` rows (plus ``memory_limit_mb``
for the in-RAM copy). An interrupted harvest resumes exactly: finished shards are kept,
the batches they cover are skipped (their token counts are recomputed from the
tokenisation alone), and the first rows of a batch that straddles the last shard are dropped.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from tqdm.auto import tqdm

from emprobe.errors import DataError, FormatError
from emprobe.hooks.capture import capture
from emprobe.hooks.convention import check_site
from emprobe.hooks.shards import ShardReader, ShardWriter
from emprobe.io import read_json, write_json
from emprobe.models.allocator import release_free_memory
from emprobe.models.chat import ChatBatch, Conversation
from emprobe.models.context import use_batch
from emprobe.models.subject import Subject
from emprobe.validate import check_int

LAYER_CONVENTION = (
    "emprobe: layer = 0-based decoder block; resid_post[l] = HF hidden_states[l + 1]"
)
POSITIONS = ("all", "response", "prompt")

Key = tuple[str, int]
T = TypeVar("T")
Encoder = Callable[[int, int], ChatBatch]
"""``encode(start, stop)``: items ``start .. stop - 1`` of the dataset as one padded batch."""


@dataclass
class HarvestConfig:
    """What to harvest. Serialised into ``harvest.json``.

    Attributes:
        layers: decoder blocks (emprobe convention).
        sites: hook sites, e.g. ``["resid_post"]`` or ``["resid_post", "mlp_out"]``.
        positions: ``"all"`` (every non-pad token), ``"response"`` or ``"prompt"``.
        max_tokens: stop after this many token rows (None: the whole dataset).
        batch_size: most sequences per forward pass. max_length: truncate sequences (tokens).
        batch_tokens: most padded tokens per forward pass (sequences x the longest of them;
            None: ``batch_size`` alone). On 2 CPU cores a 2,048-token forward of the
            embedded model ran 0.4-2.9 % faster than a 1,024-token one (alternating in one
            process; ~3,000-token batches were slower again); raise both on a GPU.
        rows_per_shard: rows buffered before a shard is written (bounds RAM).
        dtype: storage dtype, ``"bfloat16"`` (default), ``"float16"`` or ``"float32"``;
            training up-casts each batch to float32.
        skip_first: drop the attention sinks (``Subject.sink_mask``: each sequence's first
            real token whatever the padding side, and every BOS of a tokenizer that
            prepends one), whose huge norms distort SAE training.
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
    batch_size: int = 64
    batch_tokens: int | None = 2048
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
    meta: dict[str, object]
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
        return check_int(self.meta.get("d_model"), f"{self.folder}/harvest.json: 'd_model'",
                         min_value=1)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def token_mask(subject: Subject, batch: ChatBatch, positions: str,
                skip_first: bool) -> torch.Tensor:
    """Bool ``[batch, pos]``: the tokens harvested, ``positions`` less (with ``skip_first``)
    the subject's attention sinks (``Subject.sink_mask``; right or left padding alike)."""
    mask = batch.mask(positions).clone()
    if skip_first:
        mask &= ~subject.sink_mask(batch).to(mask.device)
    return mask


def _rows_of(batch: ChatBatch, index: torch.Tensor) -> ChatBatch:
    """Rows ``index`` of a padded batch (either side), trimmed to the columns any of them
    uses: ``[0, longest)`` for right padding, ``[width - longest, width)`` for left."""
    used = batch.attention_mask[index].bool().any(0).nonzero().squeeze(1)
    lo, hi = (int(used[0]), int(used[-1]) + 1) if used.numel() else (0, 0)
    return ChatBatch(batch.input_ids[index, lo:hi], batch.attention_mask[index, lo:hi],
                     batch.response_mask[index, lo:hi])


def _head_rows(batch: ChatBatch, mask: torch.Tensor, take: int) -> ChatBatch:
    """The first rows of ``batch`` that hold its first ``take`` selected tokens (``mask``),
    trimmed to their longest member: the rows after them would be computed and dropped."""
    keep = int((mask.sum(1).cumsum(0) < take).sum()) + 1
    return _rows_of(batch, torch.arange(min(keep, len(mask)), device=mask.device))


def _cuts(lengths: torch.Tensor, size: int, max_padded: int | None) -> list[tuple[int, int]]:
    """``(start, stop)`` spans over sequences of these ``lengths`` (in run order): at most
    ``size`` sequences each and, with ``max_padded``, at most that many padded tokens
    (sequences x the longest); a sequence longer than ``max_padded`` runs alone."""
    if max_padded is None:
        return [(i, min(i + size, len(lengths))) for i in range(0, len(lengths), size)]
    spans, start, longest = [], 0, 0
    for i, n in enumerate(lengths.tolist()):
        longest_with = max(longest, n)
        if i > start and (i - start >= size or (i - start + 1) * longest_with > max_padded):
            spans.append((start, i))
            start, longest_with = i, n
        longest = longest_with
    if start < len(lengths):
        spans.append((start, len(lengths)))
    return spans


def _batches(encode: Encoder, n_items: int, size: int, bucket: int,
             max_padded: int | None = None) -> Iterator[ChatBatch]:
    """Padded batches of at most ``size`` of the ``n_items`` items (and at most
    ``max_padded`` padded tokens, when given); with ``bucket > 1`` each window of ``bucket``
    batches is tokenised once (``encode(start, stop)``) and sorted by token count (stable)
    before it is cut, so each batch is padded to a near-equal length.

    The batches of a window are then run in a fixed pseudo-random order (seeded by the
    window's position, so a resumed harvest sees the same batches in the same order): a
    token budget that ends inside a window takes an unbiased sample of its items rather
    than its shortest ones."""
    window = max(1, bucket) * size
    for start in range(0, n_items, window):
        enc = encode(start, min(start + window, n_items))
        lengths = enc.attention_mask.sum(1)
        if bucket > 1:
            order = torch.sort(lengths, stable=True).indices
            cuts = _cuts(lengths[order], size, max_padded)
            gen = torch.Generator().manual_seed(start)
            cuts = [cuts[i] for i in torch.randperm(len(cuts), generator=gen).tolist()]
        else:
            order = torch.arange(len(lengths))
            cuts = _cuts(lengths, size, max_padded)
        for a, b in cuts:
            yield _rows_of(enc, order[a:b])


class _End:
    """The marker a ``_Prefetch`` thread queues after its last item."""


class _Prefetch(Generic[T]):
    """Runs an iterator on a thread, at most ``depth`` items ahead of the consumer, so the
    next batches are tokenised while the current one runs through the model; with
    ``threaded=False`` the consumer runs the iterator itself."""

    _END = _End()

    def __init__(self, items: Iterator[T], depth: int = 2, threaded: bool = True) -> None:
        self.queue: queue.Queue[T | _End] = queue.Queue(max(1, depth))
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.items: Iterator[T] | None = None if threaded else items
        self.thread: threading.Thread | None = None
        if threaded:
            self.thread = threading.Thread(target=self._run, args=(items,), daemon=True,
                                           name="emprobe-harvest-tokenise")
            self.thread.start()

    def _put(self, item: T | _End) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
        except BaseException as exc:  # re-raised on the consumer's thread
            self.error = exc
        self._put(self._END)

    def __iter__(self) -> Iterator[T]:
        if self.items is not None:
            yield from self.items
            return
        while True:
            item = self.queue.get()
            if isinstance(item, _End):
                if self.error is not None:
                    raise self.error
                return
            yield item

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None and self.thread.is_alive():
            self.thread.join()


class _BackgroundWriter:
    """Writes finished shards on a thread; at most ``max_pending`` wait (bounded RAM); with
    ``threaded=False`` each shard is written when it is added."""

    def __init__(self, writers: dict[str, ShardWriter], max_pending: int = 2,
                 threaded: bool = True) -> None:
        self.writers = writers
        self.jobs: queue.Queue[tuple[str, dict[int, torch.Tensor]] | None] = queue.Queue(max_pending)
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        if threaded:
            self.thread = threading.Thread(target=self._run, name="emprobe-shard-writer",
                                           daemon=True)
            self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if self.error is not None:
                continue  # drain after a failure so the producer never blocks
            try:
                self.writers[job[0]].write_shard(job[1])
            except BaseException as exc:  # re-raised on the caller's thread
                self.error = exc

    def add(self, site: str, rows: dict[int, torch.Tensor]) -> None:
        if self.error is not None:
            raise self.error
        if self.thread is None:
            self.writers[site].write_shard(rows)
            return
        self.jobs.put((site, rows))

    def close(self, flush: bool = True) -> None:
        if self.thread is not None:
            self.jobs.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error
        if flush:
            for w in self.writers.values():
                w.close()


def _runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """Half-open runs ``[start, stop)`` of True in the row-major flattened ``mask``."""
    flat = mask.reshape(-1).to(torch.int8)
    pad = flat.new_zeros(1)
    edges = torch.diff(flat, prepend=pad, append=pad)
    starts = (edges == 1).nonzero().squeeze(1).tolist()
    stops = (edges == -1).nonzero().squeeze(1).tolist()
    return list(zip(starts, stops))


def _window(runs: list[tuple[int, int]], skip: int, take: int) -> list[tuple[int, int]]:
    """The runs holding selected rows ``skip .. take - 1`` (counted in selection order)."""
    out, seen = [], 0
    for a, b in runs:
        lo, hi = max(a, a + skip - seen), min(b, a + take - seen)
        if lo < hi:
            out.append((lo, hi))
        seen += b - a
        if seen >= take:
            break
    return out


class _Keep:
    """The in-RAM copy's budget, shared by every ``(site, layer)``.

    With a token budget that fits (``capacity`` rows for each of ``n_keys`` keys within
    ``limit_bytes``) each key gets one buffer of ``capacity`` rows whose slices are the
    shards (pages are touched only as rows arrive; nothing is concatenated later).
    A budget known not to fit keeps nothing; without a budget shard blocks are kept while
    the rows fit and all dropped once they do not (training then streams the shards).
    """

    def __init__(self, limit_bytes: int, capacity: int | None, n_keys: int, row_bytes: int):
        fits = capacity is None or capacity * row_bytes * max(1, n_keys) <= limit_bytes
        # a known budget that cannot fit keeps nothing: a copy dropped half-way through
        # would only raise the peak RAM
        self.limit, self.used, self.on = limit_bytes, 0, limit_bytes > 0 and fits
        self.whole = self.on and capacity is not None

    def count(self, nbytes: int) -> bool:
        """Account ``nbytes`` more rows; False once the copy is (or becomes) dropped."""
        if self.on:
            self.used += nbytes
            self.on = self.used <= self.limit
        return self.on


class _SiteRows:
    """One site's rows, copied once from the activations into blocks of ``rows_per_shard``
    rows in the storage dtype (one block per layer); a full block is handed to ``submit``
    (the shard writer) as is: no concatenation, no second copy."""

    def __init__(self, site: str, layers: Sequence[int], d_model: int, dtype: torch.dtype,
                 rows_per_shard: int, keep: _Keep, capacity: int | None,
                 submit: Callable[[str, dict[int, torch.Tensor]], None]) -> None:
        self.site, self.layers, self.d_model, self.dtype = site, list(layers), d_model, dtype
        self.size, self.keep, self.submit = rows_per_shard, keep, submit
        self.whole = ({la: torch.empty((capacity or 0, d_model), dtype=dtype) for la in layers}
                      if keep.whole else None)
        self.kept: list[dict[int, torch.Tensor]] = []
        self.start = self.fill = 0  # the block's first row (overall) and rows filled
        self.block = self._new_block()

    def _new_block(self) -> dict[int, torch.Tensor]:
        if self.whole is not None:
            n = min(self.size, self.whole[self.layers[0]].shape[0] - self.start)
            return {la: w[self.start : self.start + n] for la, w in self.whole.items()}
        return {la: torch.empty((self.size, self.d_model), dtype=self.dtype) for la in self.layers}

    def _emit(self) -> None:
        if self.fill == 0:
            return
        done = {la: b[: self.fill] for la, b in self.block.items()}
        self.submit(self.site, done)
        if self.whole is None and self.keep.on:
            self.kept.append(done)
        self.start, self.fill = self.start + self.fill, 0

    def add(self, acts: dict[int, torch.Tensor], runs: list[tuple[int, int]]) -> None:
        """Copy rows ``runs`` of each layer's ``[batch, pos, d_model]`` activation."""
        flat = {la: acts[la].reshape(-1, self.d_model) for la in self.layers}
        row_bytes = self.d_model * self.dtype.itemsize * len(self.layers)
        for a, b in runs:
            while a < b:
                room = self.block[self.layers[0]].shape[0] - self.fill
                if room <= 0:  # only past the token budget the in-RAM buffer was sized for
                    raise DataError(f"harvest {self.site}: more rows than max_tokens")
                n = min(b - a, room)
                for la in self.layers:
                    self.block[la][self.fill : self.fill + n].copy_(flat[la][a : a + n])
                self.fill, a = self.fill + n, a + n
                if not self.keep.count(n * row_bytes):
                    self.kept = []
                if n == room:
                    self._emit()
                    self.block = self._new_block()

    def finish(self) -> dict[int, torch.Tensor] | None:
        """Write the last (partial) block; the rows in RAM ``{layer: [n, d]}`` or None."""
        self._emit()
        if not self.keep.on:
            return None
        if self.whole is not None:
            return {la: w[: self.start] for la, w in self.whole.items()}
        if not self.kept:
            return {la: torch.empty((0, self.d_model), dtype=self.dtype) for la in self.layers}
        return {la: torch.cat([blk[la] for blk in self.kept]) for la in self.layers}


def _check(config: HarvestConfig, data: Sequence[Conversation] | Sequence[str]) -> None:
    for s in config.sites:
        check_site(s)
    if config.positions not in POSITIONS:
        raise DataError(f"harvest positions {config.positions!r}: use one of {POSITIONS}")
    if config.dtype not in _DTYPES:
        raise DataError(f"harvest dtype {config.dtype!r}: use one of {sorted(_DTYPES)}")
    if config.batch_size < 1 or config.rows_per_shard < 1:
        raise DataError(f"harvest: batch_size and rows_per_shard must be >= 1 "
                        f"(got {config.batch_size}, {config.rows_per_shard})")
    if config.batch_tokens is not None and config.batch_tokens < 1:
        raise DataError(f"harvest: batch_tokens must be >= 1 or None (got {config.batch_tokens})")
    if not data:
        raise DataError("harvest: no data given")


def _run(subject: Subject, batches: Iterator[ChatBatch], config: HarvestConfig,
         sinks: dict[str, _SiteRows], already: dict[str, int], progress: bool) -> None:
    """The harvest loop: forward each batch to the deepest layer, copy the chosen rows
    (skipping those already on disk), stop at the token budget."""
    budget = config.max_tokens
    done_rows = 0  # rows of the dataset's token stream passed so far (kept or skipped)
    amp = (torch.autocast(device_type=subject.device.type, dtype=torch.bfloat16)
           if config.autocast else contextlib.nullcontext())
    bar = tqdm(total=budget or None, desc="harvest tokens", disable=not progress, leave=False)
    try:
        for batch in batches:
            if budget is not None and done_rows >= budget:
                break
            mask = token_mask(subject, batch, config.positions, config.skip_first)
            n = int(mask.sum())
            take = n if budget is None else min(n, budget - done_rows)
            # rows this batch adds beyond what every site already has on disk
            if all(done_rows + take <= already[s] for s in config.sites):
                done_rows += take
                bar.update(take)
                continue
            if take < n:  # the budget ends inside this batch: run only the rows it needs
                batch = _head_rows(batch, mask, take)
                mask = token_mask(subject, batch, config.positions, config.skip_first)
            with torch.no_grad(), use_batch(batch), amp:
                with capture(subject, config.layers, config.sites, early_exit=True) as cache:
                    subject.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            runs = _runs(mask)
            for s in config.sites:
                skip = max(0, min(take, already[s] - done_rows))
                if skip < take:
                    sinks[s].add({la: cache[s, la] for la in config.layers},
                                 _window(runs, skip, take))
            done_rows += take
            bar.update(take)
    finally:
        bar.close()


def _open_folder(subject: Subject, folder: Path, config: HarvestConfig, n_items: int,
                 is_text: bool) -> dict[str, object] | None:
    """Create or check ``folder``: the harvest's metadata, or None when the folder already
    holds this harvest complete. Another config or model raises ``FormatError``."""
    folder.mkdir(parents=True, exist_ok=True)
    meta: dict[str, object] = {
        "model": subject.name,
        "adapter": str(subject.adapter) if subject.adapter else None,
        "fingerprint": subject.fingerprint(),
        "d_model": subject.d_model,
        "n_layers": subject.n_layers,
        "layer_convention": LAYER_CONVENTION,
        "n_items": n_items,
        "data_kind": "text" if is_text else "chat",
    }
    state_path = folder / "harvest.json"
    if state_path.exists():
        old = read_json(state_path)
        if (_saved_config(old.get("config")) != asdict(config)
                or old.get("fingerprint") != meta["fingerprint"]):
            raise FormatError(
                f"{state_path}: folder holds a harvest with another config or model; "
                "use a new folder"
            )
        if old.get("complete"):
            return None
    write_json(state_path, {**meta, "config": asdict(config), "complete": False, "n_rows": 0})
    return meta


def data_encoder(subject: Subject, data: Sequence[Conversation] | Sequence[str],
             max_length: int) -> Encoder:
    """``encode(start, stop)`` over ``data``: plain strings with ``Subject.encode_texts``,
    conversations with ``Subject.encode_chats``, truncated to ``max_length`` tokens (a mix
    of the two is a ``DataError``). Also used by ``emprobe.sae.metrics``."""
    texts = [item for item in data if isinstance(item, str)]
    if texts and len(texts) != len(data):
        raise DataError("harvest: data mixes plain strings and conversations")
    if texts:
        return lambda a, b: subject.encode_texts(texts[a:b], max_length=max_length)
    chats = [item for item in data if not isinstance(item, str)]
    return lambda a, b: subject.encode_chats(chats[a:b], max_length=max_length)


def harvest(
    subject: Subject,
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
    _check(config, data)
    config.layers = sorted({subject.layers.check_layer(la) for la in config.layers})
    folder = Path(out_dir)
    is_text = isinstance(data[0], str)
    meta = _open_folder(subject, folder, config, len(data), is_text)
    if meta is None:
        return load_harvest(folder)
    state_path = folder / "harvest.json"

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
    keep = _Keep(0 if any(already.values()) else config.memory_limit_mb * 2**20,
                 config.max_tokens, len(config.sites) * len(config.layers),
                 subject.d_model * dtype.itemsize)
    # Threads overlap tokenisation and shard writes with the forward only where the forward
    # runs on an accelerator; on a CPU every core already runs the forward's threads, and a
    # Python thread beside them stalls them (measured 7-29 % slower harvests on 2 cores)
    overlap = subject.device.type != "cpu"
    background = _BackgroundWriter(writers, threaded=overlap)
    sinks = {s: _SiteRows(s, config.layers, subject.d_model, dtype, config.rows_per_shard,
                          keep, config.max_tokens, background.add) for s in config.sites}

    encode = data_encoder(subject, data, config.max_length)
    batches = _Prefetch(_batches(encode, len(data), config.batch_size, config.bucket,
                                 config.batch_tokens),
                        threaded=overlap)
    finished = False
    memory: dict[Key, torch.Tensor] = {}
    try:
        _run(subject, iter(batches), config, sinks, already, progress)
        for s, sink in sinks.items():
            rows = sink.finish()
            memory.update({(s, la): t for la, t in (rows or {}).items()})
        finished = True
    finally:
        batches.close()
        background.close(flush=finished)
        if subject.device.type == "cpu":  # the forward's freed activations: back to the
            release_free_memory()  # system before the next stage (training) allocates
    n_rows = writers[config.sites[0]].rows_written
    write_json(state_path, {**meta, "config": asdict(config), "complete": True, "n_rows": n_rows})
    out = load_harvest(folder)
    out.memory = memory if keep.on else None
    out.seconds = time.perf_counter() - t_start
    return out


def _saved_config(saved: Any) -> Any:
    """A ``harvest.json`` config as this version reads it: folders written before
    ``batch_tokens`` existed batched by count alone (None)."""
    if isinstance(saved, dict) and "batch_tokens" not in saved:
        return {**saved, "batch_tokens": None}
    return saved


def load_harvest(folder: str | os.PathLike[str]) -> Harvest:
    """Open a harvest folder written by ``harvest`` (rows on disk only)."""
    folder = Path(folder)
    state = read_json(folder / "harvest.json")
    try:
        config = HarvestConfig(**_saved_config(state["config"]))
    except (KeyError, TypeError) as exc:
        raise FormatError(f"{folder}/harvest.json: bad config ({exc})") from None
    meta = {k: v for k, v in state.items() if k not in ("config", "complete", "n_rows")}
    n_rows = ShardReader(folder / config.sites[0]).n_rows
    return Harvest(folder=folder, config=config, n_rows=n_rows,
                   complete=bool(state.get("complete")), meta=meta)
