"""The C heap under torch on a CPU: keep freed tensor memory for the next batch.

torch's CPU tensors come from ``malloc``. glibc serves a large request from fresh pages
(``mmap``) and hands memory at the top of the heap back to the kernel once more than
``M_TRIM_THRESHOLD`` of it is free; both thresholds start small (128 KiB) and only grow as
it sees large blocks come and go. A forward pass frees and re-allocates activations of a
few MiB per layer, and an SAE step two gradients of ~10 MiB each, so memory keeps going
back to the kernel and coming back as new pages, and each first touch of a 4 KiB page is a
page fault that zero-fills it. On the embedded model on 2 cores that cost the bare forward
about a tenth of its speed and the sparse SAE step a third of its backward (separate
processes: 985-1,194 vs 1,134-1,277 tokens/s; docs/models.md).

``tune_cpu_allocator`` fixes both thresholds (blocks under 32 MiB come from the heap;
the heap keeps up to 256 MiB of free memory before trimming), so the same pages are reused
batch after batch. It is process-wide and applies once: ``load_model`` calls it for a
model on the CPU. It does nothing (and says so) outside glibc, when the process already
sets ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` itself, or with
``EMPROBE_CPU_ALLOCATOR=default`` (keep glibc's own behaviour). The price: up to 256 MiB
of freed memory stays with the process instead of going back to the system; a stage that
ends with much memory freed (the SAE harvest's forward activations) hands it back with
``release_free_memory`` before the next stage allocates its own (so the two peaks do not
add up).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
from typing import Any

import torch

from emprobe.errors import ConfigError

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "allocator_state", "release_free_memory",
           "tune_cpu_allocator"]

MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 256 * 2**20
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_ENV = "EMPROBE_CPU_ALLOCATOR"
_OPT_OUT = ("default", "0", "off", "no")
_OPT_IN = ("", "tuned", "1", "on", "yes")

_state: str | None = None


def allocator_state() -> str:
    """``"tuned"``, or why not (``"not tried"``, ``"opted out"``, ``"set by MALLOC_* env"``,
    ``"not glibc"``, ``"mallopt refused"``)."""
    return _state or "not tried"


def tune_cpu_allocator(device: str | torch.device = "cpu") -> bool:
    """Fix glibc's mmap and trim thresholds for this process (see the module) when
    ``device`` is the CPU; True when they are (now or by an earlier call). Safe to call any
    number of times. ``ConfigError`` for an ``EMPROBE_CPU_ALLOCATOR`` it does not know."""
    global _state
    if torch.device(device).type != "cpu":
        return False
    if _state is not None:
        return _state == "tuned"
    choice = os.environ.get(_ENV, "").strip().lower()
    if choice not in _OPT_OUT + _OPT_IN:
        raise ConfigError(f"{_ENV}={choice!r}: use 'default' (glibc's own thresholds) or "
                          "'tuned' (emprobe's; the default)")
    if choice in _OPT_OUT:
        _state = "opted out"
    elif any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        _state = "set by MALLOC_* env"
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _state = "not glibc"
    else:
        _state = "tuned" if _mallopt() else "mallopt refused"
    return _state == "tuned"


@functools.cache
def _glibc_function(name: str) -> Any:
    """glibc's C function ``name`` (ctypes), or None outside glibc or where it is missing."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def _mallopt() -> bool:
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # the mmap threshold first: setting either turns glibc's dynamic thresholds off
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_free_memory() -> bool:
    """Hand the C heap's free memory back to the system now (glibc's ``malloc_trim(0)``:
    the free top of the heap and free whole pages inside it), whatever the thresholds.
    Cheap (a few ms); nothing in use moves. True when glibc released something; False
    where it released nothing or is not glibc."""
    trim = _glibc_function("malloc_trim")
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))
