"""Memory figures logged every iteration (``reinflow/tracking/memory_use.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reinflow.tracking.memory_use import (PEAK_RSS_BYTES, RSS_BYTES, TREE_RSS_BYTES, descendants, memory_use, parents,
                                          status_bytes, tree_rss_bytes)

LINUX = Path("/proc/self/status").exists()


def fake_process(proc: Path, pid: int, parent: int, name: str, rss_kb: int) -> None:
    folder = proc / str(pid)
    folder.mkdir(parents=True)
    (folder / "stat").write_text(f"{pid} ({name}) S {parent} {pid} {pid} 0 -1 4194560 0 0\n")
    (folder / "status").write_text(f"Name:\t{name}\nVmHWM:\t{rss_kb * 2} kB\nVmRSS:\t{rss_kb} kB\nThreads:\t1\n")


def test_status_bytes_reads_kilobytes_and_is_none_where_absent(tmp_path):
    fake_process(tmp_path, 7, 1, "python", 1500)
    assert status_bytes("VmRSS", tmp_path / "7" / "status") == 1500 * 1024
    assert status_bytes("VmHWM", tmp_path / "7" / "status") == 3000 * 1024
    assert status_bytes("VmSwap", tmp_path / "7" / "status") is None
    assert status_bytes("VmRSS", tmp_path / "missing" / "status") is None


def test_the_tree_adds_up_descendants_only_even_with_odd_process_names(tmp_path):
    fake_process(tmp_path, 10, 1, "reinflow", 1000)
    fake_process(tmp_path, 11, 10, "prefect ) server (", 200)  # a name with spaces and brackets
    fake_process(tmp_path, 12, 11, "uvicorn", 30)
    fake_process(tmp_path, 13, 1, "unrelated", 5000)
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "status").write_text("VmRSS:\t1 kB\n")
    assert parents(tmp_path) == {10: 1, 11: 10, 12: 11, 13: 1}
    assert descendants(10, parents(tmp_path)) == {10, 11, 12}
    assert tree_rss_bytes(10, tmp_path) == (1000 + 200 + 30) * 1024


@pytest.mark.skipif(not LINUX, reason="/proc is Linux's")
def test_a_child_holding_memory_counts_in_the_tree_not_in_the_process():
    child = subprocess.Popen([sys.executable, "-c", "import sys; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]);"
                              " print('ready', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        figures = memory_use()
        assert set(figures) == {RSS_BYTES, PEAK_RSS_BYTES, TREE_RSS_BYTES}
        assert figures[PEAK_RSS_BYTES] >= figures[RSS_BYTES] > 0
        assert figures[TREE_RSS_BYTES] - figures[RSS_BYTES] >= 300 * 2**20  # the child's 300 MiB, touched
    finally:
        child.communicate("")
