"""Broken datasets through the prepare-data path: a one-line error naming the file, or a counted skip.

The library chain is the one the ``prepare-data`` flow runs (rows → records or skips → shards and a
manifest → at least one task), without Prefect; the last test runs the real command once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reinflow.config import LocalSource
from reinflow.data.normalize import normalize_rows, row_format
from reinflow.data.shards import load_manifest, read_shards, require_rows, verify_shards, write_shards
from reinflow.data.sources import DataSourceError, iter_file_rows

PROMISE = "bad dataset: one-line error or counted skip, nothing written lost"
MAX_QUESTION_CHARS = 20_000
GOOD = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(3)]


def jsonl(rows: list) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def prepare(file: Path, out: Path, split: str = "train") -> dict:
    """Shard one local file the way the prepare-data flow does; return its manifest."""
    source = LocalSource(files={split: file})
    fmt = row_format(source, split, MAX_QUESTION_CHARS, file.parent)
    write_shards(normalize_rows(iter_file_rows(file), fmt), out, split, 2, fmt.source_description)
    require_rows(out, split)
    return load_manifest(out, split)


def write_parquet(path: Path, rows: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path)


# (id, file name, bytes or a writer, fragments of the one-line error)
REFUSED = [
    ("empty_file", "train.jsonl", b"", ["split 'train' of", "train.jsonl is empty"]),
    ("only_blank_lines", "train.jsonl", b"\n\n  \n", ["has no usable rows: all 3 were skipped (blank_line: 3)"]),
    ("no_question_column_jsonl", "train.jsonl", jsonl([{"prompt": "1+1", "answer": "2"}] * 3),
     ["has no usable rows: all 3 were skipped (missing_field: 3)", "field 'question' is missing"]),
    ("no_question_column_parquet", "train.parquet", [{"prompt": "1+1", "answer": "2"}] * 3,
     ["train.parquet has no usable rows", "missing_field: 3"]),
    ("whole_file_latin1", "train.jsonl", '{"question": "caf\u00e9?", "answer": "1"}\n'.encode("latin-1") * 2,
     ["has no usable rows: all 2 were skipped (invalid_utf8: 2)"]),
    ("utf16_file", "train.jsonl", jsonl(GOOD).decode().encode("utf-16"), ["has no usable rows", "invalid_"]),
    ("question_is_a_number", "train.jsonl", jsonl([{"question": 7, "answer": "7"}]),
     ["all 1 were skipped (wrong_type: 1)", "field 'question' is a int, not a string"]),
    ("garbage_parquet", "train.parquet", b"PAR1 this is not parquet", ["cannot read Parquet file", "train.parquet"]),
]


@pytest.mark.reliability(PROMISE, tried="empty file, blank lines only, no question column (JSONL/Parquet), "
                                        "Latin-1 and UTF-16 files, wrong field type, garbage Parquet")
@pytest.mark.parametrize(("name", "content", "fragments"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_unusable_dataset_is_one_line_error(tmp_path: Path, name: str, content, fragments: list[str]) -> None:
    file = tmp_path / name
    if isinstance(content, list):
        write_parquet(file, content)
    else:
        file.write_bytes(content)
    with pytest.raises(DataSourceError) as raised:
        prepare(file, tmp_path / "shards")
    message = str(raised.value)
    assert "\n" not in message and len(message) < 600, message
    for fragment in fragments:
        assert fragment in message, message


HUGE_QUESTION = "9" * (50 * 1024 * 1024)  # a 50 MB row

# (id, file bytes, expected skipped-by-reason)
SKIPPED = [
    ("broken_json_lines", jsonl(GOOD[:1]) + b'{"question": "2+2?", "answ\n' + b"[1, 2]\n42\n\n" + jsonl(GOOD[1:]),
     {"invalid_json": 1, "not_an_object": 2, "blank_line": 1}),
    ("invalid_utf8_line", jsonl(GOOD[:2]) + b'{"question": "\xff\xfe?", "answer": "1"}\n' + jsonl(GOOD[2:]),
     {"invalid_utf8": 1}),
    ("huge_row_50mb", jsonl(GOOD[:1]) + json.dumps({"question": HUGE_QUESTION, "answer": "1"}).encode() + b"\n"
     + jsonl(GOOD[1:]), {"question_too_long": 1}),
    ("null_and_empty_fields", jsonl([*GOOD, {"question": None, "answer": "1"}, {"question": " ", "answer": "1"},
                                     {"question": "q?", "answer": ""}]),
     {"missing_field": 1, "empty_question": 1, "empty_answer": 1}),
    ("no_newline_at_end", jsonl(GOOD)[:-1], {}),
]


@pytest.mark.reliability(PROMISE, tried="broken JSON lines, an invalid UTF-8 line, a 50 MB row, null/empty "
                                        "fields, no final newline")
@pytest.mark.parametrize(("content", "skipped"), [r[1:] for r in SKIPPED], ids=[r[0] for r in SKIPPED])
def test_broken_rows_are_counted_and_good_rows_kept(tmp_path: Path, content: bytes, skipped: dict) -> None:
    file = tmp_path / "train.jsonl"
    file.write_bytes(content)
    manifest = prepare(file, tmp_path / "shards")
    assert manifest["skipped"] == skipped and manifest["skipped_total"] == sum(skipped.values())
    assert manifest["rows"] == len(GOOD) and manifest["rows_read"] == len(GOOD) + sum(skipped.values())
    kept = read_shards(tmp_path / "shards", "train")
    assert [(r["question"], r["reference_answer"]) for r in kept] == [(g["question"], g["answer"]) for g in GOOD]
    assert all(len(example["detail"]) < 1000 for example in manifest["skipped_examples"])


@pytest.mark.reliability(PROMISE, tried="a broken split after a good one in the same folder")
def test_a_broken_split_leaves_the_prepared_one_intact(tmp_path: Path) -> None:
    good, empty, out = tmp_path / "good.jsonl", tmp_path / "empty.jsonl", tmp_path / "shards"
    good.write_bytes(jsonl(GOOD))
    empty.write_bytes(b"")
    prepare(good, out, "train")
    with pytest.raises(DataSourceError, match="is empty"):
        prepare(empty, out, "test")
    assert verify_shards(out, "train") == []
    assert len(read_shards(out, "train")) == len(GOOD)


@pytest.mark.slow
@pytest.mark.reliability(PROMISE, tried="`reinflow prepare-data` on an empty file (real command, Prefect running)")
def test_prepare_data_command_on_an_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "train.jsonl"
    empty.write_bytes(b"")
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    command = [sys.executable, "-c", "from cli.app import main; main()", "prepare-data",
               "--target", str(empty), "--path", str(tmp_path / "shards")]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "200",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "900"}  # a fresh database migrates first
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            code = process.wait(timeout=300)
        finally:
            with pytest.raises(ProcessLookupError):  # nothing of the group may outlive the command
                os.killpg(process.pid, signal.SIGKILL)
    text = stderr.read_text()
    assert code == 2, text
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: split 'train' of {empty} is empty: no rows to make tasks of"], text
