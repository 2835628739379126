"""The one error hierarchy: every error emprobe raises on purpose, each message one line.

Which class to raise (and to catch)::

    EmprobeError                      base: catch this for "emprobe refused"
    |-- DataError (ValueError)        bad *data*: records, JSONL / YAML / CSV content, a
    |   |                             question set, an empty or NaN measurement input
    |   `-- LimitError (+FormatError) input over a resource limit (size, depth, aliases)
    |-- FormatError (ValueError)      a *file* that is not in its documented format
    |-- ConfigError (ValueError)      a bad *setting*: an argument or config field out of
    |                                 range or not one of its allowed values
    |-- ShapeError (ValueError)       a tensor of the wrong shape / width
    |-- SiteError (KeyError)          an unknown hook site or an out-of-range layer
    |-- ModelMismatchError            an artifact (Direction, SAE, adapter) used on a model
    |                                 other than the one it was made for
    |-- ModelNotFoundError            a model spec that resolves to nothing loadable
    |-- EndpointError                 an HTTP endpoint unreachable or answering garbage
    `-- QualityError                  a *result* below its quality gate; every gate raises
                                      it or a subclass (the SAE gate, the judge's number-mass
                                      check, the demo's ``DemoQualityError``)

Rule of thumb: the user can fix a ``ConfigError`` by changing an argument, a
``DataError`` / ``FormatError`` by fixing the input (the message names the file and the
field or line), and a ``QualityError`` only by a bigger budget or a better method.
Messages are one line of at most ``MAX_MESSAGE_CHARS`` characters.
"""

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
    """Bad input data: the content of a file the user passed (JSONL, YAML, CSV records) or
    of records / measurements passed in memory. A bad *setting* is a ``ConfigError``."""


class FormatError(EmprobeError, ValueError):
    """A file on disk that is not in the expected format."""


class LimitError(DataError, FormatError):
    """Input over a resource limit (file or line size, nesting depth, YAML aliases)."""


class EndpointError(EmprobeError):
    """An HTTP endpoint that is unreachable or answers garbage."""


class ConfigError(EmprobeError, ValueError):
    """A setting that is out of range or not one of its allowed values (configs, arguments)."""


class ModelMismatchError(EmprobeError):
    """An artifact (a Direction, an SAE, an adapter) used on a model other than its own."""


class QualityError(EmprobeError):
    """A trained artifact below its quality gate (e.g. an SAE with low explained variance)."""
