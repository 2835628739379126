"""Exceptions emprobe raises for bad input: each message is one line that says what and where."""

from __future__ import annotations


class EmprobeError(Exception):
    """Base class of every error emprobe raises on purpose."""


class ModelNotFoundError(EmprobeError):
    """A model spec that does not resolve to anything loadable."""


class SiteError(EmprobeError, KeyError):
    """An unknown hook site or an out-of-range layer."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ShapeError(EmprobeError, ValueError):
    """A tensor of the wrong shape or width (e.g. a direction for another model)."""


class DataError(EmprobeError, ValueError):
    """Malformed input data (JSONL, YAML, configs)."""


class FormatError(EmprobeError, ValueError):
    """A file on disk that is not in the expected format."""


class EndpointError(EmprobeError):
    """An HTTP endpoint that is unreachable or answers garbage."""
