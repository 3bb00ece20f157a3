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


# In a fresh interpreter: a heap fragmented as above, then freed, with glibc's dynamic threshold
# (argv[1] == "0") or after mmap_large_blocks(1 MiB). Prints the resident MB while the blocks live,
# after they are freed (no trim) and what mmap_large_blocks returned.
LARGE_BLOCKS = textwrap.dedent("""
    import sys
    import numpy as np
    from reinflow.training.memory_release import mmap_large_blocks

    def rss_mb():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024

    took = mmap_large_blocks(1 << 20) if sys.argv[1] == "1" else None
    big = np.ones(20 * 2**20, dtype=np.uint8)
    del big
    blocks = [np.ones(4 * 2**20, dtype=np.uint8) for _ in range(200)]
    last = blocks.pop()
    live = rss_mb()
    del blocks
    print(live, rss_mb(), took, int(last[0]))
""")


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_with_a_fixed_mmap_threshold_freed_large_blocks_leave_at_once_without_a_trim():
    def run(fixed: str) -> tuple[float, float, str]:
        out = subprocess.run([sys.executable, "-c", LARGE_BLOCKS, fixed], capture_output=True, text=True, check=True)
        live, freed, took, _ = out.stdout.split()
        return float(live), float(freed), took

    live, freed, took = run("1")
    assert took == "True"
    assert live - freed > 700  # the 796 MB left with the blocks
    dynamic_live, dynamic_freed, _ = run("0")
    assert dynamic_live - dynamic_freed < 100  # glibc's raised threshold kept them in the heap


# In a fresh interpreter: how many of glibc's mappings a 4 MB block adds, inside large_blocks_mapped
# (1 MiB), after it, and after one that raised.
MAPPED_INSIDE_ONLY = textwrap.dedent("""
    import ctypes
    import numpy as np
    from reinflow.training.memory_release import large_blocks_mapped

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2

    def mappings_of_a_block():
        before = libc.mallinfo2().hblks
        block = np.ones(4 * 2**20, dtype=np.uint8)
        added = libc.mallinfo2().hblks - before
        del block
        return added

    with large_blocks_mapped(1 << 20):
        inside = mappings_of_a_block()
    after = mappings_of_a_block()
    try:
        with large_blocks_mapped(1 << 20):
            raise RuntimeError("the update failed")
    except RuntimeError:
        pass
    print(inside, after, mappings_of_a_block())
""")


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_large_blocks_are_mapped_inside_the_block_only_even_when_it_raises():
    out = subprocess.run([sys.executable, "-c", MAPPED_INSIDE_ONLY], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "0", "0"], out.stdout  # after it: from the heap (32 MiB threshold)


def test_releasing_memory_trims_after_the_block_even_when_it_raises(monkeypatch):
    calls = []
    monkeypatch.setattr("reinflow.training.memory_release.release_free_memory", lambda: calls.append("trim"))
    with releasing_memory(False):
        calls.append("stage")
    with pytest.raises(RuntimeError), releasing_memory(True):
        calls.append("stage")
        raise RuntimeError("the stage failed")
    assert calls == ["stage", "stage", "trim"]
