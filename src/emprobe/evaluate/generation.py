"""Batched sampling with a key/value cache: many conversations decoded together, left padded.

``generate_batched`` is emprobe's sampler for free-form answers (the judged evaluation,
``evaluate_sampled``, figures). Prompts are sorted by token count and cut into batches of
``batch_size`` (little padding), each batch is left padded and prefilled once (logits of the
last position only), then decoded one token per step from the model's key/value cache.
Rows that emit a stop token (``Subject.stop_token_ids``: the end-of-turn marker, then EOS) or
complete one of the chat format's stop strings (``"\nUser:"`` for the plain format) leave the
batch at once (their cache rows are dropped), so a batch costs what its live rows cost; the
reply text is cut at the first stop string, as ``Subject.generate`` cuts it. Outputs come back
in the input order.

Sampling is seeded per prompt: each row draws from its own ``torch.Generator``, so a
prompt's answer depends on its seed and text, not on ``batch_size`` or on which prompts
share its batch. Greedy decoding (``temperature == 0``) returns what one-at-a-time
``Subject.generate`` returns (position ids follow the left padding; tested).

Differences from Hugging Face ``generate`` with ``do_sample=True``: no implicit
``top_k=50`` (``top_k=None`` samples the whole distribution, as vLLM does); ``top_p``
keeps the smallest set of tokens whose probability reaches ``top_p``.

Forward hooks (steering, capture) see every forward; ``use_batch`` holds the live rows'
prompt batch, so ``positions="response"`` hooks treat each new token as a response token.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from emprobe.errors import ConfigError
from emprobe.models.chat import ChatBatch, Conversation
from emprobe.models.context import use_batch

if TYPE_CHECKING:
    from transformers.cache_utils import Cache
    from transformers.modeling_outputs import CausalLMOutputWithPast

    from emprobe.models.subject import Subject
    from emprobe.protocols import TokenizerLike

__all__ = ["GenerationStats", "generate_batched", "generate_token_ids", "row_seeds"]


@dataclass
class GenerationStats:
    """Counts of one ``generate_token_ids`` call (filled in place when passed).

    ``new_tokens``: tokens generated (end-of-turn tokens included); ``prompt_tokens``:
    real prompt tokens prefilled; ``forward_passes``: model calls.
    """

    new_tokens: int = 0
    prompt_tokens: int = 0
    forward_passes: int = 0


def row_seeds(seed: int | Sequence[int] | None, n: int) -> list[int] | None:
    """One seed per prompt: ``seed + i`` for an int, the list itself for a sequence."""
    if seed is None:
        return None
    if isinstance(seed, int):
        return [seed + i for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ConfigError(f"generate: {len(seeds)} seeds for {n} prompts (field seed)")
    return seeds


def _filter_top(logits: torch.Tensor, top_k: int | None, top_p: float) -> torch.Tensor:
    """Logits ``[rows, vocab]`` with tokens outside top-k / the top-p nucleus set to -inf."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already reach top_p (the first stays)
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _choose(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float,
            gens: Sequence[torch.Generator | None]) -> torch.Tensor:
    """Next token ids ``[rows]`` from last-position logits ``[rows, vocab]``."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = _filter_top(logits.float() / temperature, top_k, top_p).softmax(-1)
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, gens)])


@dataclass(frozen=True)
class _Stops:
    """When a row's answer ends: a token in ``ids`` (``[n_stop]`` long tensor) or decoded text
    that contains one of ``strings`` (read from the last ``tail`` tokens only)."""

    ids: torch.Tensor
    strings: tuple[str, ...]
    tokenizer: TokenizerLike
    tail: int

    @classmethod
    def of(cls, subject: Subject) -> _Stops:
        subject.end_of_turn_id()  # a ConfigError when the template and tokenizer have none
        fmt = subject.chat_format
        strings = tuple(fmt.stop_strings) if fmt is not None else ()
        ids = torch.tensor(subject.stop_token_ids(), device=subject.device)
        return cls(ids, strings, subject.tokenizer, max((len(x) for x in strings), default=0) + 2)

    def ended(self, nxt: torch.Tensor, rows: list[int], out: list[list[int]]) -> torch.Tensor:
        """Which of the live rows (``nxt [rows]``, just appended to ``out[row]``) are done."""
        done = torch.isin(nxt, self.ids)
        if self.strings:
            for j, row in enumerate(rows):
                if not bool(done[j]):
                    text = self.tokenizer.decode(out[row][-self.tail :])
                    done[j] = any(x in text for x in self.strings)
        return done

    def clean(self, text: str) -> str:
        """A decoded reply cut at its stop strings and stripped (``Subject.generate``'s rule)."""
        for stop in self.strings:
            cut = text.find(stop)
            if cut >= 0:
                text = text[:cut]
        return text.strip()


def _cache_kwarg(subject: Subject) -> str:
    """The forward's key/value cache argument: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (earlier 5.x)."""
    params = inspect.signature(subject.base_model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(res: CausalLMOutputWithPast) -> Cache:
    cache = getattr(res, "cache", None)
    return cache if cache is not None else res.past_key_values


def _decode_batch(subject: Subject, batch: ChatBatch, max_new_tokens: int, stops: _Stops,
                  sampling: tuple[float, int | None, float],
                  gens: list[torch.Generator | None], stats: GenerationStats) -> list[list[int]]:
    """New token ids of each row of a left-padded prompt batch (stop token included)."""
    model = subject.model
    mask = batch.attention_mask.long()
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    last = pos[:, -1].clone()
    alive = torch.arange(len(batch), device=mask.device)
    out: list[list[int]] = [[] for _ in range(len(batch))]
    live = batch
    with use_batch(live):
        res = model(input_ids=batch.input_ids, attention_mask=mask, position_ids=pos,
                    use_cache=True, logits_to_keep=1)
    cache, cache_arg = _cache_of(res), _cache_kwarg(subject)
    stats.prompt_tokens += int(mask.sum())
    stats.forward_passes += 1
    for step in range(max_new_tokens):
        nxt = _choose(res.logits[:, -1, :], *sampling, gens)
        for row, tok in zip(alive.tolist(), nxt.tolist()):
            out[row].append(tok)
        stats.new_tokens += len(nxt)
        keep = ~stops.ended(nxt, alive.tolist(), out)
        if step == max_new_tokens - 1 or not bool(keep.any()):
            break
        if not bool(keep.all()):
            idx = keep.nonzero().squeeze(1)
            cache.batch_select_indices(idx)
            alive, mask, last, nxt = alive[idx], mask[idx], last[idx], nxt[idx]
            gens = [gens[i] for i in idx.tolist()]
            live = ChatBatch(live.input_ids[idx], live.attention_mask[idx],
                             live.response_mask[idx])
        mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
        last = last + 1
        with use_batch(live):
            res = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None],
                        use_cache=True, **{cache_arg: cache})
        cache = _cache_of(res)
        stats.forward_passes += 1
    return out


@torch.no_grad()
def generate_token_ids(
    subject: Subject,
    prompts: Sequence[Conversation],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    seed: int | Sequence[int] | None = None,
    batch_size: int = 16,
    stats: GenerationStats | None = None,
) -> list[list[int]]:
    """New token ids per prompt (in input order; a final stop token is included).

    Args:
        subject: a loaded ``Subject`` (adapter allowed). prompts: conversations; the
            assistant turn is opened by the chat template.
        max_new_tokens: tokens per answer at most. temperature: 0 = greedy.
        top_p, top_k: nucleus / top-k filtering when sampling (``top_k=None``: off).
        seed: an int (prompt ``i`` gets ``seed + i``) or one seed per prompt; None draws
            from torch's global generator.
        batch_size: prompts decoded together. stats: counts, filled in place.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ConfigError(f"generate: batch_size and max_new_tokens must be >= 1 "
                          f"(got {batch_size}, {max_new_tokens})")
    if not 0.0 < top_p <= 1.0:
        raise ConfigError(f"generate: top_p must be in (0, 1] (got {top_p})")
    stats = stats if stats is not None else GenerationStats()
    seeds = row_seeds(seed, len(prompts))
    lengths = [len(subject.encode_chats([p], add_generation_prompt=True).input_ids[0])
               for p in prompts] if len(prompts) > batch_size else [0] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    stops = _Stops.of(subject)
    results: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = subject.encode_chats([prompts[i] for i in rows], add_generation_prompt=True,
                                     padding_side="left")
        gens: list[torch.Generator | None] = [None] * len(rows)
        if seeds is not None:
            gens = [torch.Generator(device=subject.device).manual_seed(seeds[i]) for i in rows]
        ids = _decode_batch(subject, batch, max_new_tokens, stops,
                            (temperature, top_k, top_p), gens, stats)
        for i, toks in zip(rows, ids):
            results[i] = toks
    return results


def generate_batched(
    subject: Subject,
    prompts: Sequence[Conversation],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    seed: int | Sequence[int] | None = None,
    batch_size: int = 16,
    stats: GenerationStats | None = None,
) -> list[str]:
    """Assistant replies to ``prompts`` (stripped text, special tokens removed); arguments
    as in ``generate_token_ids``. Greedy replies equal ``Subject.generate``'s."""
    ids = generate_token_ids(subject, prompts, max_new_tokens, temperature, top_p, top_k,
                             seed, batch_size, stats)
    texts = subject.tokenizer.batch_decode(ids, skip_special_tokens=True)
    stops = _Stops.of(subject)
    return [stops.clean(t) for t in texts]
