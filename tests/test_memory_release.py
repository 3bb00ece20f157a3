"""Freed heap memory goes back to the OS between stages (``reinflow/training/memory_release.py``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from reinflow.training.memory_release import _malloc_trim, releasing_memory

GLIBC = _malloc_trim() is not None

# In a fresh interpreter: after one 20 MB block is freed, glibc serves 4 MB blocks from its heap;
# 200 of them are freed but the last one, which pins the heap's top, so the freed 796 MB stay resident
# until the heap is trimmed. Prints the resident MB before and after releasing.
FRAGMENTED_HEAP = textwrap.dedent("""
    import numpy as np
    from reinflow.training.memory_release import release_free_memory

    def rss_mb():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024

    big = np.ones(20 * 2**20, dtype=np.uint8)
    del big  # freeing an mmapped block raises glibc's mmap threshold
    blocks = [np.ones(4 * 2**20, dtype=np.uint8) for _ in range(200)]
    last = blocks.pop()
    del blocks
    before = rss_mb()
    released = release_free_memory()
    print(before, rss_mb(), released, int(last[0]))
""")


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_the_freed_pages_of_a_fragmented_heap_go_back_to_the_os():
    result = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, check=True)
    before, after, released, _ = result.stdout.split()
    assert float(before) - float(after) > 600, result.stdout  # most of the 796 MB freed
    assert released == "True"


def test_releasing_memory_trims_after_the_block_even_when_it_raises(monkeypatch):
    calls = []
    monkeypatch.setattr("reinflow.training.memory_release.release_free_memory", lambda: calls.append("trim"))
    with releasing_memory(False):
        calls.append("stage")
    with pytest.raises(RuntimeError), releasing_memory(True):
        calls.append("stage")
        raise RuntimeError("the stage failed")
    assert calls == ["stage", "stage", "trim"]
