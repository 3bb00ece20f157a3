"""Values computed from a file, kept until the file changes (its mtime or size), least recently
used first out. A training run replaces ``iter_N.parquet`` atomically, so a new stamp means a new
file and the value is computed again; an unchanged file is never read twice."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class FileCache:
    """``cache.get(path, "table", lambda: read(path))``: the value for (path, purpose), fresh."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.computed = 0  # how many times a value was (re)computed: tests and the benchmark read it
        self._entries: OrderedDict[tuple[Path, Hashable], tuple[tuple[int, int], Any]] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, path: Path, purpose: Hashable, compute: Callable[[], T]) -> T:
        """The cached value, or ``compute()`` when the file is new or changed since."""
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        key = (path, purpose)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == stamp:
                self._entries.move_to_end(key)
                return entry[1]
            value = compute()
            self.computed += 1
            self._entries[key] = (stamp, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return value
