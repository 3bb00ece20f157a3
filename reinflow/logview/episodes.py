"""Episodes of one Parquet file: the table (one summary row per episode, with its group-relative
advantage), sorting and filtering it, and one episode in full (conversation and token samples).

Pure functions over pyarrow tables and row dicts; the caller (``views``) caches what they return.
Model output stays plain text here: nothing is rendered to HTML on the server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TABLE_COLUMNS = (
    "episode_id", "task_id", "group_index", "status", "error", "num_turns", "num_tool_calls", "format_errors",
    "answered_before_tool_result", "generated_tokens", "finish_reason", "wall_seconds", "reward", "raw_reward",
    "is_success", "judge_error",
)
"""The summary columns read for the table (the judge's are absent from a rollout file, and
``answered_before_tool_result`` from files written before it existed: those read as None)."""

SORT_KEYS = frozenset(TABLE_COLUMNS) | {"advantage"}

SHOW = {
    "all": lambda row: True,
    "failed": lambda row: row["status"] != "ok" or row["is_success"] is False or row["judge_error"] is not None,
    "succeeded": lambda row: row["is_success"] is True,
    "format_errors": lambda row: (row["format_errors"] or 0) > 0,
    "tool_calls": lambda row: (row["num_tool_calls"] or 0) > 0,
    "no_tool_calls": lambda row: row["status"] == "ok" and not row["num_tool_calls"],
    "answered_before_result": lambda row: row["answered_before_tool_result"] is True,
    "judge_errors": lambda row: row["judge_error"] is not None,
    "rollout_errors": lambda row: row["status"] != "ok",
}
"""Filters of the episode table, by name."""


class BadQuery(ValueError):
    """A sort key or filter the table does not have."""


def read_summary(path: Any, normalize_std: bool) -> list[dict[str, Any]]:
    """One dict per episode (the table's columns; absent ones None), with ``advantage`` and ``row``
    (its index in the file). NaN becomes None (JSON has no NaN)."""
    names = set(pq.read_schema(path).names)
    table = pq.read_table(path, columns=[name for name in TABLE_COLUMNS if name in names])
    rows = table.to_pylist()
    for index, row in enumerate(rows):
        for name in TABLE_COLUMNS:
            row[name] = _finite(row.get(name))
        row["row"] = index
    advantages = _advantages(rows, normalize_std) if "reward" in names else [None] * len(rows)
    for row, advantage in zip(rows, advantages, strict=True):
        row["advantage"] = advantage
    return rows


def _advantages(rows: list[dict[str, Any]], normalize_std: bool) -> list[float | None]:
    """What the GRPO update gives each episode (``train_batch.episode_advantages``, i.e.
    ``grpo.group_advantages``); imported on first use: torch takes seconds to import, and a
    logview with no judged file yet should start without it."""
    from reinflow.training.train_batch import episode_advantages

    return episode_advantages(rows, normalize_std)[0]


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def select(rows: Sequence[dict[str, Any]], show: str = "all", sort: str | None = None, descending: bool = False,
           task: str = "") -> list[dict[str, Any]]:
    """The rows ``show`` keeps whose task id contains ``task``, sorted by ``sort`` (missing values
    last in either direction; ties keep file order)."""
    if show not in SHOW:
        raise BadQuery(f"unknown filter '{show}'; filters are {', '.join(SHOW)}")
    if sort is not None and sort not in SORT_KEYS:
        raise BadQuery(f"unknown sort key '{sort}'; sort by one of {', '.join(sorted(SORT_KEYS))}")
    kept = [row for row in rows if SHOW[show](row) and task in (row["task_id"] or "")]
    if sort is None:
        return kept
    present = [row for row in kept if row[sort] is not None]
    missing = [row for row in kept if row[sort] is None]
    return sorted(present, key=lambda row: row[sort], reverse=descending) + missing


def counts(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many rows each filter keeps."""
    return {name: sum(1 for row in rows if keep(row)) for name, keep in SHOW.items()}


def row_group_of(metadata: pq.FileMetaData, row: int) -> tuple[int, int]:
    """``(row group, first row of that group)`` holding file row ``row``."""
    start = 0
    for group in range(metadata.num_row_groups):
        size = metadata.row_group(group).num_rows
        if row < start + size:
            return group, start
        start += size
    raise IndexError(f"row {row} is past the end of the file ({start} rows)")


def full_row(group_table: pa.Table, offset: int) -> dict[str, Any]:
    """Every column of one episode."""
    return group_table.slice(offset, 1).to_pylist()[0]


def conversation(messages_json: str | None, turns_json: str | None) -> dict[str, Any]:
    """The conversation turn by turn: each message with its role and a ``kind`` (system, user,
    assistant, tool); the k-th assistant message carries the tool calls of the k-th LLM call when
    the counts agree. Also every LLM call's own record. Unparseable JSON is reported, not raised."""
    messages, problem = _json_list(messages_json, "messages")
    turns, turns_problem = _json_list(turns_json, "turns")
    assistants = [i for i, message in enumerate(messages) if message.get("role") == "assistant"]
    aligned = len(assistants) == len(turns)
    shown = [_message(message) for message in messages]
    if aligned:
        for index, turn in zip(assistants, turns, strict=True):
            shown[index]["tool_calls"] = [_tool_call(call) for call in turn.get("tool_calls") or []]
            shown[index]["finish_reason"] = turn.get("finish_reason")
    return {
        "messages": shown,
        "turns": [_turn(turn) for turn in turns],
        "tool_calls_inline": aligned,
        "problems": [p for p in (problem, turns_problem) if p],
    }


def _json_list(text: str | None, column: str) -> tuple[list[dict[str, Any]], str | None]:
    try:
        value = json.loads(text or "[]")
    except ValueError as error:
        return [], f"column '{column}' is not valid JSON ({error}); raw text: {text[:2000]}"
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        return [], f"column '{column}' is not a list of objects"
    return value, None


def _message(message: dict[str, Any]) -> dict[str, Any]:
    role = str(message.get("role"))
    content = message.get("content")
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    is_tool = role == "tool" or (role == "user" and text.lstrip().startswith("<tool_response>"))
    return {"role": role, "kind": "tool" if is_tool else role, "content": text}


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    arguments = call.get("arguments")
    code = arguments.get("code") if isinstance(arguments, dict) else None
    shown = code if isinstance(code, str) else json.dumps(arguments, ensure_ascii=False, indent=1)
    return {"name": call.get("name"), "id": call.get("id"), "code": shown, "is_code": isinstance(code, str)}


def _turn(turn: dict[str, Any]) -> dict[str, Any]:
    keys = ("index", "finish_reason", "prompt_tokens", "output_tokens", "format_errors", "extends_previous")
    return {key: turn.get(key) for key in keys} | {"tool_calls": [_tool_call(c) for c in turn.get("tool_calls") or []]}


def samples(row: dict[str, Any], decode: Callable[[list[int]], list[str] | None]) -> list[dict[str, Any]]:
    """Each training sample of the episode: ids, loss mask, logprobs and each token's text (None
    when the tokenizer is unavailable)."""
    shown = []
    for sample in row.get("samples") or []:
        ids = list(sample["token_ids"])
        shown.append({
            "token_ids": ids,
            "loss_mask": list(sample["loss_mask"]),
            "logprobs": [round(value, 4) for value in sample["logprobs"]],
            "texts": decode(ids),
            "trained_tokens": sum(1 for flag in sample["loss_mask"] if flag),
        })
    return shown


def last_reply(messages_json: str | None) -> str | None:
    """The text of the conversation's last assistant message."""
    messages, _ = _json_list(messages_json, "messages")
    replies = [m.get("content") for m in messages if m.get("role") == "assistant"]
    return str(replies[-1]) if replies else None
