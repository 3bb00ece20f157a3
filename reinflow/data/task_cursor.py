"""Read the next tasks of a split from a data cursor that wraps around the split (epochs).

The cursor counts tasks handed out since the start of training: the row is ``cursor % rows`` and
the epoch ``cursor // rows``. Saving the cursor with each checkpoint means a resumed run neither
repeats nor skips a task.
"""

from __future__ import annotations

import json
from pathlib import Path

from reinflow.data.shards import load_manifest, read_shards
from reinflow.data.sources import DataSourceError
from reinflow.rollout.workflow import Task


def next_tasks(data_path: Path, split: str, cursor: int, count: int) -> tuple[list[Task], int]:
    """``count`` tasks from ``cursor`` on (wrapping at the end of the split) and the new cursor."""
    try:
        total = load_manifest(data_path, split)["rows"]
    except FileNotFoundError as missing:
        raise DataSourceError(str(missing)) from None
    if total == 0:
        raise DataSourceError(f"split '{split}' under {data_path} has no rows to train on")
    tasks: list[Task] = []
    position = cursor
    while len(tasks) < count:
        start = position % total
        take = min(count - len(tasks), total - start)
        tasks.extend(task_from_record(record) for record in read_shards(data_path, split, start, take))
        position += take
    return tasks, position


def task_from_record(record: dict) -> Task:
    """A shard record as the workflow's :class:`Task` (the source metadata becomes ``row``)."""
    return Task(
        task_id=record["task_id"],
        question=record["question"],
        reference_answer=record["reference_answer"],
        row=json.loads(record["source"]),
    )
