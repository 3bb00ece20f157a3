"""Normalised records ⇄ Parquet shards: ``<path>/<split>/part-NNNNN.parquet`` + ``manifest.json``.

Every shard holds exactly ``shard_size`` rows except the last; all share :data:`SCHEMA`. The
manifest records the row counts, the skipped rows by reason (with the first few examples), each
shard's row count and sha256, and the source description. Later stages read tasks back in order
from a row cursor with :func:`iter_records` / :func:`read_shards`.

Writes are atomic per file (a temporary file, then a rename) and the manifest is removed first and
written last: a split with a manifest is complete; a split without one is not to be trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from reinflow.data.normalize import Record, Skip
from reinflow.data.sources import DataSourceError

SCHEMA = pa.schema(
    [
        pa.field("task_id", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("reference_answer", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "reinflow-shards/1"
SHARD_GLOB = "part-*.parquet"
SKIPPED_EXAMPLES_KEPT = 5
PROGRESS_EVERY_ROWS = 500


@dataclass(frozen=True)
class ShardSet:
    """A written split: its manifest and the manifest's sha256 (which covers every shard's sha256)."""

    manifest: str
    sha256: str


def split_dir(path: Path, split: str) -> Path:
    """The folder of one split's shards."""
    return Path(path) / split


def manifest_path(path: Path, split: str) -> Path:
    """The manifest of one split."""
    return split_dir(path, split) / MANIFEST_NAME


def shard_name(shard_index: int) -> str:
    """`part-00000.parquet` for shard 0."""
    return f"part-{shard_index:05d}.parquet"


# ----------------------------------------------------------------------------- writing


def write_shards(
    outcomes: Iterable[Record | Skip],
    path: Path,
    split: str,
    shard_size: int,
    source_description: dict[str, Any],
    on_progress: Callable[[int], None] | None = None,
) -> ShardSet:
    """Write a split's records as Parquet shards and a manifest; return the manifest and its sha256.

    ``outcomes`` are the normalised rows in order (records and skips); ``on_progress(rows_done)``
    is called every few hundred rows read and once at the end. Memory holds one shard at a time.
    """
    manifest_path(path, split).unlink(missing_ok=True)
    writer = _SplitWriter(split_dir(path, split), shard_size)
    for outcome in outcomes:
        writer.add(outcome)
        if on_progress is not None and writer.rows_read % PROGRESS_EVERY_ROWS == 0:
            on_progress(writer.rows_read)
    writer.flush()
    _remove_stale_shards(writer.directory, keep={shard["file"] for shard in writer.shards})
    manifest_bytes = json.dumps(writer.manifest(split, source_description), indent=2, ensure_ascii=False).encode()
    _write_atomically(manifest_path(path, split), manifest_bytes)
    if on_progress is not None:
        on_progress(writer.rows_read)
    return ShardSet(manifest=str(manifest_path(path, split)), sha256=hashlib.sha256(manifest_bytes).hexdigest())


class _SplitWriter:
    """Cuts a stream of records into shards of ``shard_size`` rows; counts the skipped rows."""

    def __init__(self, directory: Path, shard_size: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.shard_size = directory, shard_size
        self.shards: list[dict[str, Any]] = []
        self.pending: list[Record] = []
        self.skipped: Counter[str] = Counter()
        self.skipped_examples: list[Skip] = []
        self.rows_read = self.rows_written = 0

    def add(self, outcome: Record | Skip) -> None:
        """Take one normalised row; write a shard whenever ``shard_size`` records are pending."""
        self.rows_read += 1
        if isinstance(outcome, Skip):
            self.skipped[str(outcome.reason)] += 1
            if len(self.skipped_examples) < SKIPPED_EXAMPLES_KEPT:
                self.skipped_examples.append(outcome)
            return
        self.pending.append(outcome)
        if len(self.pending) == self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the pending records (if any) as the next shard."""
        if not self.pending:
            return
        self.shards.append(_write_shard(self.directory, len(self.shards), self.pending, self.rows_written))
        self.rows_written += len(self.pending)
        self.pending = []

    def manifest(self, split: str, source_description: dict[str, Any]) -> dict[str, Any]:
        """The manifest of the written split."""
        return {
            "format": MANIFEST_FORMAT,
            "split": split,
            "rows": self.rows_written,
            "rows_read": self.rows_read,
            "skipped_total": sum(self.skipped.values()),
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_examples": [
                {"row_index": skip.row_index, "reason": str(skip.reason), "detail": skip.detail}
                for skip in self.skipped_examples
            ],
            "shard_size": self.shard_size,
            "schema": {field.name: str(field.type) for field in SCHEMA},
            "shards": self.shards,
            "source": source_description,
        }


def _write_shard(directory: Path, shard_index: int, records: list[Record], first_row: int) -> dict[str, Any]:
    """Write one shard atomically; return its manifest entry."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(records, schema=SCHEMA), sink)
    data = sink.getvalue().to_pybytes()
    name = shard_name(shard_index)
    _write_atomically(directory / name, data)
    return {"file": name, "rows": len(records), "first_row": first_row, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def _remove_stale_shards(directory: Path, keep: set[str]) -> None:
    """Delete shard files left over from an earlier, longer write."""
    for stale in directory.glob(SHARD_GLOB):
        if stale.name not in keep:
            stale.unlink()


def _write_atomically(target: Path, data: bytes) -> None:
    """Write bytes to a temporary file beside target, flush them to disk, then rename."""
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- reading


def load_manifest(path: Path, split: str) -> dict[str, Any]:
    """A split's manifest; FileNotFoundError (naming the file) where the split is not prepared."""
    file = manifest_path(path, split)
    if not file.is_file():
        raise FileNotFoundError(f"no shard manifest at {file}: prepare the data first (reinflow prepare-data)")
    return json.loads(file.read_text(encoding="utf-8"))


def summarize(path: Path, split: str) -> dict[str, Any]:
    """A split's summary: {rows, skipped, skipped_by_reason, shards (count), manifest (path)}."""
    manifest = load_manifest(path, split)
    return {
        "rows": manifest["rows"],
        "skipped": manifest["skipped_total"],
        "skipped_by_reason": manifest["skipped"],
        "shards": len(manifest["shards"]),
        "manifest": str(manifest_path(path, split)),
    }


def require_rows(path: Path, split: str) -> None:
    """Raise a one-line DataSourceError when a prepared split holds no task (an empty source, or
    every row skipped), naming the source and why its rows were skipped."""
    manifest = load_manifest(path, split)
    if manifest["rows"]:
        return
    origin = manifest["source"].get("file") or manifest["source"].get("name")
    if not manifest["rows_read"]:
        raise DataSourceError(f"split '{split}' of {origin} is empty: no rows to make tasks of")
    reasons = ", ".join(f"{reason}: {count}" for reason, count in manifest["skipped"].items())
    example = manifest["skipped_examples"][0]
    raise DataSourceError(
        f"split '{split}' of {origin} has no usable rows: all {manifest['rows_read']} were skipped ({reasons}); "
        f"e.g. row {example['row_index']}: {example['detail'][:200]}"
    )


def verify_shards(path: Path, split: str) -> list[str]:
    """What is wrong with a split on disk (no manifest, a shard missing or changed); empty if intact."""
    file = manifest_path(path, split)
    if not file.is_file():
        return [f"{file} is missing"]
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return [f"{file} is not valid JSON: {error}"]
    problems = []
    for shard in manifest["shards"]:
        shard_file = split_dir(path, split) / shard["file"]
        if not shard_file.is_file():
            problems.append(f"{shard_file} is missing")
        elif _sha256(shard_file) != shard["sha256"]:
            problems.append(f"{shard_file} does not match its sha256 in the manifest")
    return problems


def shards_intact(shard_set: ShardSet) -> bool:
    """Whether a ShardSet (e.g. a cached one) still describes the manifest and shards on disk."""
    manifest_file = Path(shard_set.manifest)
    if not manifest_file.is_file() or _sha256(manifest_file) != shard_set.sha256:
        return False
    return not verify_shards(manifest_file.parent.parent, manifest_file.parent.name)


def _sha256(file: Path) -> str:
    """The sha256 hex digest of a (shard-sized) file."""
    return hashlib.sha256(file.read_bytes()).hexdigest()


def iter_records(path: Path, split: str, start_row: int = 0) -> Iterator[Record]:
    """The split's records in order, from row ``start_row`` (a 0-based cursor over kept rows) to the end."""
    manifest = load_manifest(path, split)
    if not 0 <= start_row <= manifest["rows"]:
        raise ValueError(f"start_row {start_row} is outside split '{split}' (it has {manifest['rows']} rows)")
    return _records_from(split_dir(path, split), manifest["shards"], start_row)


def _records_from(directory: Path, shards: list[dict[str, Any]], start_row: int) -> Iterator[Record]:
    """Records of the listed shards from row ``start_row`` on, one shard in memory at a time."""
    for shard in shards:
        if shard["first_row"] + shard["rows"] <= start_row:
            continue
        table = pq.read_table(directory / shard["file"], schema=SCHEMA)
        yield from table.slice(max(0, start_row - shard["first_row"])).to_pylist()


def read_shards(path: Path, split: str, start_row: int = 0, max_rows: int | None = None) -> list[Record]:
    """Up to ``max_rows`` records (all where None) of a split, in order from row ``start_row``."""
    records = iter_records(path, split, start_row)
    if max_rows is None:
        return list(records)
    return [record for _, record in zip(range(max_rows), records)]
