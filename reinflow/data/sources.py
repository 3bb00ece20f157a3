"""Raw rows of one split of a data source: the hub, local JSONL/Parquet files or reasoning-gym.

Pure functions, no Prefect. A row that cannot be read (bad bytes, bad JSON, not an object) is not
an error: it comes out as a :class:`RawRow` carrying a :class:`SkipReason`, so the caller counts
and reports it. A source that cannot be read at all (missing file, unknown reasoning-gym dataset,
unreachable hub dataset) raises :class:`DataSourceError` with a one-line message naming the culprit.

"Downloading" a split (:func:`download_raw`) means making its rows available as one local file:
hub and reasoning-gym rows are written to ``<path>/<split>/raw.jsonl``; a local source file is
used where it lies (nothing is copied).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from reinflow.config import DataConfig, HubSource, LocalSource, ReasoningGymSource
from reinflow.errors import ReinflowError, one_line

Source = HubSource | LocalSource | ReasoningGymSource
RAW_FILE_NAME = "raw.jsonl"
_HASH_CHUNK_BYTES = 1 << 20


class DataSourceError(ReinflowError):
    """A data source cannot be read at all; the message is one line and names the culprit.

    A ValueError (through ReinflowError), so the CLI prints it as it stands.
    """


class SkipReason(StrEnum):
    """Why a row did not become a task (the keys of a manifest's ``skipped`` counts)."""

    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    BLANK_LINE = "blank_line"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    EMPTY_QUESTION = "empty_question"
    EMPTY_ANSWER = "empty_answer"
    QUESTION_TOO_LONG = "question_too_long"


@dataclass(frozen=True)
class RawRow:
    """One row of a split as read: its fields, or why it could not be read.

    ``index`` is the 0-based row (for JSONL: line) number in the split, stable across runs.
    """

    index: int
    fields: dict[str, Any] | None
    unreadable: SkipReason | None
    detail: str


@dataclass(frozen=True)
class RawFile:
    """A split's raw rows on local disk: a `.jsonl` or `.parquet` file, its sha256 and row count."""

    path: str
    sha256: str
    rows: int


# ----------------------------------------------------------------------------- describing a source


def splits_to_prepare(data: DataConfig) -> list[str]:
    """The splits to prepare: every declared split of a local or reasoning-gym source; for a hub
    source (whose splits only the hub knows) the config's train and eval splits."""
    if isinstance(data.source, LocalSource):
        return list(data.source.files)
    if isinstance(data.source, ReasoningGymSource):
        return list(data.source.sizes)
    return list(dict.fromkeys([data.train_split, data.eval_split]))


def local_file(source: LocalSource, split: str, project_root: Path) -> Path:
    """The absolute path of a local split file (relative paths are resolved against the project root)."""
    if split not in source.files:
        raise DataSourceError(f"local source has no split '{split}' (it has {sorted(source.files)})")
    return (project_root / source.files[split]).resolve()


def split_seed(seed: int, split: str) -> int:
    """A per-split generator seed derived from the source seed (stable across processes).

    >>> split_seed(0, "train") == split_seed(0, "train") != split_seed(0, "test")
    True
    """
    digest = hashlib.sha256(f"{seed}:{split}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def short_name(source: Source) -> str:
    """A short lowercase name for task ids: `openai/gsm8k` → `gsm8k`; for local files the folder of
    the first file as configured (`data/gsm8k/train.jsonl` → `gsm8k`), else its stem; a
    reasoning-gym dataset name."""
    if isinstance(source, LocalSource):
        first_file = next(iter(source.files.values()))
        name = first_file.parent.name or first_file.stem
    else:
        name = Path(source.name).name
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or source.type


def question_answer_fields(source: Source) -> tuple[str, str]:
    """The names of the question and answer fields of a source's rows."""
    if isinstance(source, ReasoningGymSource):
        return "question", "answer"
    return source.question_field, source.answer_field


def describe_source(source: Source, split: str, project_root: Path) -> dict[str, Any]:
    """A JSON-able description of one split of a source (for manifests and record metadata)."""
    if isinstance(source, LocalSource):
        return {"type": "local", "file": str(local_file(source, split, project_root)), "split": split}
    if isinstance(source, ReasoningGymSource):
        return {"type": "reasoning_gym", "name": source.name, "split": split, "size": source.sizes[split],
                "seed": split_seed(source.seed, split), "options": source.options}
    return {"type": "hub", "name": source.name, "subset": source.subset, "split": split}


def source_fingerprint(source: Source, split: str, project_root: Path) -> str:
    """What identifies a split's content beyond the config: the sha256 of a local file, or of the
    files of a local folder given as a hub dataset name; empty where the config says it all."""
    if isinstance(source, LocalSource):
        return file_sha256(_existing_local_file(source, split, project_root))
    if isinstance(source, HubSource) and Path(source.name).is_dir():
        return _folder_sha256(Path(source.name))
    return ""


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _folder_sha256(folder: Path) -> str:
    """A sha256 over the relative paths and contents of every file under a folder."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}\0{file_sha256(path)}\0".encode())
    return digest.hexdigest()


def _existing_local_file(source: LocalSource, split: str, project_root: Path) -> Path:
    """The local split file, or DataSourceError naming it where it does not exist."""
    path = local_file(source, split, project_root)
    if not path.is_file():
        raise DataSourceError(f"local data file for split '{split}' not found: {path}")
    return path


# ----------------------------------------------------------------------------- reading rows


def iter_source_rows(source: Source, split: str, project_root: Path) -> Iterator[RawRow]:
    """Iterate the raw rows of one split straight from its source."""
    if isinstance(source, LocalSource):
        return iter_file_rows(_existing_local_file(source, split, project_root))
    if isinstance(source, ReasoningGymSource):
        return _rows_from_dicts(_reasoning_gym_rows(source, split))
    return _rows_from_dicts(_hub_rows(source, split))


def iter_file_rows(path: Path) -> Iterator[RawRow]:
    """Iterate the rows of a local `.jsonl` or `.parquet` file."""
    if not path.is_file():
        raise DataSourceError(f"data file not found: {path}")
    if path.suffix == ".parquet":
        return _parquet_rows(path)
    return _jsonl_rows(path)


def _jsonl_rows(path: Path) -> Iterator[RawRow]:
    """Rows of a JSONL file read line by line; an unreadable line is a RawRow with a skip reason."""
    with path.open("rb") as handle:
        for index, line in enumerate(handle):
            yield _parse_jsonl_line(index, line)


def _parse_jsonl_line(index: int, line: bytes) -> RawRow:
    """One JSONL line → a RawRow (fields, or the reason it cannot be read)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return RawRow(index, None, SkipReason.INVALID_UTF8, str(error))
    if not text.strip():
        return RawRow(index, None, SkipReason.BLANK_LINE, "blank line")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        return RawRow(index, None, SkipReason.INVALID_JSON, str(error))
    if not isinstance(value, dict):
        return RawRow(index, None, SkipReason.NOT_AN_OBJECT, f"a JSON {type(value).__name__}, not an object")
    return RawRow(index, value, None, "")


def _parquet_rows(path: Path) -> Iterator[RawRow]:
    """Rows of a Parquet file, batch by batch (the file is opened now, so a bad file fails now)."""
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataSourceError(f"cannot read Parquet file {path}: {one_line(error)}") from None
    return _rows_from_dicts(row for batch in parquet.iter_batches() for row in batch.to_pylist())


def _rows_from_dicts(rows: Iterable[dict[str, Any]]) -> Iterator[RawRow]:
    """Number rows that are already dicts."""
    for index, fields in enumerate(rows):
        yield RawRow(index, fields, None, "")


def _hub_rows(source: HubSource, split: str) -> Iterator[dict[str, Any]]:
    """Rows of a hub dataset split via `datasets.load_dataset(name, subset, split=split)`."""
    import datasets  # heavy import, only for hub sources

    try:
        dataset = datasets.load_dataset(source.name, source.subset, split=split)
    except (ConnectionError, FileNotFoundError, ValueError) as error:
        raise DataSourceError(
            f"hub dataset '{source.name}' (subset {source.subset!r}, split '{split}') cannot be loaded: "
            f"{one_line(error)}"
        ) from None
    return iter(dataset)


def _reasoning_gym_rows(source: ReasoningGymSource, split: str) -> Iterator[dict[str, Any]]:
    """Procedural tasks of one split: `reasoning_gym.create_dataset(name, size, seed, **options)`."""
    import reasoning_gym  # heavy import, only for reasoning-gym sources
    from reasoning_gym.factory import DATASETS

    if source.name not in DATASETS:
        raise DataSourceError(f"unknown reasoning-gym dataset '{source.name}' (e.g. basic_arithmetic, gsm_symbolic)")
    if split not in source.sizes:
        raise DataSourceError(f"reasoning-gym source has no split '{split}' (it has {sorted(source.sizes)})")
    known_options = {field.name for field in dataclasses.fields(DATASETS[source.name][1])} - {"size", "seed"}
    unknown = sorted(set(source.options) - known_options)
    if unknown:
        raise DataSourceError(
            f"reasoning-gym dataset '{source.name}' has no option(s) {unknown}; it takes {sorted(known_options)}"
        )
    try:
        dataset = reasoning_gym.create_dataset(
            source.name, size=source.sizes[split], seed=split_seed(source.seed, split), **source.options
        )
    except (AssertionError, ValueError) as error:
        raise DataSourceError(f"reasoning-gym dataset '{source.name}' rejects its options: {one_line(error)}") from None
    return iter(dataset)


# ----------------------------------------------------------------------------- download


def download_raw(source: Source, split: str, path: Path, project_root: Path) -> RawFile:
    """Make one split's raw rows available as a local file and return it with its sha256.

    A local source file is used in place. Hub and reasoning-gym rows are written, one JSON object a
    line, to `<path>/<split>/raw.jsonl` (atomically: a temporary file, then a rename).
    """
    if isinstance(source, LocalSource):
        local = _existing_local_file(source, split, project_root)
        return RawFile(path=str(local), sha256=file_sha256(local), rows=count_rows(local))
    target = path / split / RAW_FILE_NAME
    rows = (raw.fields for raw in iter_source_rows(source, split, project_root))
    sha256, row_count = write_jsonl_atomically(rows, target)
    return RawFile(path=str(target), sha256=sha256, rows=row_count)


def raw_file_intact(raw: RawFile) -> bool:
    """Whether a RawFile (e.g. a cached one) still describes the file on disk."""
    path = Path(raw.path)
    return path.is_file() and file_sha256(path) == raw.sha256


def write_jsonl_atomically(rows: Iterable[dict[str, Any]], target: Path) -> tuple[str, int]:
    """Write rows as JSONL to a temporary file, then rename it to target; return (sha256, rows).

    Values JSON cannot hold (e.g. dates) are written as their ``str()``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    digest, row_count = hashlib.sha256(), 0
    try:
        with temporary.open("wb") as handle:
            for row in rows:
                line = (json.dumps(row, ensure_ascii=False, default=str) + "\n").encode("utf-8")
                digest.update(line)
                handle.write(line)
                row_count += 1
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return digest.hexdigest(), row_count


def count_rows(path: Path) -> int:
    """Rows in a local file: lines of a JSONL file (a last line without newline counts), rows of a Parquet file."""
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    lines, last_chunk = 0, b""
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            lines += chunk.count(b"\n")
            last_chunk = chunk
    return lines + (1 if last_chunk and not last_chunk.endswith(b"\n") else 0)
