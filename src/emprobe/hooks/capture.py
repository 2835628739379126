"""Capturing activations at named sites, with early exit and token selection."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from emprobe.errors import ConfigError, SiteError
from emprobe.hooks.convention import check_site
from emprobe.hooks.core import StopForward, add_site_hook
from emprobe.hooks.types import check_positions
from emprobe.models.chat import ChatBatch, Conversation
from emprobe.models.context import use_batch

if TYPE_CHECKING:
    from emprobe.models.subject import Subject

Key = tuple[str, int]


@dataclass
class ActivationCache:
    """Activations keyed by ``(site, layer)``; each ``[batch, pos, d_model]`` per forward call.

    Several forward calls inside one ``capture`` block append (see ``calls``).
    """

    calls: dict[Key, list[torch.Tensor]] = field(default_factory=dict)

    def __getitem__(self, key: Key | int) -> torch.Tensor:
        """The last call's activation; an int key means ``("resid_post", layer)``."""
        if isinstance(key, int):
            key = ("resid_post", key)
        if key not in self.calls or not self.calls[key]:
            raise SiteError(f"nothing captured at {key}; captured: {sorted(self.calls)}")
        return self.calls[key][-1]

    def keys(self) -> list[Key]:
        return sorted(self.calls)

    def __contains__(self, key: object) -> bool:
        return key in self.calls


def _normalise_layers(subject: Subject, layers: int | Iterable[int]) -> list[int]:
    if isinstance(layers, int):
        layers = [layers]
    return sorted({subject.layers.check_layer(layer) for layer in layers})


@contextlib.contextmanager
def capture(
    subject: Subject,
    layers: int | Iterable[int],
    sites: str | Sequence[str] = "resid_post",
    early_exit: bool = False,
    detach: bool = True,
    dtype: torch.dtype | None = None,
) -> Iterator[ActivationCache]:
    """Record activations at ``sites`` x ``layers`` while the block runs.

    Args:
        early_exit: stop the forward pass once the deepest requested site is
            recorded (the forward call then raises ``StopForward``, which this
            context swallows; use ``collect`` for the common case).
        detach: detach the captured tensors (set False to backpropagate through them).
        dtype: cast captures (e.g. ``torch.float32`` when the model runs in bf16).

    Example::

        with emprobe.capture(subject, layers=[3, 7]) as cache:
            subject.forward(batch)
        h = cache["resid_post", 7]   # [batch, pos, d_model]
    """
    site_list = [sites] if isinstance(sites, str) else list(sites)
    for s in site_list:
        check_site(s)
    layer_list = _normalise_layers(subject, layers)
    cache = ActivationCache()
    order = {"resid_pre": 0, "attn_out": 1, "mlp_out": 2, "resid_post": 3}
    deepest = max((layer, order[s]) for layer in layer_list for s in site_list)
    handles = []

    def make(site: str, layer: int):  # noqa: ANN202
        key = (site, layer)
        last = early_exit and (layer, order[site]) == deepest

        def fn(hidden: torch.Tensor) -> None:
            value = hidden.detach() if detach else hidden
            if dtype is not None:
                value = value.to(dtype)
            cache.calls.setdefault(key, []).append(value)
            if last:
                raise StopForward
            return None

        return fn

    try:
        for s in site_list:
            for layer in layer_list:
                handles.append(add_site_hook(subject, s, layer, make(s, layer)))
        try:
            yield cache
        except StopForward:
            pass
    finally:
        for h in handles:
            h.remove()


@dataclass
class Collected:
    """Activations gathered over a dataset at one site.

    Attributes:
        acts: ``{layer: tensor}``; with ``reduce="tokens"`` each is ``[n_tokens, d_model]``
            (selected tokens of all sequences, concatenated), with ``reduce="mean"``
            ``[n_sequences, d_model]``.
        token_index: ``[n_tokens, 2]`` (sequence, position) of each row (``reduce="tokens"``).
        token_ids: each sequence's padded token ids (index with ``token_index``).
    """

    acts: dict[int, torch.Tensor]
    site: str
    positions: str
    reduce: str
    token_index: torch.Tensor | None = None
    token_ids: list[list[int]] = field(default_factory=list)


@torch.no_grad()
def collect(
    subject: Subject,
    data: Sequence[Conversation] | Sequence[str] | ChatBatch,
    layers: int | Iterable[int],
    site: str = "resid_post",
    positions: str = "response",
    reduce: str = "tokens",
    batch_size: int = 8,
    early_exit: bool = True,
    add_generation_prompt: bool = False,
    max_length: int | None = 512,
    progress: bool = False,
) -> Collected:
    """Run ``data`` through ``subject`` in batches and gather activations of chosen tokens.

    ``data`` is a list of conversations (chat-formatted, response masks from the
    template), a list of plain strings (every token is a "response" token), or a
    ready ``ChatBatch``. ``reduce`` is ``"tokens"`` (concatenate selected tokens) or
    ``"mean"`` (mean over the selected tokens of each sequence; sequences with no
    selected token give NaN rows). Activations are returned in float32 on CPU.
    """
    if reduce not in ("tokens", "mean"):
        raise ConfigError(f"reduce must be 'tokens' or 'mean', not {reduce!r}")
    check_positions(positions)
    layer_list = _normalise_layers(subject, layers)
    if isinstance(data, ChatBatch):
        chunks = [data.slice(i, i + batch_size) for i in range(0, len(data), batch_size)]
        encode = None
    else:
        items: list[Any] = list(data)
        chunks: list[Any] = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
        encode = "text" if items and isinstance(items[0], str) else "chat"
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layer_list}
    index_rows: list[torch.Tensor] = []
    token_ids: list[list[int]] = []
    seq_offset = 0
    for chunk in tqdm(chunks, desc=f"collect {site}", disable=not progress, leave=False):
        if encode == "text":
            batch = subject.encode_texts(chunk, max_length=max_length)
        elif encode == "chat":
            batch = subject.encode_chats(
                chunk, add_generation_prompt=add_generation_prompt, max_length=max_length
            )
        else:
            batch = chunk.to(subject.device)
        mask = batch.mask(positions)
        with capture(subject, layer_list, site, early_exit=early_exit) as cache, use_batch(batch):
            subject.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        for layer in layer_list:
            h = cache[site, layer].float()
            if reduce == "tokens":
                out[layer].append(h[mask].cpu())
            else:
                m = mask.unsqueeze(-1).float()
                out[layer].append(((h * m).sum(1) / m.sum(1)).cpu())
        if reduce == "tokens":
            idx = mask.nonzero().cpu()
            idx[:, 0] += seq_offset
            index_rows.append(idx)
        token_ids.extend(batch.input_ids.cpu().tolist())
        seq_offset += len(batch)
    acts = {layer: torch.cat(v) for layer, v in out.items()}
    return Collected(
        acts=acts,
        site=site,
        positions=positions,
        reduce=reduce,
        token_index=torch.cat(index_rows) if index_rows else None,
        token_ids=token_ids,
    )
