"""Write rows to a Parquet file as they come, in small row groups, and publish it atomically.

Rows go to ``<file>.partial``; leaving the ``with`` block normally renames it to ``<file>``, so a
reader never sees a half-written file under the final name. After an error the partial file is
kept (for inspection) and the final name is left untouched.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ROWS_PER_GROUP = 64
"""Rows buffered before a row group is written: memory stays bounded whatever the row count."""


class ParquetStream:
    """``with ParquetStream(path, schema) as stream: stream.write(row)``."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.schema = schema
        self.rows_written = 0
        self._buffer: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> ParquetStream:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self.partial, self.schema)
        return self

    def write(self, row: dict[str, Any]) -> None:
        """Buffer one row; a full buffer becomes a row group on disk."""
        self._buffer.append(row)
        if len(self._buffer) >= ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._buffer and self._writer is not None:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema))
            self.rows_written += len(self._buffer)
            self._buffer = []

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self._flush()
        assert self._writer is not None
        self._writer.close()
        if kind is None:
            self.partial.replace(self.path)
