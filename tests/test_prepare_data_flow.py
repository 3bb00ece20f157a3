"""The prepare_data flow end to end: shards and summaries, cache reuse, recomputation when outputs
are deleted or inputs change, and the hub path on a local dataset folder."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tasks.download
import tasks.shard
from flows.prepare_data import prepare_data
from reinflow.data.shards import read_shards
from reinflow.data.sources import DataSourceError

pytestmark = pytest.mark.usefixtures("prefect_harness")

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "broken_tasks.jsonl"
FIXTURE_SKIPPED = {
    "blank_line": 1, "empty_answer": 1, "empty_question": 1, "invalid_json": 1, "invalid_utf8": 1,
    "missing_field": 1, "not_an_object": 1, "question_too_long": 1, "wrong_type": 2,
}


@pytest.fixture
def calls(monkeypatch) -> Counter:
    """Counts the real work each task does (downloads and shard writes), by split."""
    counter: Counter = Counter()
    real_download, real_write = tasks.download.download_raw, tasks.shard.write_shards

    def counting_download(source, split, *args):
        counter[f"download-{split}"] += 1
        return real_download(source, split, *args)

    def counting_write(outcomes, path, split, *args):
        counter[f"shard-{split}"] += 1
        return real_write(outcomes, path, split, *args)

    monkeypatch.setattr(tasks.download, "download_raw", counting_download)
    monkeypatch.setattr(tasks.shard, "write_shards", counting_write)
    return counter


@pytest.fixture
def project(tmp_path) -> Path:
    """A project folder holding a copy of the broken-rows fixture (train) and three good rows (test)."""
    (tmp_path / "inputs").mkdir()
    shutil.copy(FIXTURE, tmp_path / "inputs" / "train.jsonl")
    (tmp_path / "inputs" / "test.jsonl").write_text(
        "".join(json.dumps({"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"}) + "\n" for i in range(3))
    )
    return tmp_path


def local_config(shard_size: int = 2) -> dict:
    """A data config over the project's local JSONL files (relative paths)."""
    return {
        "source": {"type": "local", "files": {"train": "inputs/train.jsonl", "test": "inputs/test.jsonl"}},
        "path": "data/tasks",
        "shard_size": shard_size,
        "max_question_chars": 200,
    }


def file_stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime in ns) of every file in a folder."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_local_files_become_shards_with_skips_counted_and_a_rerun_is_cached(project, calls):
    summary = prepare_data(local_config(), project_root=str(project))
    out = project / "data" / "tasks"
    assert summary == {
        "train": {"rows": 3, "skipped": 10, "skipped_by_reason": FIXTURE_SKIPPED, "shards": 2,
                  "manifest": str(out / "train" / "manifest.json")},
        "test": {"rows": 3, "skipped": 0, "skipped_by_reason": {}, "shards": 2,
                 "manifest": str(out / "test" / "manifest.json")},
    }
    assert [pq.ParquetFile(p).metadata.num_rows for p in sorted((out / "train").glob("part-*"))] == [2, 1]
    assert [r["reference_answer"] for r in read_shards(out, "train")] == ["1080", "4", "9"]
    assert [r["task_id"] for r in read_shards(out, "test")] == ["inputs-test-0", "inputs-test-1", "inputs-test-2"]
    assert calls == Counter({"download-train": 1, "download-test": 1, "shard-train": 1, "shard-test": 1})
    manifest = json.loads((out / "train" / "manifest.json").read_text())
    assert manifest["source"] == {"type": "local", "file": str(project / "inputs" / "train.jsonl"), "split": "train"}
    assert sum(manifest["skipped"].values()) == manifest["skipped_total"] == 10
    stamps = {split: file_stamps(out / split) for split in ("train", "test")}
    calls.clear()
    assert prepare_data(local_config(), project_root=str(project)) == summary
    assert calls == Counter()  # both tasks of both splits came from the cache
    assert {split: file_stamps(out / split) for split in ("train", "test")} == stamps  # nothing rewritten
    assert (project / ".prefect-results").is_dir()


def test_deleted_shard_or_manifest_is_recomputed(project, calls):
    prepare_data(local_config(), project_root=str(project))
    train = project / "data" / "tasks" / "train"
    shard_bytes = (train / "part-00001.parquet").read_bytes()
    (train / "part-00001.parquet").unlink()
    (project / "data" / "tasks" / "test" / "manifest.json").unlink()
    calls.clear()
    summary = prepare_data(local_config(), project_root=str(project))
    assert calls == Counter({"shard-train": 1, "shard-test": 1})  # the raw files are intact: no download
    assert (train / "part-00001.parquet").read_bytes() == shard_bytes
    assert summary["test"]["rows"] == 3 and (project / "data" / "tasks" / "test" / "manifest.json").is_file()
    calls.clear()
    prepare_data(local_config(), project_root=str(project))  # and the refreshed results are cached again
    assert calls == Counter()


def test_changed_input_file_or_config_gives_new_shards(project, calls):
    prepare_data(local_config(), project_root=str(project))
    with (project / "inputs" / "test.jsonl").open("a") as handle:
        handle.write(json.dumps({"question": "What is 10 + 10?", "answer": "#### 20"}) + "\n")
    calls.clear()
    summary = prepare_data(local_config(), project_root=str(project))
    assert calls == Counter({"download-test": 1, "shard-test": 1})
    assert summary["test"]["rows"] == 4
    assert read_shards(project / "data" / "tasks", "test")[-1]["reference_answer"] == "20"
    calls.clear()
    summary = prepare_data(local_config(shard_size=10), project_root=str(project))
    assert calls == Counter({"shard-train": 1, "shard-test": 1})
    assert summary["train"]["shards"] == summary["test"]["shards"] == 1
    assert [p.name for p in (project / "data" / "tasks" / "train").glob("part-*")] == ["part-00000.parquet"]
    calls.clear()  # back to shard_size 2: its cache entry for train names shards that were overwritten since
    summary = prepare_data(local_config(shard_size=2), project_root=str(project))
    assert calls == Counter({"shard-train": 1, "shard-test": 1})
    assert summary["train"]["shards"] == 2 and len(list((project / "data" / "tasks" / "train").glob("part-*"))) == 2


def test_reasoning_gym_splits_deleted_raw_file_and_another_seed(tmp_path, calls):
    def config(seed: int) -> dict:
        source = {"type": "reasoning_gym", "name": "basic_arithmetic", "sizes": {"train": 30, "test": 10},
                  "seed": seed, "options": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}}
        return {"source": source, "path": "data/rg", "shard_size": 8}

    summary = prepare_data(config(3), project_root=str(tmp_path))
    assert {split: (s["rows"], s["shards"]) for split, s in summary.items()} == {"train": (30, 4), "test": (10, 2)}
    out = tmp_path / "data" / "rg"
    train, test = read_shards(out, "train"), read_shards(out, "test")
    assert [r["task_id"] for r in train] == [f"basic_arithmetic-train-{i}" for i in range(30)]
    assert [r["question"] for r in train[:10]] != [r["question"] for r in test]  # a split's own seed
    (out / "train" / "raw.jsonl").unlink()
    calls.clear()
    prepare_data(config(3), project_root=str(tmp_path))
    assert calls == Counter({"download-train": 1})  # same raw rows again, so the shards stay cached
    assert read_shards(out, "train") == train
    prepare_data(config(4), project_root=str(tmp_path))
    assert read_shards(out, "train") != train
    calls.clear()  # seed 3's cache entries name raw files and shards that seed 4 overwrote
    prepare_data(config(3), project_root=str(tmp_path))
    assert calls == Counter({"download-train": 1, "download-test": 1, "shard-train": 1, "shard-test": 1})
    assert read_shards(out, "train") == train and read_shards(out, "test") == test


def test_missing_local_file_fails_with_a_clear_error(tmp_path):
    config = {"source": {"type": "local", "files": {"train": "nope.jsonl", "test": "nope2.jsonl"}}, "path": "d"}
    with pytest.raises(DataSourceError, match=r"local data file for split 'train' not found: .*nope\.jsonl"):
        prepare_data.fn(config, project_root=str(tmp_path))  # the flow body fails before any task runs


@pytest.mark.gsm8k
def test_real_gsm8k_through_the_hub_path(tmp_path, gsm8k_dir, monkeypatch, calls):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    (tmp_path / "gsm8k" / "data").mkdir(parents=True)
    for split in ("train", "test"):
        rows = [json.loads(line) for line in (gsm8k_dir / f"{split}.jsonl").read_text().splitlines()]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "gsm8k" / "data" / f"{split}-00000-of-00001.parquet")
    config = {"source": {"type": "hub", "name": str(tmp_path / "gsm8k")}, "path": "data/gsm8k", "shard_size": 1000}
    summary = prepare_data(config, project_root=str(tmp_path))
    assert {split: (s["rows"], s["skipped"], s["shards"]) for split, s in summary.items()} == {
        "train": (7473, 0, 8), "test": (1319, 0, 2),
    }
    out = tmp_path / "data" / "gsm8k"
    assert pq.ParquetFile(out / "train" / "part-00007.parquet").metadata.num_rows == 473
    first = read_shards(out, "train", max_rows=1)[0]
    assert (first["task_id"], first["reference_answer"]) == ("gsm8k-train-0", "72")
    assert json.loads(first["source"])["type"] == "hub"
    last_test = read_shards(out, "test", start_row=1318)
    assert len(last_test) == 1 and last_test[0]["task_id"] == "gsm8k-test-1318"
    assert calls == Counter({"download-train": 1, "download-test": 1, "shard-train": 1, "shard-test": 1})


def test_module_source_keys_follow_the_library_code():
    from tasks import ModuleSource

    shards_key = ModuleSource(modules=("reinflow.data.shards",)).compute_key(None, {}, {})
    assert shards_key == ModuleSource(modules=("reinflow.data.shards",)).compute_key(None, {}, {})
    assert shards_key != ModuleSource(modules=("reinflow.data.normalize",)).compute_key(None, {}, {})
