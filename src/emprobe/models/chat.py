"""Chat formatting: conversations -> token ids with prompt / response masks.

The response mask marks the tokens of every assistant message's content plus its
end-of-turn marker (what the loss and response-token captures use). It is found
from character spans in the rendered template and the fast tokenizer's offsets,
so it works with any chat template, without ``{% generation %}`` markers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from emprobe.errors import DataError
from emprobe.models.templates import expects_bos

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = dict[str, str]
Conversation = Sequence[Message]
ROLES = ("system", "user", "assistant")


@dataclass
class ChatBatch:
    """A padded batch. All tensors ``[batch, pos]``.

    ``response_mask`` is True on assistant tokens; ``prompt_mask`` on the other
    real (non-padding) tokens.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor

    @property
    def prompt_mask(self) -> torch.Tensor:
        return self.attention_mask.bool() & ~self.response_mask

    @property
    def last_mask(self) -> torch.Tensor:
        """True at the last real token of each row (handles left and right padding)."""
        am = self.attention_mask.bool()
        pos = torch.arange(am.shape[1], device=am.device).expand_as(am)
        last = torch.where(am, pos, torch.full_like(pos, -1)).max(dim=1).values
        return pos == last[:, None]

    def mask(self, positions: str) -> torch.Tensor:
        """Token selection ``all`` | ``prompt`` | ``response`` | ``last`` as a bool mask."""
        if positions == "all":
            return self.attention_mask.bool()
        if positions == "prompt":
            return self.prompt_mask
        if positions == "response":
            return self.response_mask
        if positions == "last":
            return self.last_mask
        raise DataError(f"unknown token positions {positions!r}: use all, prompt, response or last")

    def to(self, device: torch.device | str) -> ChatBatch:
        return ChatBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device)
        )

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def slice(self, start: int, stop: int) -> ChatBatch:
        return ChatBatch(
            self.input_ids[start:stop],
            self.attention_mask[start:stop],
            self.response_mask[start:stop],
        )


def sink_mask(batch: ChatBatch, bos_token_id: int | None = None) -> torch.Tensor:
    """Bool ``[batch, pos]``: attention-sink positions, excluded from means by default.

    Each row's first real token (whatever it is: the residual norm there is typically tens
    of times the others', e.g. about 88,000 against 6,500 on Gemma 3 270M) and, when
    ``bos_token_id`` is given, every BOS token. Pass the BOS id only for a tokenizer that
    really prepends one (``Subject.sink_mask`` does this): some vocabularies (SmolLM2)
    call ``<|im_start|>`` their BOS, which also opens every later turn.
    """
    am = batch.attention_mask.bool()
    pos = torch.arange(am.shape[1], device=am.device).expand_as(am)
    first = torch.where(am, pos, torch.full_like(pos, am.shape[1])).min(dim=1).values
    out = (pos == first[:, None]) & am
    if bos_token_id is not None:
        out = out | ((batch.input_ids == bos_token_id) & am)
    return out


def validate_conversation(conv: object, where: str = "conversation") -> list[Message]:
    """Check a conversation's shape; one-line DataError saying what is wrong and where."""
    if isinstance(conv, dict) and "messages" in conv:
        conv = conv["messages"]
    if not isinstance(conv, (list, tuple)) or not conv:
        raise DataError(f"{where}: expected a non-empty list of messages")
    out: list[Message] = []
    for j, msg in enumerate(conv):
        if not isinstance(msg, dict):
            raise DataError(f"{where}: message {j} is not an object")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise DataError(f"{where}: message {j} has role {role!r}; expected one of {ROLES}")
        if not isinstance(content, str):
            raise DataError(f"{where}: message {j} content must be a string")
        if not content.strip() and role != "system":
            raise DataError(f"{where}: message {j} ({role}) is empty")
        out.append({"role": role, "content": content})
    return out


def _chat_text(tokenizer: PreTrainedTokenizerBase, msgs: list[Message],
               add_generation_prompt: bool) -> str:
    """The chat template's text for ``msgs`` (``apply_chat_template(..., tokenize=False)``)."""
    text = tokenizer.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    if not isinstance(text, str):
        raise DataError(f"chat template rendered {type(text).__name__}, not text")
    return text


def _render(tokenizer: PreTrainedTokenizerBase, msgs: list[Message], add_generation_prompt: bool) -> str | None:
    """The template's text for a partial conversation, or None when the template refuses it."""
    import jinja2

    if not msgs:
        return ""
    try:
        return _chat_text(tokenizer, msgs, add_generation_prompt)
    except (jinja2.TemplateError, ValueError, TypeError, IndexError):
        # some templates refuse partial conversations (e.g. "must end with a user turn")
        return None


def render_with_spans(
    tokenizer: PreTrainedTokenizerBase, conv: Conversation, add_generation_prompt: bool = False
) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation; return the text and the char spans of assistant turns.

    Each assistant message is searched for only *after* the rendered conversation that
    precedes it (its prefix, with the generation prompt), so answer text that also occurs
    in the system or user turns is never marked as response.
    """
    msgs = list(conv)
    text = _chat_text(tokenizer, msgs, add_generation_prompt)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, msg in enumerate(msgs):
        if msg["role"] != "assistant":
            continue
        floor = cursor
        for with_prompt in (True, False):
            prefix = _render(tokenizer, msgs[:i], with_prompt)
            if prefix is not None and text.startswith(prefix):
                floor = max(floor, len(prefix))
                break
        start = text.find(msg["content"], floor)
        if start < 0:
            raise DataError(f"chat template dropped assistant message {i}; cannot mask it")
        end = start + len(msg["content"])
        # include the end-of-turn marker the template writes right after the content
        upto = _render(tokenizer, msgs[: i + 1], False)
        if upto is not None and text.startswith(upto) and len(upto) > end:
            end = len(upto.rstrip("\n"))
        spans.append((start, end))
        cursor = end
    return text, spans


def encode_chats(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Conversation],
    add_generation_prompt: bool = False,
    max_length: int | None = None,
    padding_side: str = "right",
) -> ChatBatch:
    """Tokenise conversations with the chat template into a padded ``ChatBatch``.

    The rendered text is tokenised without special tokens; the tokenizer's BOS is put in
    front exactly when its own encoding adds one (``expects_bos``) and the template did not
    already write it, so a row never starts with two BOS tokens nor lacks an expected one.
    """
    bos = tokenizer.bos_token_id if expects_bos(tokenizer) else None
    rows: list[list[int]] = []
    masks: list[list[bool]] = []
    for k, conv in enumerate(conversations):
        msgs = validate_conversation(conv, where=f"conversation {k}")
        text, spans = render_with_spans(tokenizer, msgs, add_generation_prompt)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        resp = [any(s < e and s < b and e > a for a, b in spans) for s, e in enc["offset_mapping"]]
        if bos is not None and (not ids or ids[0] != bos):
            ids, resp = [bos, *ids], [False, *resp]
        if max_length is not None and len(ids) > max_length:
            ids, resp = ids[:max_length], resp[:max_length]
        rows.append(ids)
        masks.append(resp)
    return _pad(tokenizer, rows, masks, padding_side)


def encode_texts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int | None = None, padding_side: str = "right"
) -> ChatBatch:
    """Tokenise plain texts (no template); every real token counts as response.

    BOS is put in front exactly when the tokenizer's own encoding adds one; no EOS is added.
    """
    bos = tokenizer.bos_token_id if expects_bos(tokenizer) else None
    rows, masks = [], []
    for t in texts:
        ids = list(tokenizer(t, add_special_tokens=False)["input_ids"])
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        if max_length is not None:
            ids = ids[:max_length]
        rows.append(ids)
        masks.append([True] * len(ids))
    return _pad(tokenizer, rows, masks, padding_side)


def _pad(tokenizer: PreTrainedTokenizerBase, rows: list[list[int]], masks: list[list[bool]], side: str) -> ChatBatch:
    if not rows:
        raise DataError("no conversations to encode")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    if not isinstance(pad_id, int):
        raise DataError(f"tokenizer padding id {pad_id!r} is not one token id")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    resp = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (r, m) in enumerate(zip(rows, masks)):
        n = len(r)
        sl = slice(width - n, width) if side == "left" else slice(0, n)
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        att[i, sl] = 1
        resp[i, sl] = torch.tensor(m, dtype=torch.bool)
    return ChatBatch(ids, att, resp)
