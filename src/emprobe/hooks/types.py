"""Names of sites, token positions and ablation modes, as ``Literal`` types with checks.

``check_site`` (in ``emprobe.hooks.convention``) and ``check_positions`` / ``check_mode``
here are the one place each allowed-value list is checked; they raise one-line
``EmprobeError`` subclasses.
"""

from __future__ import annotations

from typing import Literal, cast

from emprobe.errors import ConfigError, SiteError
from emprobe.hooks.convention import SITES, check_site

__all__ = [
    "ABLATION_MODES",
    "POSITIONS",
    "SITES",
    "AblationMode",
    "Positions",
    "Site",
    "check_mode",
    "check_positions",
    "check_site",
]

Site = Literal["resid_pre", "resid_post", "attn_out", "mlp_out"]
Positions = Literal["all", "prompt", "response", "last"]
AblationMode = Literal["zero", "mean"]

POSITIONS: tuple[str, ...] = ("all", "prompt", "response", "last")
ABLATION_MODES: tuple[str, ...] = ("zero", "mean")


def check_positions(positions: str, allowed: tuple[str, ...] = POSITIONS,
                    where: str = "positions") -> Positions:
    """``positions`` if it is one of ``allowed`` (default: all, prompt, response, last)."""
    if positions not in allowed:
        raise SiteError(f"{where}: unknown token positions {positions!r}: use one of "
                        f"{', '.join(allowed)}")
    return cast(Positions, positions)


def check_mode(mode: str, where: str = "ablation") -> AblationMode:
    """``mode`` if it is ``zero`` or ``mean``."""
    if mode not in ABLATION_MODES:
        raise ConfigError(f"{where} mode must be 'zero' or 'mean', not {mode!r}")
    return cast(AblationMode, mode)
