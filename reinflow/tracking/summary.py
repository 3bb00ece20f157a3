"""What a finished training run amounts to, read back from its MLflow run: held-out success at
the baseline and at the end (with 95% intervals), and where the wall time went."""

from __future__ import annotations

import time
from typing import Any

from mlflow import MlflowClient

STAGES = ("warmup", "rollout", "judge", "update", "evaluate", "checkpoint")
TOOL_USE = ("tool_call_share", "malformed_tool_calls_per_episode", "answered_before_tool_result_share",
            "turns_per_episode")
"""The held-out tool-use figures (``reinflow.rollout.tool_use``) reported at the baseline and at the end."""


def run_summary(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """``baseline``/``final`` pass@1 as ``(value, low, high)`` (``None`` where not evaluated),
    ``tool_use``: each :data:`TOOL_USE` figure's ``{"baseline": point, "final": point}`` alike,
    ``wall_seconds`` (run start to now), ``stage_seconds`` per stage summed over iterations (the
    warm start only where the run had one), and ``outside_share``: the share of wall time spent
    outside the warm start, rollout, judge, update and evaluation (orchestration, tracking,
    checkpoint I/O, start-up)."""
    pass_at_1 = _by_step(client, run_id, "eval/pass_at_1")
    last = max(pass_at_1) if pass_at_1 else None

    def point(step: int | None, key: str = "pass_at_1") -> tuple[float, float, float] | None:
        values = _by_step(client, run_id, f"eval/{key}")
        if step is None or step not in values:
            return None
        low, high = _by_step(client, run_id, f"eval/{key}_ci_low"), _by_step(client, run_id, f"eval/{key}_ci_high")
        return values[step], low.get(step, float("nan")), high.get(step, float("nan"))

    stage_seconds = {stage: sum(_by_step(client, run_id, f"seconds/{stage}").values()) for stage in STAGES}
    if not _by_step(client, run_id, "seconds/warmup"):
        del stage_seconds["warmup"]
    info = client.get_run(run_id).info
    wall = max(((info.end_time or _now_ms()) - info.start_time) / 1000, 1e-9)
    inside = sum(stage_seconds.get(stage, 0.0) for stage in ("warmup", "rollout", "judge", "update", "evaluate"))
    return {
        "baseline_pass_at_1": point(0),
        "final_pass_at_1": point(last) if last else None,
        "tool_use": {key: {"baseline": point(0, key), "final": point(last, key) if last else None} for key in TOOL_USE},
        "wall_seconds": wall,
        "stage_seconds": stage_seconds,
        "outside_share": max(0.0, 1 - inside / wall),
    }


def _by_step(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {metric.step: metric.value for metric in client.get_metric_history(run_id, key)}


def _now_ms() -> int:
    return int(time.time() * 1000)
