"""Tiny randomly initialised models for fast tests: built from a config, seeded, offline.

The tokenizer is byte-level (256 byte tokens plus chat specials) with a
ChatML template, so chat formatting and response masks behave as on a real
instruct model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def make_tiny_tokenizer() -> Any:
    """A byte-level fast tokenizer (vocab 260) with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_alphabet))}
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
    )
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tok.chat_template = CHATML_TEMPLATE
    return tok


# The Llama-style tiny models (Llama, Qwen2) share one shape.
_TINY_DECODER: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)


def _tiny_llama(vocab: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **_TINY_DECODER))


def _tiny_qwen2(vocab: int) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, **_TINY_DECODER))


def _tiny_gpt2(vocab: int) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=vocab, n_embd=64, n_layer=4, n_head=4, n_positions=512, bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(cfg)


TINY_SPECS: dict[str, Callable[[int], Any]] = {
    "tiny-llama": _tiny_llama,
    "tiny-qwen2": _tiny_qwen2,
    "tiny-gpt2": _tiny_gpt2,
}


def build_tiny(spec: str, seed: int = 0) -> tuple[Any, Any]:
    """Build (model, tokenizer) for a tiny spec; same seed, same weights."""
    tok = make_tiny_tokenizer()
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
