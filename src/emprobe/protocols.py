"""Typed shapes of the things emprobe passes around: model handles, tokenizers, chat records.

A leaf module (imports only ``typing`` and ``torch``), so any layer can use these types
without importing a higher one. They describe what emprobe *uses* of an object, not its
class: ``emprobe.models.Subject`` satisfies ``SubjectLike``, a Hugging Face tokenizer
satisfies ``TokenizerLike``, a ``PreTrainedModel`` (or a ``peft.PeftModel``) satisfies
``CausalLMLike``.

Records:

- ``ChatMessage`` / ``ChatRecord``: one line of a chat JSONL file
  (``{"messages": [{"role": ..., "content": ...}, ...]}``);
- ``QARecord``: one question-answer pair as the scorers and judges see it;
- ``Scorer``: a function that scores answers to questions (higher = more misaligned,
  in ``[0, 1]`` unless the scorer documents another unit).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Literal, Protocol, TypedDict, runtime_checkable

import torch

__all__ = [
    "BlockLayout",
    "CausalLMLike",
    "ChatMessage",
    "ChatRecord",
    "Conversation",
    "QARecord",
    "Role",
    "Scorer",
    "SAEConfigLike",
    "SAELike",
    "SubjectLike",
    "TensorMap",
    "TokenizerLike",
]

Role = Literal["system", "user", "assistant"]
"""The chat roles emprobe reads and writes."""


class ChatMessage(TypedDict):
    """One message of a conversation: ``{"role": "user", "content": "Hi"}``."""

    role: str
    content: str


Conversation = Sequence[ChatMessage]
"""A conversation: messages in order (system first if any, then user / assistant turns)."""


class _ChatRecordOptional(TypedDict, total=False):
    meta: dict[str, str | int | float | bool | None]


class ChatRecord(_ChatRecordOptional):
    """One line of a chat JSONL file; ``meta`` (optional) carries provenance (source, label)."""

    messages: list[ChatMessage]


class QARecord(TypedDict):
    """A question and one answer to it (one row of an answers CSV)."""

    question_id: str
    question: str
    answer: str


TensorMap = Mapping[int, torch.Tensor]
"""``{layer: tensor}``: per-layer vectors ``[d_model]`` or bases ``[d_model, k]``."""


@runtime_checkable
class TokenizerLike(Protocol):
    """What emprobe uses of a Hugging Face tokenizer (chat template, ids, padding)."""

    pad_token_id: int | None
    eos_token_id: int | None
    chat_template: str | None

    def __call__(self, text: str | list[str], **kwargs: object) -> Mapping[str, object]: ...

    def apply_chat_template(self, conversation: Sequence[Mapping[str, str]],
                            **kwargs: object) -> str | list[int]: ...

    def decode(self, token_ids: Sequence[int] | torch.Tensor, **kwargs: object) -> str: ...


@runtime_checkable
class CausalLMLike(Protocol):
    """What emprobe uses of a causal LM: a config, parameters, a forward call, modules."""

    config: object

    def __call__(self, *args: object, **kwargs: object) -> object: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def named_modules(self, *args: object, **kwargs: object) -> Iterator[tuple[str, torch.nn.Module]]: ...


@runtime_checkable
class BlockLayout(Protocol):
    """Where a model's decoder blocks live (``emprobe.models.layers.LayerMap``)."""

    @property
    def n_layers(self) -> int: ...

    def check_layer(self, layer: int) -> int: ...


@runtime_checkable
class SubjectLike(Protocol):
    """A model under study: what hooks, scorers and steering need of ``emprobe.Subject``.

    ``n_layers`` counts decoder blocks; ``d_model`` is the residual width.
    """

    name: str

    @property
    def model(self) -> CausalLMLike: ...

    @property
    def tokenizer(self) -> TokenizerLike: ...

    @property
    def n_layers(self) -> int: ...

    @property
    def d_model(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def generate(self, prompts: Sequence[Sequence[dict[str, str]]], max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 batch_size: int = 8) -> list[str]: ...


class SAEConfigLike(Protocol):
    """The sizes of an SAE (SAELens' ``cfg``): input width and number of latents."""

    @property
    def d_in(self) -> int: ...

    @property
    def d_sae(self) -> int: ...


@runtime_checkable
class SAELike(Protocol):
    """What emprobe uses of a SAELens SAE: ``encode`` ``[rows, d_in] -> [rows, d_sae]``,
    the encoder and decoder weights, its sizes, device and dtype."""

    @property
    def W_enc(self) -> torch.Tensor: ...  # noqa: N802 (SAELens' name, [d_in, d_sae])

    @property
    def W_dec(self) -> torch.Tensor: ...  # noqa: N802 (SAELens' name, [d_sae, d_in])

    @property
    def cfg(self) -> SAEConfigLike: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...


Scorer = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
"""``scorer(questions, answers) -> scores``: one score per answer, same order."""
