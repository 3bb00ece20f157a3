"""Give freed heap memory back to the operating system: after each stage (``train.release_free_memory``),
and at once for large blocks (``train.heap_mmap_threshold_bytes``).

An update's and a rollout's temporaries of 1 to 32 MB (activations of a micro-batch, a decode
step's buffers) come from glibc's heap: once glibc has freed one large block it raises its mmap
threshold to 32 MB, so the blocks below that stay in the heap, and after they are freed the heap
keeps their pages. Over the quickstart's first 14 iterations this grew the resident set from 6.7 GB
to 9.7 GB while the live tensors stayed at 3.5-4.0 GB (measured, see ``bench/memory_use.py``).
``malloc_trim(0)`` returns the free pages inside the heap, not only its top, so calling it between
stages keeps the resident set at what the live objects need. It takes milliseconds; the pages are
faulted in again by the next stage's first allocations.

Trimming between stages does not lower a stage's own peak: inside one update, glibc serves the
activations (9 to 25 MB each for the built-in model's 4k-token micro-batches) from its heap, and the
blocks freed by one micro-batch do not fit the next one's mix of sizes, so the heap grows past what
is live. On an update of the quickstart's worst shape (built-in model, 32 episodes, trainer alone;
a probe of glibc's ``mallinfo2`` kept outside the repo), at most 6.9 GB was live while the resident
set reached 9.6 GB (2.8 GB live after the step, 6.1 GB free inside the heap).
:func:`large_blocks_mapped` fixes glibc's mmap threshold (``mallopt(M_MMAP_THRESHOLD)``, which
also stops glibc from raising it) for the length of an update: every block at least that large gets
its own mapping and goes back to the OS when freed, so the resident set follows what is live (7.3 GB
peak on that update, 3.8 GB after it). The price is a page fault per 4 kB of every such block, each
time it is allocated; outside updates the threshold is glibc's raised one (``HEAP_BLOCKS_BELOW``).

Elsewhere than glibc (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache


_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
HEAP_BLOCKS_BELOW = 32 << 20
"""The threshold outside ``large_blocks_mapped``: glibc's own once it has risen (its 64-bit maximum),
so that the rollout's decode buffers (6 MB of logits a step for the built-in model) are reused from
the heap rather than mapped and faulted anew every step."""


@cache
def _libc_function(name: str) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """The C library's function ``name`` (glibc's ``mallopt``, ``malloc_trim``), or None where it has none."""
    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):
        return None


def mmap_large_blocks(threshold_bytes: int) -> bool:
    """From now on, give every heap block of at least ``threshold_bytes`` its own mapping, unmapped
    when freed (a fixed glibc mmap threshold, for the whole process); True where glibc took it."""
    mallopt = _libc_function("mallopt")
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes)) if mallopt is not None else False


@contextmanager
def large_blocks_mapped(threshold_bytes: int | None) -> Iterator[None]:
    """Run the ``with`` block with glibc's mmap threshold at ``threshold_bytes`` (``None``: as it is),
    then at ``HEAP_BLOCKS_BELOW`` (also after an error). The blocks mapped inside stay mapped until freed."""
    if threshold_bytes is None:
        yield
        return
    mmap_large_blocks(threshold_bytes)
    try:
        yield
    finally:
        mmap_large_blocks(HEAP_BLOCKS_BELOW)


def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    return _libc_function("malloc_trim")


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
