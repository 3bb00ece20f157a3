"""Prefect task: judge ``rollouts/iter_N.parquet`` into ``judged/iter_N.parquet``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from reinflow.config import ExperimentConfig
from reinflow.faults import crash_point
from reinflow.judging.judge import Judge
from reinflow.judging.judge_rollouts import judge_rollout_file
from tasks.progress import stage_progress


@task(name="judge", task_run_name="judge-iter-{iteration}", persist_result=True,
      cache_policy=(INPUTS - "judge_object") + TASK_SOURCE)
def judge(judge_object: Judge, config: dict[str, Any], run_dir: str, iteration: int, rollout_path: str) -> dict[str, Any]:
    """Judge every episode (bounded concurrency, errors isolated); return ``{"path", "metrics"}``.

    ``judge_object`` is the run's judge (built once per run); the cache key is the config, the run
    folder, the iteration and the rollout file's path."""
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
