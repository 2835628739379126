"""Models: loading subject models (embedded GGUF, HF ids, local folders, PEFT adapters,
tiny random models) and mapping their layers.

The bottom layer of emprobe: imports nothing from other emprobe folders except
``emprobe.errors`` and ``emprobe.io``.
"""

from emprobe.models.embedded import EMBEDDED_NAME, embedded_gguf_path, embedded_model_dir
from emprobe.models.layers import LayerMap
from emprobe.models.subject import Subject, cache_dir, load_model
from emprobe.models.tiny import TINY_SPECS, make_tiny_tokenizer

__all__ = [
    "EMBEDDED_NAME",
    "LayerMap",
    "Subject",
    "TINY_SPECS",
    "cache_dir",
    "embedded_gguf_path",
    "embedded_model_dir",
    "load_model",
    "make_tiny_tokenizer",
]
