"""Tiny randomly initialised models for fast tests: built from a config, seeded, offline.

The tokenizer is byte-level (256 byte tokens plus chat specials) with a
ChatML template, so chat formatting and response masks behave as on a real
instruct model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict

import torch

from emprobe.models.templates import CHATML_TEMPLATE

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


GEMMA_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
"""A turn format in the style of Gemma's (BOS written by the template), for tests."""

GEMMA_STYLE_SPECIALS = ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]


def make_tiny_tokenizer(style: str = "chatml") -> PreTrainedTokenizerFast:
    """A byte-level fast tokenizer with chat specials.

    ``style``: ``"chatml"`` (vocab 260, ChatML template, no BOS added; the default),
    ``"gemma"`` (``<bos>`` added by the encoder, ``<start_of_turn>`` template that writes
    ``{{ bos_token }}`` itself) or ``"base"`` (``<bos>`` added by the encoder, no chat
    template: a base model's tokenizer).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if style not in ("chatml", "gemma", "base"):
        raise ValueError(f"unknown tiny tokenizer style {style!r}")
    # the gemma / base styles have no ChatML tokens, like a real non-ChatML vocabulary
    specials = SPECIAL_TOKENS if style == "chatml" else ["<|endoftext|>", "<pad>",
                                                         *GEMMA_STYLE_SPECIALS]
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_alphabet))}
    for tok in specials:
        vocab[tok] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    if style == "chatml":
        names = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
    else:
        core.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])])
        names = {"bos_token": "<bos>", "eos_token": "<eos>"}
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<|endoftext|>",
                                  pad_token="<pad>", **names)
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = {"chatml": CHATML_TEMPLATE, "gemma": GEMMA_STYLE_TEMPLATE,
                         "base": None}[style]
    return tok


class _DecoderShape(TypedDict):
    """Config fields of a Llama-style tiny decoder (widths in units, not bytes)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    tie_word_embeddings: bool


class _GemmaShape(_DecoderShape):
    """A tiny decoder's fields plus Gemma's head width, window and query scale."""

    head_dim: int
    sliding_window: int
    query_pre_attn_scalar: int


# The Llama-style tiny models (Llama, Qwen2) share one shape.
_TINY_DECODER = _DecoderShape(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)


def _tiny_llama(vocab: int) -> PreTrainedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **_TINY_DECODER))


def _tiny_qwen2(vocab: int) -> PreTrainedModel:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, **_TINY_DECODER))


def _tiny_gpt2(vocab: int) -> PreTrainedModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=vocab, n_embd=64, n_layer=4, n_head=4, n_positions=512, bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(cfg)


def _tiny(config_cls: str, model_cls: str,
          **kw: object) -> Callable[[int], PreTrainedModel]:
    """A builder of ``model_cls(config_cls(vocab_size=vocab, **kw))`` (token ids set later)."""

    def build(vocab: int) -> PreTrainedModel:
        import transformers

        ids = dict(pad_token_id=None, bos_token_id=None, eos_token_id=None)
        cfg = getattr(transformers, config_cls)(vocab_size=vocab, **ids, **kw)
        return getattr(transformers, model_cls)(cfg)

    return build


# Gemma 2/3: post-norm ("sandwich") blocks, sliding-window layers, head_dim set explicitly
_TINY_GEMMA = _GemmaShape(**_TINY_DECODER, head_dim=16, sliding_window=16,
                          query_pre_attn_scalar=16)
_TINY_NEOX: dict[str, int] = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                  num_attention_heads=4, max_position_embeddings=512)

TINY_SPECS: dict[str, Callable[[int], PreTrainedModel]] = {
    "tiny-llama": _tiny_llama,
    "tiny-qwen2": _tiny_qwen2,
    "tiny-gpt2": _tiny_gpt2,
    "tiny-mistral": _tiny("MistralConfig", "MistralForCausalLM", **_TINY_DECODER),
    "tiny-gemma2": _tiny("Gemma2Config", "Gemma2ForCausalLM", **_TINY_GEMMA),
    "tiny-gemma3": _tiny("Gemma3TextConfig", "Gemma3ForCausalLM", **_TINY_GEMMA),
    "tiny-olmo2": _tiny("Olmo2Config", "Olmo2ForCausalLM", **_TINY_DECODER),
    "tiny-phi3": _tiny("Phi3Config", "Phi3ForCausalLM", **_TINY_DECODER),
    "tiny-phi": _tiny("PhiConfig", "PhiForCausalLM", **_TINY_NEOX),
    "tiny-gpt-neox": _tiny("GPTNeoXConfig", "GPTNeoXForCausalLM", **_TINY_NEOX),
}
"""Tiny random models by spec. Gemma 2/3 get the ``gemma`` tokenizer style (BOS added)."""

TINY_TOKENIZER_STYLE = {"tiny-gemma2": "gemma", "tiny-gemma3": "gemma"}


def build_tiny(spec: str, seed: int = 0) -> tuple[Any, PreTrainedTokenizerFast]:
    """Build (model, tokenizer) for a tiny spec; same seed, same weights.

    The model is left untyped: ``PreTrainedModel.to`` does not type-check (transformers
    wraps it), and ``load_model`` moves it.
    """
    tok = make_tiny_tokenizer(TINY_TOKENIZER_STYLE.get(spec, "chatml"))
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = TINY_SPECS[spec](len(tok))
    finally:
        torch.random.set_rng_state(gen_state)
    model.config.pad_token_id = tok.pad_token_id
    model.config.eos_token_id = tok.eos_token_id
    model.config.bos_token_id = tok.bos_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
    model.eval()
    return model, tok
