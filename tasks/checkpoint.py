"""Prefect task: write the iteration's checkpoint (atomic; the last K kept)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from reinflow.run.session import save_checkpoint
from tasks.live import live_session


@task(name="checkpoint", task_run_name="checkpoint-iter-{iteration}", cache_policy=NO_CACHE)
def checkpoint(run_dir: str, iteration: int, cursor: int) -> str:
    """Checkpoint the live session of the run in ``run_dir`` (``tasks.live``); returns the folder."""
    return str(save_checkpoint(live_session(run_dir), iteration, cursor))
