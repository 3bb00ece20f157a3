"""Judge a rollout file: ``rollouts/iter_N.parquet`` → ``judged/iter_N.parquet`` + metrics.

Episodes that failed during rollout are not judged. An episode whose workflow returned its own
reward is not judged either. A judge error excludes only that episode (its ``reward`` is NaN).
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from reinflow.config import JudgeConfig
from reinflow.rollout.episode_schema import JUDGED_SCHEMA
from reinflow.judging.judge import Verdict, judge_all
from reinflow.judging.reward_shaping import is_degenerate, shape_reward
from reinflow.rollout.workflow import Task


def judge_input_for(row: dict[str, Any]) -> dict[str, Any]:
    """The ``judge_input_dictionary`` of one rollout row."""
    extra = json.loads(row["judge_input"] or "{}")
    metadata = json.loads(row["metadata"] or "{}")
    task = Task(
        task_id=row["task_id"],
        question=row["question"],
        reference_answer=row["reference_answer"],
        row=json.loads(row["task_row"] or "{}"),
    )
    return {
        "env": metadata.get("env"),
        "workflow_task": task,
        "grouped_steps": json.loads(row["turns"] or "[]"),
        "final_answer": row["final_answer"],
        **extra,
    }


def judge_rollout_file(
    rollout_path: Path,
    judged_path: Path,
    judge: Any,
    config: JudgeConfig,
    on_done: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Judge every episode of ``rollout_path``, write ``judged_path`` atomically, return metrics."""
    rows = pq.read_table(rollout_path).to_pylist()
    to_judge = [i for i, row in enumerate(rows) if row["status"] == "ok" and row["workflow_reward"] is None]
    verdicts = asyncio.run(
        judge_all(judge, [judge_input_for(rows[i]) for i in to_judge], config.concurrency, config.timeout_seconds, on_done)
    )
    by_row = dict(zip(to_judge, verdicts, strict=True))
    judged = [row | _judge_columns(row, by_row.get(i), config) for i, row in enumerate(rows)]
    judged_path.parent.mkdir(parents=True, exist_ok=True)
    partial = judged_path.with_suffix(".parquet.partial")
    pq.write_table(pa.Table.from_pylist(judged, schema=JUDGED_SCHEMA), partial)
    partial.replace(judged_path)
    return judge_metrics(judged)


def _judge_columns(row: dict[str, Any], verdict: Verdict | None, config: JudgeConfig) -> dict[str, Any]:
    if row["status"] != "ok":
        return _excluded(judge_error=None, seconds=0.0)
    if verdict is None:  # the workflow returned its own reward
        verdict = Verdict(row["workflow_reward"], row["workflow_reward"] > 0, None, 0.0)
    if verdict.judge_error is not None:
        return _excluded(judge_error=verdict.judge_error, seconds=verdict.judge_seconds)
    text, ids = _generated(row)
    degenerate = is_degenerate(text, ids, ngram=config.degenerate_ngram, min_tokens=config.degenerate_min_tokens,
                               max_repeated_share=config.degenerate_repeated_share,
                               max_garbage_share=config.degenerate_garbage_share)
    shaped = shape_reward(
        verdict.raw_reward,
        format_errors=row["format_errors"],
        degenerate=degenerate,
        generated_tokens=row["generated_tokens"],
        format_penalty=config.format_penalty,
        degenerate_penalty=config.degenerate_penalty,
        max_response_tokens=config.max_response_tokens,
    )
    return {
        "raw_reward": verdict.raw_reward,
        "is_success": verdict.is_success and not shaped.length_capped,
        "judge_error": None,
        "judge_seconds": verdict.judge_seconds,
        "length_capped": shaped.length_capped,
        "degenerate": degenerate,
        "format_penalty": shaped.format_penalty,
        "degenerate_penalty": shaped.degenerate_penalty,
        "reward": shaped.reward,
    }


def _excluded(judge_error: str | None, seconds: float) -> dict[str, Any]:
    return {
        "raw_reward": None,
        "is_success": None,
        "judge_error": judge_error,
        "judge_seconds": seconds,
        "length_capped": None,
        "degenerate": None,
        "format_penalty": None,
        "degenerate_penalty": None,
        "reward": math.nan,
    }


def _generated(row: dict[str, Any]) -> tuple[str, list[int]]:
    """All text and token ids the policy generated in the episode."""
    turns = json.loads(row["turns"] or "[]")
    text = "".join(turn.get("response_text") or "" for turn in turns)
    ids = [
        token
        for sample in row["samples"] or []
        for token, mask in zip(sample["token_ids"], sample["loss_mask"], strict=True)
        if mask
    ]
    return text, ids


def judge_metrics(judged: list[dict[str, Any]]) -> dict[str, float]:
    """Reward mean/std, success rate, judge-error rate and the share of groups without signal."""
    ran = [row for row in judged if row["status"] == "ok"]
    valid = [row for row in ran if not math.isnan(row["reward"])]
    rewards = [row["reward"] for row in valid]
    groups: dict[str, list[float]] = defaultdict(list)
    for row in valid:
        groups[row["task_id"]].append(row["reward"])
    flat = sum(1 for values in groups.values() if len(set(values)) <= 1)
    return {
        "episodes": float(len(judged)),
        "episodes_failed": float(len(judged) - len(ran)),
        "reward_mean": statistics.fmean(rewards) if rewards else math.nan,
        "reward_std": statistics.pstdev(rewards) if rewards else math.nan,
        "correctness_mean": statistics.fmean(row["raw_reward"] for row in valid) if valid else math.nan,
        "success_rate": sum(bool(row["is_success"]) for row in valid) / len(valid) if valid else math.nan,
        "judge_error_rate": sum(row["judge_error"] is not None for row in ran) / len(ran) if ran else 0.0,
        "groups_without_signal_share": flat / len(groups) if groups else math.nan,
        "format_penalty_mean": statistics.fmean(row["format_penalty"] for row in valid) if valid else math.nan,
        "degenerate_rate": sum(bool(row["degenerate"]) for row in valid) / len(valid) if valid else math.nan,
        "length_capped_rate": sum(bool(row["length_capped"]) for row in valid) / len(valid) if valid else math.nan,
    }
