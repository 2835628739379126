"""Models: loading subject models (embedded GGUF, any GGUF file, HF ids, local folders, PEFT
adapters, tiny random models of ten families), their chat formats, and mapping their layers.

The bottom layer of emprobe: imports nothing from other emprobe folders except
``emprobe.errors`` and ``emprobe.io``.
"""

from emprobe.models.allocator import allocator_state, release_free_memory, tune_cpu_allocator
from emprobe.models.embedded import EMBEDDED_NAME, embedded_gguf_path, embedded_model_dir
from emprobe.models.gguf import convert_gguf, gguf_model_dir
from emprobe.models.layers import LayerMap
from emprobe.models.subject import Subject, cache_dir, load_model
from emprobe.models.targets import lora_target_modules
from emprobe.models.templates import ChatFormat, ChatTemplateWarning, resolve_chat_format
from emprobe.models.tiny import TINY_SPECS, make_tiny_tokenizer

__all__ = [
    "EMBEDDED_NAME",
    "ChatFormat",
    "ChatTemplateWarning",
    "LayerMap",
    "Subject",
    "TINY_SPECS",
    "allocator_state",
    "cache_dir",
    "convert_gguf",
    "embedded_gguf_path",
    "embedded_model_dir",
    "gguf_model_dir",
    "load_model",
    "lora_target_modules",
    "make_tiny_tokenizer",
    "release_free_memory",
    "resolve_chat_format",
    "tune_cpu_allocator",
]
