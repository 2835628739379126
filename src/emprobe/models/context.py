"""The batch currently running through a subject, so hooks can select prompt/response tokens."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emprobe.models.chat import ChatBatch

_ACTIVE: ContextVar[ChatBatch | None] = ContextVar("emprobe_active_batch", default=None)


def active_batch() -> ChatBatch | None:
    """The ``ChatBatch`` set by ``use_batch`` (or ``Subject.forward``), if any."""
    return _ACTIVE.get()


@contextlib.contextmanager
def use_batch(batch: ChatBatch | None) -> Iterator[None]:
    """Make ``batch`` visible to hooks for the duration of the block."""
    token = _ACTIVE.set(batch)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
