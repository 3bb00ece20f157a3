"""Prefect task: judge ``rollouts/iter_N.parquet`` into ``judged/iter_N.parquet``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from reinflow.config import ExperimentConfig
from reinflow.faults import crash_point
from reinflow.judging.judge_rollouts import judge_rollout_file
from tasks.live import live_objects
from tasks.progress import stage_progress


@task(name="judge", task_run_name="judge-iter-{iteration}", persist_result=True,
      cache_policy=INPUTS + TASK_SOURCE)
def judge(config: dict[str, Any], run_dir: str, iteration: int, rollout_path: str) -> dict[str, Any]:
    """Judge every episode with the run's live judge (``tasks.live``; built once per run), bounded
    concurrency, errors isolated; return ``{"path", "metrics"}``. The cache key is the config, the
    run folder, the iteration and the rollout file's path."""
    judge_object = live_objects().judge
    experiment = ExperimentConfig.model_validate(config)
    output = Path(run_dir) / "judged" / f"iter_{iteration}.parquet"
    with stage_progress(f"judge iter {iteration}", pq.ParquetFile(rollout_path).metadata.num_rows) as advance:
        metrics = judge_rollout_file(Path(rollout_path), output, judge_object, experiment.judge, advance)
    crash_point("judge", iteration)
    get_run_logger().info(
        "iteration %d: reward %.3f ± %.3f, success %.1f%%, judge errors %.1f%%, groups without signal %.1f%%",
        iteration, metrics["reward_mean"], metrics["reward_std"], 100 * metrics["success_rate"],
        100 * metrics["judge_error_rate"], 100 * metrics["groups_without_signal_share"],
    )
    return {"path": str(output), "metrics": metrics}
