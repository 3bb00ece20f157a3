"""Give freed heap memory back to the operating system after each stage (``train.release_free_memory``).

An update's and a rollout's temporaries of 1 to 32 MB (activations of a micro-batch, a decode
step's buffers) come from glibc's heap: once glibc has freed one large block it raises its mmap
threshold to 32 MB, so the blocks below that stay in the heap, and after they are freed the heap
keeps their pages. Over the quickstart's first 14 iterations this grew the resident set from 6.7 GB
to 9.7 GB while the live tensors stayed at 3.5-4.0 GB (measured, see ``bench/memory_use.py``).
``malloc_trim(0)`` returns the free pages inside the heap, not only its top, so calling it between
stages keeps the resident set at what the live objects need. It takes milliseconds; the pages are
faulted in again by the next stage's first allocations.

Elsewhere than glibc (musl, macOS) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache


@cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS; True where the C library did (it had pages to give)."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


@contextmanager
def releasing_memory(enabled: bool) -> Iterator[None]:
    """Run the ``with`` block, then :func:`release_free_memory` when ``enabled`` (also after an error)."""
    try:
        yield
    finally:
        if enabled:
            release_free_memory()
