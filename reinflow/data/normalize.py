"""Raw rows → normalised task records, or the reason a row is skipped.

A record is ``{task_id, question, reference_answer, source}``:

- ``task_id``: ``<short source name>-<split>-<row index>``, e.g. ``gsm8k-train-41``; stable across
  runs (the row index is the row's position in the split, skipped rows included) and unique.
- ``question``: the task text, stripped.
- ``reference_answer``: for GSM8K-style answers (``"...worked solution...\\n#### 1,080"``) the part
  after the last ``####`` with commas removed; otherwise the whole answer; stripped either way.
  Reasoning-gym answers are taken as they are (stripped).
- ``source``: a JSON string: the source description (type, name or file, split, ...), the row
  index and the original row (e.g. GSM8K's full worked solution).

Pure functions, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from reinflow.config import ReasoningGymSource
from reinflow.data.sources import RawRow, SkipReason, Source, describe_source, question_answer_fields, short_name

GSM8K_ANSWER_MARKER = "####"


class Record(TypedDict):
    """One task, as stored in a shard row."""

    task_id: str
    question: str
    reference_answer: str
    source: str


@dataclass(frozen=True)
class Skip:
    """A row that did not become a task, and why."""

    row_index: int
    reason: SkipReason
    detail: str


@dataclass(frozen=True)
class RowFormat:
    """How the raw rows of one split become records."""

    split: str
    task_prefix: str
    question_field: str
    answer_field: str
    max_question_chars: int
    extract_marked_answer: bool
    source_description: dict[str, Any]


def row_format(source: Source, split: str, max_question_chars: int, project_root: Path) -> RowFormat:
    """The RowFormat of one split of a source."""
    question_field, answer_field = question_answer_fields(source)
    return RowFormat(
        split=split,
        task_prefix=short_name(source),
        question_field=question_field,
        answer_field=answer_field,
        max_question_chars=max_question_chars,
        extract_marked_answer=not isinstance(source, ReasoningGymSource),
        source_description=describe_source(source, split, project_root),
    )


def extract_reference_answer(answer: str) -> str:
    """The final answer of a GSM8K-style solution: after the last `####`, commas removed, stripped.

    >>> extract_reference_answer("48/2 = <<48/2=24>>24 clips\\n#### 1,080")
    '1080'
    >>> extract_reference_answer(" 72 ")
    '72'
    """
    if GSM8K_ANSWER_MARKER in answer:
        return answer.rsplit(GSM8K_ANSWER_MARKER, 1)[1].replace(",", "").strip()
    return answer.strip()


def normalize_rows(rows: Iterable[RawRow], fmt: RowFormat) -> Iterator[Record | Skip]:
    """Normalise every raw row of a split, in order."""
    for raw in rows:
        yield normalize_row(raw, fmt)


def normalize_row(raw: RawRow, fmt: RowFormat) -> Record | Skip:
    """One raw row → a Record, or a Skip saying why not."""
    if raw.unreadable is not None:
        return Skip(raw.index, raw.unreadable, raw.detail)
    if raw.fields is None:
        raise ValueError(f"row {raw.index} has neither fields nor a reason it is unreadable")
    problem = _field_problem(raw.fields, fmt)
    if problem is not None:
        return Skip(raw.index, *problem)
    question = raw.fields[fmt.question_field].strip()
    answer = _answer_text(raw.fields[fmt.answer_field], fmt)
    if not answer:
        return Skip(raw.index, SkipReason.EMPTY_ANSWER, f"field '{fmt.answer_field}' gives an empty reference answer")
    return Record(
        task_id=f"{fmt.task_prefix}-{fmt.split}-{raw.index}",
        question=question,
        reference_answer=answer,
        source=json.dumps(
            {**fmt.source_description, "row_index": raw.index, "row": raw.fields}, ensure_ascii=False, default=str
        ),
    )


def _field_problem(fields: dict[str, Any], fmt: RowFormat) -> tuple[SkipReason, str] | None:
    """Why a parsed row's question/answer fields are unusable, or None where they are fine."""
    for name in (fmt.question_field, fmt.answer_field):
        if name not in fields or fields[name] is None:
            return SkipReason.MISSING_FIELD, f"field '{name}' is missing or null (row has {sorted(fields)})"
    question, answer = fields[fmt.question_field], fields[fmt.answer_field]
    if not isinstance(question, str):
        return SkipReason.WRONG_TYPE, f"field '{fmt.question_field}' is a {type(question).__name__}, not a string"
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        return SkipReason.WRONG_TYPE, f"field '{fmt.answer_field}' is a {type(answer).__name__}, not a string or number"
    if not question.strip():
        return SkipReason.EMPTY_QUESTION, f"field '{fmt.question_field}' is empty"
    if len(question) > fmt.max_question_chars:
        return SkipReason.QUESTION_TOO_LONG, f"{len(question)} chars > max_question_chars {fmt.max_question_chars}"
    return None


def _answer_text(answer: str | int | float, fmt: RowFormat) -> str:
    """The reference answer text of a row's answer value."""
    text = answer if isinstance(answer, str) else str(answer)
    return extract_reference_answer(text) if fmt.extract_marked_answer else text.strip()
