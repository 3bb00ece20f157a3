"""Held-out evaluation: greedy pass@1 and sampled pass@k, with a 95% Wilson interval.

The policy runs the same workflow and judge as in training, on the first ``eval_tasks`` tasks of
the eval split (the same tasks every time, so evaluations compare). pass@1 is one greedy episode
per task; pass@k is the share of tasks with at least one success among k sampled episodes.
The greedy episodes' tool use (``reinflow.rollout.tool_use``) is reported too, each figure with a
95% interval (Wilson for the shares, normal for the means).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from reinflow.judging.judge_rollouts import judge_rollout_file
from reinflow.data.task_cursor import next_tasks
from reinflow.judging.judge import Judge
from reinflow.rollout.tool_use import tool_use_metrics
from reinflow.run.rollout_runtime import RolloutRuntime, roll_out

Z_95 = 1.959964


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (good at small n and near 0 or 1).

    >>> [round(x, 3) for x in wilson_interval(50, 100)]
    [0.404, 0.596]
    >>> wilson_interval(0, 0)
    (0.0, 1.0)
    """
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: list[float], z: float = Z_95) -> tuple[float, float]:
    """The normal-approximation interval of a mean, ``mean ± z · sd / √n`` (sd with Bessel's
    correction); ``(mean, mean)`` for fewer than two values.

    >>> [round(x, 3) for x in mean_interval([0.0, 1.0, 2.0, 3.0])]
    [0.235, 2.765]
    """
    if not values:
        return 0.0, 0.0
    centre = sum(values) / len(values)
    if len(values) < 2:
        return centre, centre
    sd = math.sqrt(sum((value - centre) ** 2 for value in values) / (len(values) - 1))
    half = z * sd / math.sqrt(len(values))
    return centre - half, centre + half


def tool_use_with_intervals(judged: Path) -> dict[str, float]:
    """``tool_use_metrics`` of a judged file's episodes, each with ``_ci_low`` / ``_ci_high``."""
    columns = ["num_tool_calls", "format_errors", "answered_before_tool_result", "num_turns"]
    rows = pq.read_table(judged, columns=columns).to_pylist()
    metrics = tool_use_metrics(rows)
    per_episode = {
        "tool_call_share": [float((row["num_tool_calls"] or 0) > 0) for row in rows],
        "malformed_tool_calls_per_episode": [float(row["format_errors"] or 0) for row in rows],
        "answered_before_tool_result_share": [float(bool(row["answered_before_tool_result"])) for row in rows],
        "turns_per_episode": [float(row["num_turns"] or 0) for row in rows],
    }
    for key, values in per_episode.items():
        share = key.endswith("_share")
        low, high = wilson_interval(int(sum(values)), len(values)) if share else mean_interval(values)
        metrics |= {f"{key}_ci_low": low, f"{key}_ci_high": high}
    return metrics


def evaluate_policy(
    runtime: RolloutRuntime, judge: Judge, data_path: Path, output_dir: Path, pass_k: int,
    on_episode: Callable[..., None] | None = None,
) -> dict[str, float]:
    """Evaluate the engine's current weights; write the episodes under ``output_dir``; return
    ``pass_at_1``, its interval, ``pass_at_k``, the episode counts and the greedy episodes' tool
    use with intervals (:func:`tool_use_with_intervals`).

    ``on_episode`` is called once per finished episode (``eval_tasks × (1 + pass_k)`` calls when
    ``pass_k > 1``, else ``eval_tasks``)."""
    config = runtime.config
    tasks, _ = next_tasks(data_path, config.data.eval_split, 0, config.data.eval_tasks)
    metrics = _pass_at(_judged_successes(runtime, judge, tasks, 1, 0.0, output_dir / "greedy", on_episode), 1)
    metrics |= tool_use_with_intervals(output_dir / "greedy_judged.parquet")
    if pass_k > 1:
        sampled = _judged_successes(
            runtime, judge, tasks, pass_k, config.rollout.temperature, output_dir / "sampled", on_episode
        )
        metrics |= _pass_at(sampled, pass_k)
    return metrics


def _judged_successes(
    runtime: RolloutRuntime, judge: Judge, tasks: list, episodes_per_task: int, temperature: float, stem: Path,
    on_episode: Callable[..., None] | None,
) -> dict[str, list[bool]]:
    rollout = stem.with_suffix(".parquet")
    roll_out(runtime, tasks, episodes_per_task, rollout, iteration=-1, temperature=temperature, on_episode=on_episode)
    judged = stem.with_name(stem.name + "_judged.parquet")
    judge_rollout_file(rollout, judged, judge, runtime.config.judge)
    return _successes(judged)


def _successes(judged: Path) -> dict[str, list[bool]]:
    """Per task: whether each episode succeeded (failed or unjudged episodes count as failures)."""
    by_task: dict[str, list[bool]] = defaultdict(list)
    for row in pq.read_table(judged, columns=["task_id", "is_success"]).to_pylist():
        by_task[row["task_id"]].append(bool(row["is_success"]))
    return by_task


def _pass_at(by_task: dict[str, list[bool]], k: int) -> dict[str, float]:
    solved = sum(any(results) for results in by_task.values())
    low, high = wilson_interval(solved, len(by_task))
    return {
        f"pass_at_{k}": solved / len(by_task) if by_task else math.nan,
        f"pass_at_{k}_ci_low": low,
        f"pass_at_{k}_ci_high": high,
        f"pass_at_{k}_tasks": float(len(by_task)),
    }
