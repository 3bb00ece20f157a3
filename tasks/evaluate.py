"""Prefect task: held-out pass@1 (greedy) and pass@k (sampled) of the engine's current weights."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from reinflow.run.evaluation import evaluate_policy
from tasks.live import live_objects
from tasks.progress import stage_progress


@task(name="evaluate", task_run_name="evaluate-{label}", cache_policy=NO_CACHE)
def evaluate(data_path: str, output_dir: str, pass_k: int, label: str) -> dict[str, float]:
    """Evaluate the live runtime's weights with the live judge (``tasks.live``) into ``output_dir``;
    returns ``pass_at_1``, its interval and ``pass_at_k`` (``label`` names the task run: ``iter-3``,
    a checkpoint's folder name)."""
    runtime, judge = live_objects().runtime, live_objects().judge
    config = runtime.config
    episodes = config.data.eval_tasks * (1 + pass_k if pass_k > 1 else 1)
    with stage_progress(f"evaluate {label}", episodes) as advance:
        metrics = evaluate_policy(runtime, judge, Path(data_path), Path(output_dir), pass_k, advance)
    get_run_logger().info(
        "%s: held-out pass@1 %.3f [%.3f, %.3f] on %d tasks",
        label, metrics["pass_at_1"], metrics["pass_at_1_ci_low"], metrics["pass_at_1_ci_high"], metrics["pass_at_1_tasks"],
    )
    return metrics
