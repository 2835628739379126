"""Exceptions emprobe raises for bad input: each message is one line that says what and where."""

from __future__ import annotations

MAX_MESSAGE_CHARS = 600
"""Longest message an ``EmprobeError`` prints; longer ones are cut (input never floods a log)."""


class EmprobeError(Exception):
    """Base class of every error emprobe raises on purpose.

    ``str()`` is always one line of at most ``MAX_MESSAGE_CHARS`` characters: line breaks
    from embedded text (another library's error, a bad value) are flattened and an
    over-long message is cut, so no input can make an error span lines or megabytes.
    """

    def __str__(self) -> str:
        return _bounded(super().__str__())


def _bounded(text: str) -> str:
    if "\n" in text or "\r" in text:
        text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    return text


class ModelNotFoundError(EmprobeError):
    """A model spec that does not resolve to anything loadable."""


class SiteError(EmprobeError, KeyError):
    """An unknown hook site or an out-of-range layer."""

    def __str__(self) -> str:  # KeyError would quote the message
        return _bounded(str(self.args[0])) if self.args else ""


class ShapeError(EmprobeError, ValueError):
    """A tensor of the wrong shape or width (e.g. a direction for another model)."""


class DataError(EmprobeError, ValueError):
    """Malformed input data (JSONL, YAML, configs)."""


class FormatError(EmprobeError, ValueError):
    """A file on disk that is not in the expected format."""


class LimitError(DataError, FormatError):
    """Input over a resource limit (file or line size, nesting depth, YAML aliases)."""


class EndpointError(EmprobeError):
    """An HTTP endpoint that is unreachable or answers garbage."""


class ConfigError(EmprobeError, ValueError):
    """A setting that is out of range or not one of its allowed values (configs, arguments)."""


class QualityError(EmprobeError):
    """A trained artifact below its quality gate (e.g. an SAE with low explained variance)."""
