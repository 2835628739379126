"""Saving figures: HTML always (written atomically), PNG / SVG when a static renderer exists."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.basedatatypes import BaseFigure
from plotly.offline import get_plotlyjs

from emprobe.errors import EmprobeError
from emprobe.io import atomic_path
from emprobe.plot.labels import fit_labels

STATIC_FORMATS = ("png", "svg", "pdf")
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True,
                 "toImageButtonOptions": {"format": "svg", "scale": 2}}
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome",
             "msedge")


@functools.lru_cache(maxsize=1)
def static_export_available() -> bool:
    """True when plotly can write PNG / SVG here: kaleido installed, and for kaleido >= 1
    a Chrome / Chromium it can drive (kaleido 1.x does not ship one)."""
    if importlib.util.find_spec("kaleido") is None:
        return False
    try:
        major = int(importlib.metadata.version("kaleido").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    if major < 1:
        return True
    if os.environ.get("BROWSER_PATH") and Path(os.environ["BROWSER_PATH"]).exists():
        return True
    return any(shutil.which(b) for b in _BROWSERS)


def default_formats() -> tuple[str, ...]:
    """``("html",)`` plus ``png`` and ``svg`` where a static renderer is installed."""
    return ("html", "png", "svg") if static_export_available() else ("html",)


def figure_html(fig: BaseFigure, include_plotlyjs: bool | str = True, full_html: bool = True,
                div_id: str | None = None) -> str:
    """The figure as HTML (see :func:`save_figure` for ``include_plotlyjs``)."""
    js: Any = include_plotlyjs  # plotly accepts True/False or "cdn" / "directory" / a URL (its stubs say bool)
    return pio.to_html(fig, include_plotlyjs=js, full_html=full_html,
                       div_id=div_id, config=PLOTLY_CONFIG)


def make_readable(path: Path) -> None:
    """Give a finished temp file the usual ``0o666 & ~umask`` mode (``mkstemp`` makes 0600),
    so reports and figures can be served or shared like any other file."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _write_plotlyjs_beside(folder: Path) -> None:
    target = folder / "plotly.min.js"
    if not target.exists():
        with atomic_path(target) as tmp:
            tmp.write_text(get_plotlyjs(), encoding="utf-8")
            make_readable(tmp)


def save_figure(
    fig: go.Figure,
    path_without_ext: str | os.PathLike[str],
    formats: Sequence[str] | None = None,
    include_plotlyjs: bool | str = True,
    scale: float = 2.0,
    strict: bool = False,
) -> list[Path]:
    """Write ``fig`` as ``<path>.html`` (and ``.png`` / ``.svg`` / ``.pdf``), each atomically.

    Args:
        formats: file types to write; ``None`` means :func:`default_formats`. A static
            format asked for where no renderer is installed is skipped (with a warning),
            or raises when ``strict``.
        include_plotlyjs: ``True`` embeds plotly.js (the file works offline, ~4.7 MB);
            ``"directory"`` writes one shared ``plotly.min.js`` beside the file (offline,
            small files); ``"cdn"`` loads it from the internet; ``False`` omits it.
        scale: pixel density of PNG exports.

    Returns the paths written.
    """
    base = Path(path_without_ext)
    if base.suffix.lower().lstrip(".") in ("html", *STATIC_FORMATS):
        base = base.with_suffix("")
    wanted = tuple(default_formats() if formats is None else formats)
    unknown = [f for f in wanted if f not in ("html", *STATIC_FORMATS)]
    if unknown:
        raise EmprobeError(f"save_figure: unknown format(s) {unknown}; use html, png, svg or pdf")
    fit_labels(fig)  # titles set after the builder (or by hand) are wrapped too
    written: list[Path] = []
    for fmt in wanted:
        target = base.parent / f"{base.name}.{fmt}"
        if fmt == "html":
            text = figure_html(fig, include_plotlyjs=include_plotlyjs)
            with atomic_path(target) as tmp:
                tmp.write_text(text, encoding="utf-8")
                make_readable(tmp)
            if include_plotlyjs == "directory":
                _write_plotlyjs_beside(target.parent)
            written.append(target)
            continue
        if not static_export_available():
            if strict:
                raise EmprobeError(
                    f"save_figure: cannot write {target}: no static renderer (pip install kaleido, "
                    "and a Chrome / Chromium for kaleido >= 1)"
                )
            warnings.warn(f"no static renderer installed; skipped {target.name}", stacklevel=2)
            continue
        _write_static(fig, target, fmt, scale)
        written.append(target)
    return written


def _write_static(fig: go.Figure, target: Path, fmt: str, scale: float) -> None:
    with atomic_path(target) as tmp:
        pio.write_image(fig, str(tmp), format=fmt, scale=scale if fmt == "png" else None)
        make_readable(tmp)
