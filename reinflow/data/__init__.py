"""Data preparation: read a source's rows, normalise them into tasks, write Parquet shards.

- :mod:`reinflow.data.sources`: raw rows of a split (hub, local JSONL/Parquet, reasoning-gym).
- :mod:`reinflow.data.normalize`: raw row → ``{task_id, question, reference_answer, source}`` or a skip.
- :mod:`reinflow.data.shards`: records ⇄ ``<path>/<split>/part-NNNNN.parquet`` + ``manifest.json``.

No Prefect here; the Prefect tasks in ``tasks/`` wrap these functions.
"""

from reinflow.data.normalize import Record, RowFormat, Skip, normalize_rows, row_format
from reinflow.data.shards import (
    ShardSet,
    iter_records,
    load_manifest,
    read_shards,
    shards_intact,
    summarize,
    verify_shards,
    write_shards,
)
from reinflow.data.sources import (
    DataSourceError,
    RawFile,
    SkipReason,
    download_raw,
    iter_file_rows,
    iter_source_rows,
    raw_file_intact,
)

__all__ = [
    "DataSourceError",
    "RawFile",
    "Record",
    "RowFormat",
    "ShardSet",
    "Skip",
    "SkipReason",
    "download_raw",
    "iter_file_rows",
    "iter_records",
    "iter_source_rows",
    "load_manifest",
    "normalize_rows",
    "raw_file_intact",
    "read_shards",
    "row_format",
    "shards_intact",
    "summarize",
    "verify_shards",
    "write_shards",
]
