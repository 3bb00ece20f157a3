"""Reading raw rows from every kind of source, and normalising them into task records."""

from __future__ import annotations

import doctest
import json
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reinflow.config import DataConfig, HubSource, LocalSource, ReasoningGymSource
from reinflow.data import normalize, sources
from reinflow.errors import ReinflowError
from reinflow.data.normalize import Record, Skip, extract_reference_answer, normalize_rows, row_format
from reinflow.data.sources import (
    DataSourceError,
    SkipReason,
    download_raw,
    iter_file_rows,
    iter_source_rows,
    raw_file_intact,
    source_fingerprint,
    split_seed,
    splits_to_prepare,
)

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "broken_tasks.jsonl"
# data/fixtures/broken_tasks.jsonl, line by line (max_question_chars=200 makes line 10 too long):
FIXTURE_SKIPS = {
    1: SkipReason.MISSING_FIELD,
    2: SkipReason.WRONG_TYPE,
    3: SkipReason.EMPTY_QUESTION,
    4: SkipReason.INVALID_JSON,
    5: SkipReason.INVALID_UTF8,
    7: SkipReason.BLANK_LINE,
    8: SkipReason.NOT_AN_OBJECT,
    9: SkipReason.WRONG_TYPE,
    10: SkipReason.QUESTION_TOO_LONG,
    12: SkipReason.EMPTY_ANSWER,
}


def normalized(source, split: str, root: Path, max_question_chars: int = 200) -> list[Record | Skip]:
    """Every normalised row of one split of a source."""
    fmt = row_format(source, split, max_question_chars, root)
    return list(normalize_rows(iter_source_rows(source, split, root), fmt))


def write_hub_folder(folder: Path, splits: dict[str, dict[str, list]]) -> Path:
    """A local dataset folder `datasets.load_dataset` reads like a hub dataset: data/<split>-00000-of-00001.parquet."""
    (folder / "data").mkdir(parents=True)
    for split, columns in splits.items():
        pq.write_table(pa.table(columns), folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


@pytest.fixture
def offline_datasets(tmp_path, monkeypatch):
    """`datasets` offline, with its cache in a temporary folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


# ----------------------------------------------------------------------------- local JSONL / Parquet


def test_jsonl_lines_that_cannot_be_read_are_rows_with_a_reason():
    rows = list(iter_file_rows(FIXTURE))
    assert [row.index for row in rows] == list(range(13))
    unreadable = {row.index: row.unreadable for row in rows if row.unreadable is not None}
    assert unreadable == {
        4: SkipReason.INVALID_JSON,
        5: SkipReason.INVALID_UTF8,
        7: SkipReason.BLANK_LINE,
        8: SkipReason.NOT_AN_OBJECT,
    }
    assert all(row.fields is None for row in rows if row.unreadable is not None)


def test_broken_rows_are_skipped_with_their_reason_and_good_rows_kept():
    source = LocalSource(files={"train": FIXTURE})
    outcomes = normalized(source, "train", FIXTURE.parent)
    assert len(outcomes) == 13
    skips = {o.row_index: o.reason for o in outcomes if isinstance(o, Skip)}
    assert skips == FIXTURE_SKIPS
    records = [o for o in outcomes if not isinstance(o, Skip)]
    assert [r["task_id"] for r in records] == ["fixtures-train-0", "fixtures-train-6", "fixtures-train-11"]
    assert [r["reference_answer"] for r in records] == ["1080", "4", "9"]
    assert records[0]["question"] == "What is 1,000 + 80?"
    meta = json.loads(records[0]["source"])
    assert meta["type"] == "local" and meta["split"] == "train" and meta["row_index"] == 0
    assert meta["file"] == str(FIXTURE)
    assert meta["row"]["answer"].endswith("#### 1,080")  # the full worked solution is kept


def test_max_question_chars_decides_what_is_too_long():
    source = LocalSource(files={"train": FIXTURE})
    outcomes = normalized(source, "train", FIXTURE.parent, max_question_chars=300)
    reasons = Counter(o.reason for o in outcomes if isinstance(o, Skip))
    assert SkipReason.QUESTION_TOO_LONG not in reasons
    assert sum(not isinstance(o, Skip) for o in outcomes) == 4


def test_local_parquet_rows(tmp_path):
    file = tmp_path / "tasks.parquet"
    pq.write_table(pa.table({"q": ["1+1?", "2+2?", "3+3?"], "a": ["2", None, "6"]}), file)
    source = LocalSource(files={"test": Path("tasks.parquet")}, question_field="q", answer_field="a")
    outcomes = normalized(source, "test", tmp_path)
    assert [o["task_id"] for o in outcomes if not isinstance(o, Skip)] == ["tasks-test-0", "tasks-test-2"]
    assert [(o.row_index, o.reason) for o in outcomes if isinstance(o, Skip)] == [(1, SkipReason.MISSING_FIELD)]


def test_missing_local_file_is_a_one_line_error_naming_it(tmp_path):
    assert issubclass(DataSourceError, ReinflowError) and issubclass(DataSourceError, ValueError)  # the CLI prints it
    source = LocalSource(files={"train": Path("nowhere/train.jsonl")})
    with pytest.raises(DataSourceError, match=r"split 'train' not found: .*nowhere/train\.jsonl$"):
        list(iter_source_rows(source, "train", tmp_path))
    with pytest.raises(DataSourceError, match="nowhere/train.jsonl"):
        source_fingerprint(source, "train", tmp_path)


def test_fingerprint_follows_local_content(tmp_path):
    file = tmp_path / "train.jsonl"
    file.write_text('{"question": "1+1?", "answer": "2"}\n')
    source = LocalSource(files={"train": file})
    before = source_fingerprint(source, "train", tmp_path)
    assert before == source_fingerprint(source, "train", tmp_path)
    file.write_text('{"question": "1+1?", "answer": "3"}\n')
    assert source_fingerprint(source, "train", tmp_path) != before


def test_download_of_a_local_source_points_at_the_file_itself(tmp_path):
    raw = download_raw(LocalSource(files={"train": FIXTURE}), "train", tmp_path / "out", tmp_path)
    assert raw.path == str(FIXTURE) and raw.rows == 13
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- reference answers


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72"),
        ("so it costs 1,080 dollars\n#### 1,080", "1080"),
        ("#### -3.5 ", "-3.5"),
        ("a #### b\n#### 12", "12"),  # the last marker wins
        ("  42\n", "42"),  # no marker: the whole answer
    ],
)
def test_extract_reference_answer(answer, expected):
    assert extract_reference_answer(answer) == expected


@pytest.mark.gsm8k
def test_real_gsm8k_rows_all_normalise_to_numeric_answers(gsm8k_dir):
    for split, expected_rows in (("train", 7473), ("test", 1319)):
        source = LocalSource(files={split: gsm8k_dir / f"{split}.jsonl"})
        outcomes = normalized(source, split, gsm8k_dir, max_question_chars=20_000)
        assert len(outcomes) == expected_rows
        assert not [o for o in outcomes if isinstance(o, Skip)]
        assert all(re.fullmatch(r"-?\d+(\.\d+)?", o["reference_answer"]) for o in outcomes)
        assert len({o["task_id"] for o in outcomes}) == expected_rows
    first = normalized(LocalSource(files={"train": gsm8k_dir / "train.jsonl"}), "train", gsm8k_dir)[0]
    assert first["task_id"] == "gsm8k-train-0"
    assert first["question"].startswith("Natalia sold clips to 48 of her friends")
    assert first["reference_answer"] == "72"
    assert "<<48/2=24>>" in json.loads(first["source"])["row"]["answer"]


@pytest.mark.gsm8k
def test_real_gsm8k_answers_with_thousands_separators(gsm8k_dir):
    source = LocalSource(files={"train": gsm8k_dir / "train.jsonl"})
    outcomes = normalized(source, "train", gsm8k_dir, max_question_chars=20_000)
    with_commas = [o for o in outcomes if "," in json.loads(o["source"])["row"]["answer"].rsplit("####", 1)[1]]
    assert len(with_commas) == 79
    for record in with_commas:
        raw_final = json.loads(record["source"])["row"]["answer"].rsplit("####", 1)[1]
        assert record["reference_answer"] == raw_final.replace(",", "").strip()
        assert "," not in record["reference_answer"]


# ----------------------------------------------------------------------------- reasoning-gym


def arithmetic(sizes: dict[str, int], seed: int = 7) -> ReasoningGymSource:
    """A small basic_arithmetic source."""
    return ReasoningGymSource(
        name="basic_arithmetic", sizes=sizes, seed=seed,
        options={"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2},
    )


def test_reasoning_gym_is_deterministic_per_seed_and_split(tmp_path):
    source = arithmetic({"train": 12, "test": 12})
    train = normalized(source, "train", tmp_path)
    again = normalized(arithmetic({"train": 12, "test": 12}), "train", tmp_path)
    test = normalized(source, "test", tmp_path)
    other_seed = normalized(arithmetic({"train": 12, "test": 12}, seed=8), "train", tmp_path)
    assert all(isinstance(o, dict) for o in train + test)
    assert [o["task_id"] for o in train] == [f"basic_arithmetic-train-{i}" for i in range(12)]
    assert [(o["task_id"], o["question"], o["reference_answer"]) for o in train] == [
        (o["task_id"], o["question"], o["reference_answer"]) for o in again
    ]
    assert [o["question"] for o in train] != [o["question"] for o in test]
    assert [o["question"] for o in train] != [o["question"] for o in other_seed]
    assert all(o["question"].startswith("Calculate ") for o in train)
    meta = json.loads(train[0]["source"])
    assert meta["seed"] == split_seed(7, "train") and meta["row"]["metadata"]["source_dataset"] == "basic_arithmetic"


def test_reasoning_gym_answers_are_correct_arithmetic(tmp_path):
    for record in normalized(arithmetic({"train": 20}), "train", tmp_path):
        expression = json.loads(record["source"])["row"]["metadata"]["expression"]
        assert float(record["reference_answer"]) == pytest.approx(eval(expression))  # noqa: S307 (generated arithmetic)


def test_unknown_reasoning_gym_dataset_or_option_is_a_clear_error(tmp_path):
    with pytest.raises(DataSourceError, match="unknown reasoning-gym dataset 'no_such_gym'"):
        list(iter_source_rows(ReasoningGymSource(name="no_such_gym", sizes={"train": 1}), "train", tmp_path))
    bad_option = ReasoningGymSource(name="basic_arithmetic", sizes={"train": 1}, options={"max_termz": 2})
    with pytest.raises(DataSourceError, match=r"no option\(s\) \['max_termz'\]"):
        list(iter_source_rows(bad_option, "train", tmp_path))


def test_reasoning_gym_download_writes_raw_jsonl(tmp_path):
    raw = download_raw(arithmetic({"train": 5}), "train", tmp_path / "out", tmp_path)
    assert raw.path == str(tmp_path / "out" / "train" / "raw.jsonl") and raw.rows == 5
    lines = Path(raw.path).read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[0])["question"].startswith("Calculate ")
    assert not list((tmp_path / "out" / "train").glob(".*tmp*"))
    assert raw_file_intact(raw)
    Path(raw.path).write_text(Path(raw.path).read_text().replace("Calculate", "Compute"))
    assert not raw_file_intact(raw)
    Path(raw.path).unlink()
    assert not raw_file_intact(raw)


# ----------------------------------------------------------------------------- hub (a local dataset folder)


def test_hub_source_reads_a_local_dataset_folder(tmp_path, offline_datasets):
    folder = write_hub_folder(tmp_path / "ds", {
        "train": {"question": ["1+1?", "", "3+3?"], "answer": ["#### 2", "#### 4", "#### 6"]},
        "test": {"question": ["5+5?"], "answer": ["#### 10"]},
    })
    source = HubSource(name=str(folder))
    outcomes = normalized(source, "train", tmp_path)
    assert [o["task_id"] for o in outcomes if not isinstance(o, Skip)] == ["ds-train-0", "ds-train-2"]
    assert [o["reference_answer"] for o in outcomes if not isinstance(o, Skip)] == ["2", "6"]
    assert [(o.row_index, o.reason) for o in outcomes if isinstance(o, Skip)] == [(1, SkipReason.EMPTY_QUESTION)]
    raw = download_raw(source, "test", tmp_path / "out", tmp_path)
    assert raw.rows == 1 and json.loads(Path(raw.path).read_text()) == {"question": "5+5?", "answer": "#### 10"}


def test_hub_source_errors_name_the_dataset(tmp_path, offline_datasets):
    with pytest.raises(DataSourceError, match=r"hub dataset 'reinflow-tests/no-such-dataset' .*cannot be loaded"):
        list(iter_source_rows(HubSource(name="reinflow-tests/no-such-dataset"), "train", tmp_path))
    folder = write_hub_folder(tmp_path / "ds", {"train": {"question": ["1+1?"], "answer": ["2"]}})
    with pytest.raises(DataSourceError, match=r"split 'validation'.*Unknown split"):
        list(iter_source_rows(HubSource(name=str(folder)), "validation", tmp_path))


def test_hub_splits_are_the_configs_train_and_eval_splits():
    data = DataConfig(source=HubSource(name="openai/gsm8k", subset="main"), path=Path("d"), eval_split="test")
    assert splits_to_prepare(data) == ["train", "test"]
    local = DataConfig(source=LocalSource(files={"a": Path("a.jsonl"), "b": Path("b.jsonl")}), path=Path("d"),
                       train_split="a", eval_split="b")
    assert splits_to_prepare(local) == ["a", "b"]


@pytest.mark.parametrize("module", [normalize, sources])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
