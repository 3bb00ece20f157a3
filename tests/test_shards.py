"""Writing records as Parquet shards + a manifest, verifying them, and reading them back from a cursor."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from reinflow.data.normalize import Record, Skip
from reinflow.data.shards import (
    SCHEMA,
    SKIPPED_EXAMPLES_KEPT,
    ShardSet,
    iter_records,
    load_manifest,
    read_shards,
    shards_intact,
    summarize,
    verify_shards,
    write_shards,
)
from reinflow.data.sources import SkipReason

DESCRIPTION = {"type": "local", "file": "/x/train.jsonl", "split": "train"}


def records(count: int, start: int = 0) -> list[Record]:
    """Distinct synthetic records."""
    return [
        Record(task_id=f"t-train-{i}", question=f"What is {i} + 1?", reference_answer=str(i + 1), source="{}")
        for i in range(start, start + count)
    ]


def write(tmp_path: Path, outcomes, shard_size: int = 10, **kwargs) -> ShardSet:
    """write_shards into tmp_path/out, split train."""
    return write_shards(outcomes, tmp_path / "out", "train", shard_size, DESCRIPTION, **kwargs)


def test_every_shard_holds_shard_size_rows_except_the_last(tmp_path):
    shard_set = write(tmp_path, records(25))
    manifest_file = tmp_path / "out" / "train" / "manifest.json"
    assert shard_set == ShardSet(str(manifest_file), hashlib.sha256(manifest_file.read_bytes()).hexdigest())
    files = sorted((tmp_path / "out" / "train").glob("part-*.parquet"))
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [10, 10, 5]
    assert all(pq.read_schema(f).remove_metadata().equals(SCHEMA) for f in files)
    manifest = json.loads(manifest_file.read_text())
    assert manifest["rows"] == 25 and manifest["rows_read"] == 25 and manifest["skipped_total"] == 0
    assert [(s["file"], s["rows"], s["first_row"]) for s in manifest["shards"]] == [
        ("part-00000.parquet", 10, 0), ("part-00001.parquet", 10, 10), ("part-00002.parquet", 5, 20),
    ]
    for shard, file in zip(manifest["shards"], files):
        assert shard["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert manifest["source"] == DESCRIPTION
    assert manifest["schema"] == {"task_id": "string", "question": "string", "reference_answer": "string",
                                  "source": "string"}
    assert not list((tmp_path / "out" / "train").glob(".*"))  # no temporary files left


def test_an_exact_multiple_of_shard_size_has_no_short_shard(tmp_path):
    write(tmp_path, records(20))
    assert [s["rows"] for s in load_manifest(tmp_path / "out", "train")["shards"]] == [10, 10]


def test_skipped_rows_are_counted_by_reason_with_the_first_examples(tmp_path):
    skips = [Skip(i, SkipReason.MISSING_FIELD, f"no field 'answer' at {i}") for i in range(7)]
    skips += [Skip(100, SkipReason.INVALID_JSON, "Expecting value")]
    write(tmp_path, [*records(3), *skips])
    manifest = load_manifest(tmp_path / "out", "train")
    assert manifest["rows"] == 3 and manifest["rows_read"] == 11 and manifest["skipped_total"] == 8
    assert manifest["skipped"] == {"invalid_json": 1, "missing_field": 7}
    assert len(manifest["skipped_examples"]) == SKIPPED_EXAMPLES_KEPT
    assert manifest["skipped_examples"][0] == {"row_index": 0, "reason": "missing_field",
                                               "detail": "no field 'answer' at 0"}
    assert summarize(tmp_path / "out", "train") == {
        "rows": 3, "skipped": 8, "skipped_by_reason": {"invalid_json": 1, "missing_field": 7}, "shards": 1,
        "manifest": str(tmp_path / "out" / "train" / "manifest.json"),
    }


def test_a_split_with_only_skipped_rows_has_a_manifest_and_no_shards(tmp_path):
    write(tmp_path, [Skip(0, SkipReason.BLANK_LINE, "blank line")])
    manifest = load_manifest(tmp_path / "out", "train")
    assert manifest["rows"] == 0 and manifest["shards"] == [] and manifest["skipped"] == {"blank_line": 1}
    assert read_shards(tmp_path / "out", "train") == []


def test_read_back_in_order_from_a_row_cursor(tmp_path):
    written = records(25)
    write(tmp_path, written, shard_size=10)
    out = tmp_path / "out"
    assert read_shards(out, "train") == written
    assert read_shards(out, "train", start_row=12) == written[12:]
    assert read_shards(out, "train", start_row=10, max_rows=3) == written[10:13]
    assert read_shards(out, "train", start_row=25) == []
    assert next(iter_records(out, "train", start_row=19))["task_id"] == "t-train-19"
    with pytest.raises(ValueError, match="start_row 26 is outside split 'train'"):
        iter_records(out, "train", start_row=26)


def test_a_shorter_rewrite_removes_stale_shards(tmp_path):
    write(tmp_path, records(25))
    write(tmp_path, records(5, start=100))
    files = sorted(p.name for p in (tmp_path / "out" / "train").glob("part-*.parquet"))
    assert files == ["part-00000.parquet"]
    assert [r["task_id"] for r in read_shards(tmp_path / "out", "train")] == [f"t-train-{i}" for i in range(100, 105)]
    assert verify_shards(tmp_path / "out", "train") == []


def test_same_records_give_byte_identical_shards(tmp_path):
    assert write(tmp_path, records(12)) == write(tmp_path, records(12))


def test_verify_shards_reports_a_missing_or_changed_shard_or_manifest(tmp_path):
    out = tmp_path / "out"
    write(tmp_path, records(25))
    assert verify_shards(out, "train") == []
    (out / "train" / "part-00001.parquet").unlink()
    assert verify_shards(out, "train") == [f"{out / 'train' / 'part-00001.parquet'} is missing"]
    write(tmp_path, records(25))
    (out / "train" / "part-00002.parquet").write_bytes(b"not parquet")
    assert "does not match its sha256" in verify_shards(out, "train")[0]
    (out / "train" / "manifest.json").unlink()
    assert verify_shards(out, "train") == [f"{out / 'train' / 'manifest.json'} is missing"]
    with pytest.raises(FileNotFoundError, match="no shard manifest at .*manifest.json"):
        read_shards(out, "train")


def test_progress_callback_reaches_every_row_read(tmp_path):
    seen: list[int] = []
    outcomes = [*records(1200), Skip(1200, SkipReason.BLANK_LINE, "blank line")]
    write(tmp_path, outcomes, shard_size=500, on_progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1201 and len(seen) >= 3


def test_a_shard_set_is_intact_only_while_the_disk_holds_what_it_describes(tmp_path):
    first = write(tmp_path, records(25))
    assert shards_intact(first)
    second = write(tmp_path, records(25, start=1))  # the same files, other content
    assert shards_intact(second) and not shards_intact(first)
    (tmp_path / "out" / "train" / "part-00002.parquet").unlink()
    assert not shards_intact(second)
