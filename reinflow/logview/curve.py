"""The reward curve of a run, from its episode files: per training iteration the mean reward,
success rate and format-error rate (the same definitions as the training metrics in
``reinflow.judging.judge_rollouts`` and ``reinflow.rollout.runner``), and per greedy evaluation the held-out pass@1."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

SERIES = {
    "reward_mean": "reward (mean)",
    "success_rate": "success rate",
    "format_error_rate": "format-error rate",
    "pass_at_1": "held-out pass@1",
}
"""Curve keys and their legend labels (the same curves as ``reinflow.tracking.plots``)."""


def set_stats(rows: Sequence[dict[str, Any]]) -> dict[str, float | int | None]:
    """Episode count, mean reward and success rate over valid episodes (status ok, reward a number),
    format-error rate over all episodes; None where there is nothing to average."""
    valid = [row for row in rows if row["status"] == "ok" and row["reward"] is not None]
    return {
        "episodes": len(rows),
        "reward_mean": statistics.fmean(row["reward"] for row in valid) if valid else None,
        "success_rate": sum(row["is_success"] is True for row in valid) / len(valid) if valid else None,
        "format_error_rate": sum((row["format_errors"] or 0) > 0 for row in rows) / len(rows) if rows else None,
    }


def curve_points(train: Sequence[tuple[int, dict]], greedy_evals: Sequence[tuple[int, dict]]) -> list[dict[str, Any]]:
    """One point per iteration that has data: ``{"iteration": N, <series>: value or None}``."""
    points: dict[int, dict[str, Any]] = {}
    for iteration, stats in train:
        point = points.setdefault(iteration, {"iteration": iteration} | dict.fromkeys(SERIES))
        point |= {key: stats[key] for key in ("reward_mean", "success_rate", "format_error_rate")}
    for iteration, stats in greedy_evals:
        point = points.setdefault(iteration, {"iteration": iteration} | dict.fromkeys(SERIES))
        point["pass_at_1"] = stats["success_rate"]
    return [points[iteration] for iteration in sorted(points)]
