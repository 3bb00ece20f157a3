"""Prefect task: one GRPO update on ``judged/iter_N.parquet``; the engine gets the new weights (or,
with a rollout running ahead on it, the flow hands them over once that rollout is done)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from reinflow.faults import crash_point
from reinflow.run.session import update_policy
from tasks.live import live_session
from tasks.progress import count_progress


@task(name="update", task_run_name="update-iter-{iteration}", cache_policy=NO_CACHE)
def update(run_dir: str, iteration: int, judged_path: str, sync_engine: bool = True) -> dict[str, Any]:
    """Update the live session's policy of the run in ``run_dir`` (``tasks.live``). Not cached: it
    changes the in-memory policy (a resumed run restores it from a checkpoint)."""
    with count_progress(f"update iter {iteration}") as on_progress:
        metrics = update_policy(live_session(run_dir), Path(judged_path), iteration, on_progress, sync_engine)
    crash_point("update", iteration)
    get_run_logger().info(
        "iteration %d: loss %.4f, grad norm %.3f, %d trained tokens, mismatch %.2e",
        iteration, metrics.get("loss", 0.0), metrics.get("grad_norm", 0.0), metrics.get("trained_tokens", 0),
        metrics.get("logprob_mismatch", 0.0),
    )
    return metrics
