"""What a finished training run amounts to, read back from its MLflow run: held-out success at
the baseline and at the end (with 95% intervals), and where the wall time went."""

from __future__ import annotations

import time
from typing import Any

from mlflow import MlflowClient

STAGES = ("rollout", "judge", "update", "evaluate", "checkpoint")


def run_summary(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """``baseline``/``final`` pass@1 as ``(value, low, high)`` (``None`` where not evaluated),
    ``wall_seconds`` (run start to now), ``stage_seconds`` per stage summed over iterations, and
    ``outside_share``: the share of wall time spent outside rollout, judge, update and evaluation
    (orchestration, tracking, checkpoint I/O, start-up)."""
    pass_at_1 = _by_step(client, run_id, "eval/pass_at_1")
    low = _by_step(client, run_id, "eval/pass_at_1_ci_low")
    high = _by_step(client, run_id, "eval/pass_at_1_ci_high")
    last = max(pass_at_1) if pass_at_1 else None

    def point(step: int | None) -> tuple[float, float, float] | None:
        if step is None or step not in pass_at_1:
            return None
        return pass_at_1[step], low.get(step, float("nan")), high.get(step, float("nan"))

    stage_seconds = {stage: sum(_by_step(client, run_id, f"seconds/{stage}").values()) for stage in STAGES}
    info = client.get_run(run_id).info
    wall = max(((info.end_time or _now_ms()) - info.start_time) / 1000, 1e-9)
    inside = sum(stage_seconds[stage] for stage in ("rollout", "judge", "update", "evaluate"))
    return {
        "baseline_pass_at_1": point(0),
        "final_pass_at_1": point(last) if last else None,
        "wall_seconds": wall,
        "stage_seconds": stage_seconds,
        "outside_share": max(0.0, 1 - inside / wall),
    }


def _by_step(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {metric.step: metric.value for metric in client.get_metric_history(run_id, key)}


def _now_ms() -> int:
    return int(time.time() * 1000)
