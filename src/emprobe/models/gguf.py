"""GGUF model files -> plain safetensors model folders that transformers and PEFT load.

transformers reads a GGUF (``from_pretrained(..., gguf_file=...)``) and de-quantises it, but
``save_pretrained`` of such a model raises; so the model class is rebuilt from its config
and given the de-quantised state dict, then saved. ``gguf_model_dir`` does this once per
file and caches the folder under ``cache_dir()/models/<stem>-<fingerprint>``;
``convert_gguf`` writes it wherever you like (``emprobe models convert X.gguf --out DIR``).
The folder holds ``config.json``, ``model.safetensors``, the tokenizer files (with the GGUF's
chat template when it has one) and ``emprobe_source.json`` naming the GGUF it came from.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from emprobe.errors import FormatError, ModelNotFoundError
from emprobe.io import atomic_dir, write_json
from emprobe.models.paths import cache_dir

if TYPE_CHECKING:
    from gguf import GGUFReader

__all__ = ["convert_gguf", "gguf_fingerprint", "gguf_model_dir", "is_gguf_file"]

GGUF_MAGIC = b"GGUF"
log = logging.getLogger(__name__)


def is_gguf_file(path: Path) -> bool:
    """True for a file that starts with the GGUF magic bytes."""
    if not path.is_file():
        return False
    with path.open("rb") as fh:
        return fh.read(4) == GGUF_MAGIC


def gguf_fingerprint(path: Path) -> str:
    """A short hash of the file's size and first MiB (cheap; enough to key the cache)."""
    h = hashlib.sha256()
    h.update(str(path.stat().st_size).encode())
    with path.open("rb") as fh:
        h.update(fh.read(1 << 20))
    return h.hexdigest()[:12]


def _is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def gguf_model_dir(path: Path, name: str | None = None, source: Mapping[str, object] | None = None,
                   convert: bool = True) -> Path:
    """The cached safetensors folder of a GGUF file, converting it on first use."""
    path = Path(path).expanduser()
    if not is_gguf_file(path):
        raise FormatError(f"{path}: not a GGUF file (no GGUF magic bytes)")
    fingerprint = gguf_fingerprint(path)
    stem = name or path.stem.lower().replace(" ", "-")
    target = cache_dir() / "models" / f"{stem}-{fingerprint}"
    if _is_converted(target):
        return target
    for other in sorted((cache_dir() / "models").glob(f"*-{fingerprint}")):
        if _is_converted(other):  # the same file converted under another name
            return other
    if not convert:
        raise ModelNotFoundError(f"{target}: {path.name} not converted yet")
    log.info("de-quantising %s into %s (once)", path.name, target)
    convert_gguf(path, target, source=source)
    return target


def _gguf_int(reader: GGUFReader, key: str) -> int | None:
    field = reader.fields.get(key)
    if field is None or not field.parts:
        return None
    try:
        return int(field.parts[-1][0])
    except (TypeError, ValueError, IndexError):
        return None


def check_gguf_layout(path: Path) -> None:
    """Refuse a GGUF whose header disagrees with its tensors, before any model is built.

    transformers fills every weight a GGUF lacks with random values, so a file that claims
    more blocks than it carries would load as a silently half-random model; and an absurd
    width or block count would build a huge model before failing. Checks: ``block_count``
    equals the number of ``blk.N`` blocks present (numbered 0..N-1), and ``embedding_length``
    is the width of ``token_embd.weight``. ``FormatError`` names the file and the field.
    """
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        names = [str(t.name) for t in reader.tensors]
        shapes = {str(t.name): [int(d) for d in t.shape] for t in reader.tensors}
        arch_field = reader.fields.get("general.architecture")
        arch = bytes(arch_field.parts[-1]).decode("utf-8") if arch_field is not None else ""
    except Exception as exc:  # noqa: BLE001 - a foreign file that the reader cannot parse
        if isinstance(exc, MemoryError):
            raise
        raise FormatError(f"{path}: cannot read this GGUF ({type(exc).__name__})") from None
    blocks = {int(m.group(1)) for n in names if (m := re.match(r"blk\.(\d+)\.", n))}
    declared = _gguf_int(reader, f"{arch}.block_count")
    if declared is not None and blocks and sorted(blocks) != list(range(declared)):
        raise FormatError(f"{path}: {arch}.block_count says {declared} blocks but the file "
                          f"holds weights for {len(blocks)} (blk.{min(blocks)}..blk.{max(blocks)})")
    width = _gguf_int(reader, f"{arch}.embedding_length")
    embed = shapes.get("token_embd.weight")
    if width is not None and embed and width not in embed:
        raise FormatError(f"{path}: {arch}.embedding_length {width} disagrees with "
                          f"token_embd.weight of shape {embed}")


def convert_gguf(path: Path, out: Path, source: Mapping[str, object] | None = None) -> Path:
    """De-quantise a GGUF file to float32 and write a safetensors model folder at ``out``.

    Raises ``FormatError`` (one line, naming the file) when transformers cannot read the
    file's architecture, ``ModelNotFoundError`` when the rebuilt model does not take the
    de-quantised weights.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).expanduser()
    if not is_gguf_file(path):
        raise FormatError(f"{path}: not a GGUF file (no GGUF magic bytes)")
    check_gguf_layout(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                      dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - any failure to parse a foreign file is its format
        if isinstance(exc, MemoryError):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FormatError(f"{path}: transformers cannot read this GGUF ({first})") from None
    config = loaded.config
    state = {k: v.detach().clone() for k, v in loaded.state_dict().items()}
    del loaded
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # a tied lm_head is the only key allowed to be absent
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ModelNotFoundError(
            f"{path}: conversion mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    with atomic_dir(Path(out)) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        write_json(tmp / "emprobe_source.json",
                   {"gguf": path.name, "fingerprint": gguf_fingerprint(path), **(source or {})})
    return Path(out)
