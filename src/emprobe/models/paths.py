"""Where emprobe keeps converted models and other caches."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The emprobe cache folder: ``$EMPROBE_CACHE`` or ``~/.cache/emprobe``."""
    root = os.environ.get("EMPROBE_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "emprobe"
    path.mkdir(parents=True, exist_ok=True)
    return path
