"""Memory use of a training run, logged every iteration beside the disk figures (issue 19, item 2).

- ``memory/rss_bytes``: this process's resident set now (``VmRSS`` of ``/proc/self/status``);
- ``memory/peak_rss_bytes``: its high-water mark since it started (``VmHWM``), which is what a
  machine's memory has to hold;
- ``memory/tree_rss_bytes``: the resident sets of this process and every live descendant added up
  (Prefect's ephemeral server, Ray workers, a logview): the whole run's footprint now. Pages shared
  between processes count once per process, so this is an upper bound.

Absent where the kernel does not provide them (not Linux).
"""

from __future__ import annotations

import os
from pathlib import Path

from reinflow.tracking.process_stat import PARENT_PID, stat_fields

RSS_BYTES = "memory/rss_bytes"
PEAK_RSS_BYTES = "memory/peak_rss_bytes"
TREE_RSS_BYTES = "memory/tree_rss_bytes"


def status_bytes(field: str, status_file: Path = Path("/proc/self/status")) -> int | None:
    """A ``kB`` field of a ``/proc/<pid>/status`` file in bytes, or None where it cannot be read."""
    try:
        for line in status_file.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def parents(proc: Path = Path("/proc")) -> dict[int, int]:
    """``{pid: parent pid}`` of every process visible in ``proc`` (vanishing ones skipped)."""
    found: dict[int, int] = {}
    for entry in proc.iterdir():
        fields = stat_fields(entry.name, proc) if entry.name.isdigit() else None
        if fields is not None:
            found[int(entry.name)] = int(fields[PARENT_PID])
    return found


def descendants(root: int, parent_of: dict[int, int]) -> set[int]:
    """``root`` and every process below it in ``parent_of``."""
    children: dict[int, list[int]] = {}
    for pid, parent in parent_of.items():
        children.setdefault(parent, []).append(pid)
    tree, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in tree:
                tree.add(child)
                todo.append(child)
    return tree


def tree_rss_bytes(root: int | None = None, proc: Path = Path("/proc")) -> int | None:
    """The summed ``VmRSS`` of ``root`` (this process by default) and its live descendants."""
    if not (proc / "self" / "status").exists():
        return None
    pids = descendants(root or os.getpid(), parents(proc))
    return sum(status_bytes("VmRSS", proc / str(pid) / "status") or 0 for pid in pids)


def memory_use() -> dict[str, float]:
    """``{RSS_BYTES, PEAK_RSS_BYTES, TREE_RSS_BYTES}`` now, each only where the kernel provides it."""
    figures = {RSS_BYTES: status_bytes("VmRSS"), PEAK_RSS_BYTES: status_bytes("VmHWM"),
               TREE_RSS_BYTES: tree_rss_bytes()}
    return {key: float(value) for key, value in figures.items() if value is not None}
