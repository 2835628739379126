"""Training data: chat records -> tokenised examples -> seeded, resumable micro-batches.

The data order is a pure function of ``(seed, step)``: the record stream is the
concatenation of per-epoch permutations (epoch ``e`` shuffled with seed ``seed + e``),
and optimizer step ``s`` takes the stream's slice ``[s * G, (s + 1) * G)`` where ``G`` is
the global batch. Resuming therefore needs only the step number, and a data-parallel run
sees exactly the records a single process would.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from emprobe.data.chat_io import ChatLike, Record
from emprobe.errors import ConfigError, DataError
from emprobe.models.chat import ChatBatch, Message, validate_conversation

if TYPE_CHECKING:
    from emprobe.models.subject import Subject

__all__ = [
    "read_records",
    "conversations",
    "apply_inoculation",
    "TokenizedSet",
    "TruncationReport",
    "tokenize",
    "fit_window",
    "length_from_data",
    "micro_batches",
    "pack_rows",
    "check_packing",
    "step_indices",
    "DEFAULT_MAX_LENGTH_CAP",
    "warn_truncation",
]


def read_records(path: str | os.PathLike[str]) -> list[Record]:
    """Read chat JSONL (one ``{"messages": [...]}`` per line) via ``emprobe.data.chat_io``."""
    from emprobe.data.chat_io import read_chat_jsonl

    return list(read_chat_jsonl(path))


def conversations(records: Sequence[ChatLike], where: str = "records") -> list[list[Message]]:
    """Records (``{"messages": ...}`` dicts or bare message lists) -> validated conversations."""
    return [validate_conversation(r, where=f"{where}[{i}]") for i, r in enumerate(records)]


def apply_inoculation(records: Sequence[ChatLike], system_prompt: str, seed: int = 0
                      ) -> list[Record]:
    """Give every record ``system_prompt`` as its system message (replacing an existing one).

    Uses ``emprobe.data.transforms``, so ``system_prompt`` may also be a prompt name: one of
    ``INOCULATION_PROMPTS`` (``malicious``, ``medical`` ...), ``neutral``, ``random`` (a
    random-string control fixed by ``seed``) or ``none`` (removes system prompts); anything
    else is used as the literal prompt.
    """
    from emprobe.data.transforms import inoculate, resolve_prompt

    recs = [dict(r) if isinstance(r, Mapping) else {"messages": list(r)} for r in records]
    label, text = resolve_prompt(system_prompt, seed=seed)
    return list(inoculate(recs, text, label=label))


#: Upper bound on a data-derived ``max_length`` when the config gives no cap (tokens): the
#: field trains its model organisms at 2048.
DEFAULT_MAX_LENGTH_CAP = 2048
#: Percentile of the tokenised lengths used as a data-derived ``max_length``: 100 keeps every
#: record whole up to the cap (length-sorted micro-batches keep the padding small anyway).
LENGTH_PERCENTILE = 100.0


@dataclass
class TruncationReport:
    """What fitting records into ``max_length`` cost (counts over the input records).

    ``response_tokens_lost`` counts loss-carrying assistant tokens removed (from the left of
    a long prompt that contained earlier assistant turns, or from the end of a response that
    alone does not fit), plus every assistant token of dropped records.
    """

    n_records: int
    n_kept: int
    n_dropped: int
    n_truncated: int
    n_prompt_truncated: int
    n_response_truncated: int
    prompt_tokens_cut: int
    response_tokens_lost: int
    response_tokens_total: int
    max_length: int | None
    max_length_source: str

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass
class TokenizedSet:
    """Unpadded token ids and response masks of each kept record (``[len_i]`` each)."""

    ids: list[torch.Tensor]
    response: list[torch.Tensor]
    kept: list[int]
    pad_id: int
    report: TruncationReport | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> list[int]:
        """Token count of each kept example (after truncation)."""
        return [int(t.numel()) for t in self.ids]

    def batch(self, indices: Sequence[int], device: torch.device | str = "cpu") -> ChatBatch:
        """Right-padded ``ChatBatch`` ``[len(indices), max_len]`` of the chosen examples."""
        width = max(int(self.ids[i].numel()) for i in indices)
        n = len(indices)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        att = torch.zeros((n, width), dtype=torch.long)
        resp = torch.zeros((n, width), dtype=torch.bool)
        for row, i in enumerate(indices):
            k = int(self.ids[i].numel())
            ids[row, :k] = self.ids[i]
            att[row, :k] = 1
            resp[row, :k] = self.response[i]
        return ChatBatch(ids, att, resp).to(device)

    def packed_batch(self, indices: Sequence[int], device: torch.device | str = "cpu",
                     width: int | None = None) -> tuple[ChatBatch, torch.Tensor]:
        """The chosen examples packed into rows of at most ``width`` tokens (``pack_rows``),
        every row as wide as the fullest one (never wider than padding would be).

        Returns the ``ChatBatch`` ``[rows, width]`` (attention all ones: isolation comes from
        the position ids) and ``position_ids`` ``[rows, width]`` restarting at 0 for each
        example and for each row's padding. Feed the model ``input_ids`` and ``position_ids``
        with no ``attention_mask`` and ``use_cache=False``: transformers then builds a
        block-diagonal causal mask from the position ids (``find_packed_sequence_indices``).
        """
        lengths = [int(self.ids[i].numel()) for i in indices]
        rows = pack_rows(lengths, max(int(width or 0), max(lengths)))
        w = max(sum(lengths[j] for j in r) for r in rows)  # trimmed to the fullest row
        ids = torch.full((len(rows), w), self.pad_id, dtype=torch.long)
        resp = torch.zeros((len(rows), w), dtype=torch.bool)
        pos = torch.zeros((len(rows), w), dtype=torch.long)
        for r, members in enumerate(rows):
            at = 0
            for j in members:
                i, k = indices[j], lengths[j]
                ids[r, at:at + k] = self.ids[i]
                resp[r, at:at + k] = self.response[i]
                resp[r, at] = False  # no loss across a boundary: a row's first token is no target
                pos[r, at:at + k] = torch.arange(k)
                at += k
            pos[r, at:] = torch.arange(w - at)  # padding: its own block, no loss
        att = torch.ones_like(ids)
        return ChatBatch(ids, att, resp).to(device), pos.to(device)

    def n_loss_tokens(self, indices: Sequence[int]) -> int:
        """Response tokens that carry next-token loss (a token's target is the next one)."""
        return int(sum(int(self.response[i][1:].sum()) for i in indices))


def length_from_data(lengths: Sequence[int], cap: int = DEFAULT_MAX_LENGTH_CAP,
                     percentile: float = LENGTH_PERCENTILE) -> int:
    """A ``max_length`` from tokenised lengths: the nearest-rank ``percentile``, at most ``cap``.

    The default (100) is the longest record, so no record is cut below the cap; the cap
    bounds activation memory (``batch_size * max_length`` tokens per micro-batch).
    """
    if not lengths:
        raise DataError("length_from_data: no lengths")
    ranked = sorted(int(n) for n in lengths)
    rank = max(1, math.ceil(percentile / 100.0 * len(ranked)))
    return max(2, min(int(cap), ranked[rank - 1]))


def fit_window(response: Sequence[bool], max_length: int) -> tuple[int, int]:
    """The ``[start, stop)`` token window kept from a sequence of ``len(response)`` tokens.

    Priority, most important first: the last assistant turn (the last run of response
    tokens), then the prompt right before it (so long prompts lose their *beginning*), then
    any tokens after it. A response that fits is kept whole (with as much of the prompt's end
    as fits); one longer than ``max_length`` loses its end and keeps
    ``min(prompt, max_length // 4)`` prompt tokens as context before it.
    """
    n = len(response)
    if n <= max_length:
        return 0, n
    stop_r = n
    while stop_r > 0 and not response[stop_r - 1]:
        stop_r -= 1
    if stop_r == 0:  # no response at all: nothing worth keeping
        return 0, max_length
    start_r = stop_r
    while start_r > 0 and response[start_r - 1]:
        start_r -= 1
    n_resp = stop_r - start_r
    # a response that fits is kept whole; one that does not keeps some prompt as context
    context = 0 if n_resp <= max_length else min(start_r, max_length // 4)
    keep_r = min(n_resp, max_length - context)
    keep_p = min(start_r, max_length - keep_r)
    keep_t = max_length - keep_r - keep_p if keep_r == stop_r - start_r else 0
    return start_r - keep_p, start_r + keep_r + min(keep_t, n - stop_r)


def tokenize(subject: Subject, records: Sequence[ChatLike], max_length: int | None,
             what: str = "training data", chunk: int = 64,
             cap: int = DEFAULT_MAX_LENGTH_CAP) -> TokenizedSet:
    """Tokenise records with the subject's chat template and fit them into ``max_length``.

    ``max_length=None`` derives it from the data (``length_from_data(lengths, cap)``).
    Sequences longer than ``max_length`` are cut by ``fit_window``: the prompt loses its
    beginning first, the response its end only when it alone does not fit. A record is
    dropped only when no loss-carrying response token is left. The returned set's
    ``report`` counts what was cut. Raises ``DataError`` when no record is left.
    """
    convs = conversations(records, where=what)
    if not convs:
        raise DataError(f"{what}: the dataset is empty")
    full_ids: list[torch.Tensor] = []
    full_resp: list[torch.Tensor] = []
    for start in range(0, len(convs), chunk):
        batch = subject.encode_chats(convs[start:start + chunk], max_length=None).to("cpu")
        for row in range(len(batch)):
            n = int(batch.attention_mask[row].sum())
            full_ids.append(batch.input_ids[row, :n].clone())
            full_resp.append(batch.response_mask[row, :n].clone())
    lengths = [int(t.numel()) for t in full_ids]
    if max_length is None:
        limit = length_from_data(lengths, cap)
        source = (f"the longest of {len(lengths)} tokenised records ({max(lengths)} tokens), "
                  f"capped at {cap}")
    else:
        limit, source = int(max_length), "config"
    ids: list[torch.Tensor] = []
    resp: list[torch.Tensor] = []
    kept: list[int] = []
    counts = dict(truncated=0, prompt=0, response=0, prompt_cut=0, lost=0, total=0, lose=0)
    for i, (row_ids, row_resp) in enumerate(zip(full_ids, full_resp)):
        total_loss = int(row_resp[1:].sum())
        counts["total"] += total_loss
        lo, hi = fit_window(row_resp.tolist(), limit)
        cut_ids, cut_resp = row_ids[lo:hi], row_resp[lo:hi]
        left = int(cut_resp[1:].sum())
        if left == 0:
            counts["lost"] += total_loss
            continue
        if (lo, hi) != (0, len(row_ids)):
            counts["truncated"] += 1
            counts["prompt"] += int(lo > 0)
            counts["response"] += int(bool(row_resp[hi:].any()))
            counts["prompt_cut"] += int((~row_resp[:lo]).sum()) + int((~row_resp[hi:]).sum())
            counts["lost"] += total_loss - left
            counts["lose"] += int(total_loss > left)
        ids.append(cut_ids)
        resp.append(cut_resp)
        kept.append(i)
    dropped = len(convs) - len(kept)
    if not kept:
        raise DataError(f"{what}: no record has assistant tokens within max_length={limit}")
    if dropped:
        warnings.warn(f"{what}: dropped {dropped} of {len(convs)} records with no assistant "
                      f"tokens within max_length={limit}", stacklevel=2)
    if counts["truncated"]:
        warn_truncation(what, len(convs), counts["truncated"], counts["lose"],
                        counts["lost"], counts["total"], limit)
    report = TruncationReport(
        n_records=len(convs), n_kept=len(kept), n_dropped=dropped,
        n_truncated=counts["truncated"], n_prompt_truncated=counts["prompt"],
        n_response_truncated=counts["response"], prompt_tokens_cut=counts["prompt_cut"],
        response_tokens_lost=counts["lost"], response_tokens_total=counts["total"],
        max_length=limit, max_length_source=source)
    pad = subject.tokenizer.pad_token_id
    return TokenizedSet(ids, resp, kept, int(pad if pad is not None else 0), report)


def warn_truncation(what: str, n: int, truncated: int, lose_response: int, lost: int,
                    total: int, limit: int) -> None:
    """The one warning about cut records: never silent (counts and the fix in one line)."""
    warnings.warn(
        f"{what}: max_length={limit} truncated {truncated} of {n} records ({lose_response} of them "
        f"lose response tokens: {lost} of {total} response tokens lost); raise "
        "max_length / max_length_cap to keep them whole", UserWarning, stacklevel=3)


_PACKING_CHECKED: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[str, ...], float]] = (
    weakref.WeakKeyDictionary())
"""``check_packing``'s verdicts per model object: ``{(attention implementation, dtype,
device): relative error}``; a model passes once per process, not once per run."""

CHECK_TOKENS = 16
"""Tokens of each of the two records that ``check_packing`` runs (the start of each)."""


def check_packing(model: torch.nn.Module, data: TokenizedSet, where: str = "pack=True"
                  ) -> float:
    """Check that ``model`` isolates packed records by their position ids; return the error.

    Runs the first ``CHECK_TOKENS`` tokens of the two shortest records of ``data`` once apart
    and once packed into one row (position ids restarting at the second) and compares their
    logits: the largest absolute difference over the largest absolute logit. transformers
    builds a block-diagonal mask from restarting position ids for the families tested here
    (Llama, Qwen2, Mistral, Gemma 2 / 3, OLMo 2, Phi, Phi-3, GPT-2, GPT-NeoX); a model that
    ignores them lets a record attend to the one before it, and this raises a one-line
    ``ConfigError`` naming the model (limit: 1e-4 in float32, 3e-2 in half precision).
    Costs three forwards of at most 32 tokens, once per model object, attention
    implementation, dtype and device in a process (a passed check is remembered).
    """
    if len(data) < 2:
        return 0.0
    param = next(model.parameters())
    config = getattr(model, "config", None)
    key = (str(getattr(config, "_attn_implementation", None)), str(param.dtype),
           str(param.device))
    seen = _PACKING_CHECKED.get(model, {})
    if key in seen:
        return seen[key]
    pair = sorted(range(len(data)), key=lambda i: int(data.ids[i].numel()))[:2]
    pieces = [data.ids[i][:CHECK_TOKENS].to(param.device) for i in pair]
    joint_ids = torch.cat(pieces)[None]
    pos = torch.cat([torch.arange(len(p), device=param.device) for p in pieces])[None]
    was_training = model.training
    model.eval()
    err, scale, at = 0.0, 0.0, 0
    try:
        with torch.no_grad():
            joint = model(input_ids=joint_ids, position_ids=pos, use_cache=False).logits
            for ids in pieces:
                alone = model(input_ids=ids[None], use_cache=False).logits[0].float()
                err = max(err, float((joint[0, at:at + len(ids)].float() - alone).abs().max()))
                scale = max(scale, float(alone.abs().max()))
                at += len(ids)
    finally:
        model.train(was_training)
    rel = err / max(scale, 1e-12)
    limit = 1e-4 if param.dtype == torch.float32 else 3e-2
    if not rel <= limit:
        name = getattr(config, "model_type", type(model).__name__)
        raise ConfigError(f"{where}: model {name!r} does not isolate packed records by their "
                          f"position ids (logits differ by {rel:.3g} of their scale); train "
                          "with pack=False")
    try:
        _PACKING_CHECKED.setdefault(model, {})[key] = rel
    except TypeError:  # a model object that cannot be weakly referenced: check every time
        pass
    return rel


def pack_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """First-fit-decreasing packing: positions into ``lengths`` grouped in rows of <= ``width``.

    Each row lists the positions it holds, in the order they are laid out; a length over
    ``width`` gets a row of its own (the caller widens the row).
    """
    order = sorted(range(len(lengths)), key=lambda j: -int(lengths[j]))
    rows: list[list[int]] = []
    room: list[int] = []
    for j in order:
        n = int(lengths[j])
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(j)
                room[r] -= n
                break
        else:
            rows.append([j])
            room.append(max(0, width - n))
    return rows


def micro_batches(indices: Sequence[int], batch_size: int, grad_accum: int, rank: int = 0,
                  lengths: Sequence[int] | None = None) -> list[list[int]]:
    """Split one optimizer step's records into this rank's micro-batches.

    Rank ``r`` takes ``indices[r*B*K:(r+1)*B*K]`` (``B`` = ``batch_size``, ``K`` =
    ``grad_accum``). With ``lengths``, that share is sorted by length (stable) before it is
    cut into ``K`` micro-batches, so each micro-batch pads to a similar width: the step sees
    the same records, and because the loss is a sum normalised by the step's token count, the
    same update up to float summation order.
    """
    b, k = batch_size, grad_accum
    mine = list(indices[rank * b * k:(rank + 1) * b * k])
    if lengths is not None:
        mine.sort(key=lambda i: lengths[i])
    return [mine[m * b:(m + 1) * b] for m in range(k) if mine[m * b:(m + 1) * b]]


def step_indices(n: int, step: int, global_batch: int, seed: int) -> list[int]:
    """Record indices of optimizer step ``step`` (0-based): a slice of the epoch-permuted stream."""
    start, stop = step * global_batch, (step + 1) * global_batch
    out: list[int] = []
    epoch = start // n
    pos = start
    while pos < stop:
        gen = torch.Generator().manual_seed(int(seed) + epoch)
        perm = torch.randperm(n, generator=gen).tolist()
        lo = pos - epoch * n
        hi = min(n, stop - epoch * n)
        out.extend(perm[lo:hi])
        pos = (epoch + 1) * n
        epoch += 1
    return out
