"""How figures show in a notebook: static PNG images where they can be drawn, else interactive.

GitHub's notebook viewer runs no JavaScript, so a stored plotly figure shows as nothing
there. ``notebook_figures()`` switches plotly's default renderer to ``png`` when a static
renderer is installed (kaleido with a Chrome / Chromium, see ``static_export_available``),
so ``make notebooks`` stores images a reader sees on GitHub; without one (CI, a laptop
without Chrome) figures stay interactive.
"""

from __future__ import annotations

import os

from emprobe.plot.save import static_export_available

__all__ = ["notebook_figures"]

STATIC_ENV = "EMPROBE_STATIC_FIGURES"
"""``1`` forces PNG figures, ``0`` interactive ones; unset: PNG when a renderer exists."""


def notebook_figures(static: bool | None = None, scale: float = 1.5) -> str:
    """Set plotly's default renderer for this notebook; returns its name.

    ``static``: ``True`` PNG, ``False`` plotly's interactive default, ``None`` (default) the
    ``EMPROBE_STATIC_FIGURES`` environment variable, else PNG when ``static_export_available()``.
    ``scale`` multiplies the figure's own pixel size (its layout's width and height; the
    style's default is ``WIDTH`` x ``HEIGHT``).
    """
    import plotly.io as pio

    if static is None:
        env = os.environ.get(STATIC_ENV)
        static = env == "1" if env in ("0", "1") else static_export_available()
    if not static:
        return str(pio.renderers.default)
    renderer = pio.renderers["png"]
    # no fixed size: each figure keeps its layout's width and height
    renderer.width, renderer.height, renderer.scale = None, None, scale  # type: ignore[attr-defined]
    pio.renderers.default = "png"
    return "png"
