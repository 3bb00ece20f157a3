"""Prefect task: write the iteration's checkpoint (atomic; the last K kept)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from reinflow.run.session import TrainingSession, save_checkpoint


@task(name="checkpoint", task_run_name="checkpoint-iter-{iteration}", cache_policy=NO_CACHE)
def checkpoint(session: TrainingSession, iteration: int, cursor: int) -> str:
    """Returns the checkpoint folder."""
    return str(save_checkpoint(session, iteration, cursor))
