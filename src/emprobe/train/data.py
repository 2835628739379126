"""Training data: chat records -> tokenised examples -> seeded, resumable micro-batches.

The data order is a pure function of ``(seed, step)``: the record stream is the
concatenation of per-epoch permutations (epoch ``e`` shuffled with seed ``seed + e``),
and optimizer step ``s`` takes the stream's slice ``[s * G, (s + 1) * G)`` where ``G`` is
the global batch. Resuming therefore needs only the step number, and a data-parallel run
sees exactly the records a single process would.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from emprobe.errors import DataError
from emprobe.models.chat import ChatBatch, validate_conversation

__all__ = [
    "read_records",
    "conversations",
    "apply_inoculation",
    "TokenizedSet",
    "tokenize",
    "step_indices",
]


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read chat JSONL (one ``{"messages": [...]}`` per line) via ``emprobe.data.chat_io``."""
    from emprobe.data.chat_io import read_chat_jsonl

    return list(read_chat_jsonl(path))


def conversations(records: Sequence[Any], where: str = "records") -> list[list[dict[str, str]]]:
    """Records (``{"messages": ...}`` dicts or bare message lists) -> validated conversations."""
    return [validate_conversation(r, where=f"{where}[{i}]") for i, r in enumerate(records)]


def apply_inoculation(records: Sequence[Any], system_prompt: str, seed: int = 0
                      ) -> list[dict[str, Any]]:
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


@dataclass
class TokenizedSet:
    """Unpadded token ids and response masks of each kept record (``[len_i]`` each)."""

    ids: list[torch.Tensor]
    response: list[torch.Tensor]
    kept: list[int]
    pad_id: int

    def __len__(self) -> int:
        return len(self.ids)

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

    def n_loss_tokens(self, indices: Sequence[int]) -> int:
        """Response tokens that carry next-token loss (a token's target is the next one)."""
        return int(sum(int(self.response[i][1:].sum()) for i in indices))


def tokenize(subject: Any, records: Sequence[Any], max_length: int | None,
             what: str = "training data", chunk: int = 64) -> TokenizedSet:
    """Tokenise records with the subject's chat template; drop those left with no response.

    Raises ``DataError`` when no record is left (an empty dataset, or every response cut off
    by ``max_length``).
    """
    convs = conversations(records, where=what)
    if not convs:
        raise DataError(f"{what}: the dataset is empty")
    ids: list[torch.Tensor] = []
    resp: list[torch.Tensor] = []
    kept: list[int] = []
    for start in range(0, len(convs), chunk):
        batch = subject.encode_chats(convs[start:start + chunk], max_length=max_length).to("cpu")
        for row in range(len(batch)):
            n = int(batch.attention_mask[row].sum())
            r = batch.response_mask[row, :n]
            if int(r[1:].sum()) == 0:
                continue
            ids.append(batch.input_ids[row, :n].clone())
            resp.append(r.clone())
            kept.append(start + row)
    dropped = len(convs) - len(kept)
    if not kept:
        raise DataError(f"{what}: no record has assistant tokens within max_length={max_length}")
    if dropped:
        warnings.warn(f"{what}: dropped {dropped} of {len(convs)} records with no assistant "
                      f"tokens within max_length={max_length}", stacklevel=2)
    pad = subject.tokenizer.pad_token_id
    return TokenizedSet(ids, resp, kept, int(pad if pad is not None else 0))


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
