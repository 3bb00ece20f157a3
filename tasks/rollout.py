"""Prefect task: roll out one iteration's episodes into ``<run_dir>/rollouts/iter_N.parquet``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from reinflow.config import ExperimentConfig
from reinflow.faults import crash_point
from reinflow.run.rollout_runtime import rollout_iteration
from tasks.live import live_objects
from tasks.progress import stage_progress


@task(name="rollout", task_run_name="rollout-iter-{iteration}", persist_result=True,
      cache_policy=(INPUTS - "policy_version") + TASK_SOURCE)
def rollout(config: dict[str, Any], project_root: str, run_dir: str, iteration: int, cursor: int,
            policy_version: int = 0) -> dict[str, Any]:
    """Run ``group_size`` episodes for each of the next tasks from ``cursor`` on the live runtime
    (``tasks.live``: engine, workflow), whose weights are those of update ``policy_version``.

    Returns ``{"path", "next_cursor", "metrics"}``. The cache key is ``config`` (the validated
    config as a dict), the folders, the iteration and the cursor; the runtime is not a parameter:
    it is what runs the episodes, not what they are. Nor is ``policy_version``: a rollout that ran
    ahead of the update (``train.max_off_policy_steps``) and finished before a crash is reused by
    the resumed run as it was, with the version it recorded, not sampled again.
    """
    runtime = live_objects().runtime
    experiment = ExperimentConfig.model_validate(config)
    root = Path(project_root)
    output = Path(run_dir) / "rollouts" / f"iter_{iteration}.parquet"
    episodes = experiment.data.tasks_per_iteration * experiment.rollout.group_size
    with stage_progress(f"rollout iter {iteration}", episodes) as advance:
        metrics, next_cursor = rollout_iteration(runtime, root / experiment.data.path, iteration, cursor, output, advance,
                                                 policy_version=policy_version)
    crash_point("rollout", iteration)
    get_run_logger().info(
        "iteration %d: %d episodes, %.0f generated tokens (%.1f tok/s), %d failed, %d timed out",
        iteration, metrics["episodes"], metrics["generated_tokens"], metrics["generated_tokens_per_second"],
        metrics["episodes_failed"], metrics["episodes_timeout"],
    )
    return {"path": str(output), "next_cursor": next_cursor, "metrics": metrics}
