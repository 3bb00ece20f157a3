"""Prefect task: held-out pass@1 (greedy) and pass@k (sampled) of the engine's current weights."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from reinflow.run.evaluation import evaluate_policy
from reinflow.run.session import SESSIONS
from tasks.progress import stage_progress


@task(name="evaluate", task_run_name="evaluate-iter-{iteration}", cache_policy=NO_CACHE)
def evaluate(run_dir: str, iteration: int, pass_k: int) -> dict[str, float]:
    """Evaluate into ``<run_dir>/eval/iter_N/``; returns the metrics prefixed ``eval/``."""
    session = SESSIONS[run_dir]
    data_path = session.project_root / session.config.data.path
    config = session.config
    episodes = config.data.eval_tasks * (1 + pass_k if pass_k > 1 else 1)
    with stage_progress(f"evaluate iter {iteration}", episodes) as advance:
        metrics = evaluate_policy(
            session.runtime, session.judge, data_path, Path(run_dir) / "eval" / f"iter_{iteration}", pass_k, advance
        )
    get_run_logger().info(
        "iteration %d: held-out pass@1 %.3f [%.3f, %.3f] on %d tasks",
        iteration, metrics["pass_at_1"], metrics["pass_at_1_ci_low"], metrics["pass_at_1_ci_high"], metrics["pass_at_1_tasks"],
    )
    return {f"eval/{key}": value for key, value in metrics.items()}
