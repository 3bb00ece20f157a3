"""Prefect task: start the iteration's checkpoint (a copy of the state here; the atomic write, the
last K kept, in the session's background writer: ``reinflow.run.checkpoint_writer``)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from reinflow.run.session import save_checkpoint
from tasks.live import live_session


@task(name="checkpoint", task_run_name="checkpoint-iter-{iteration}", cache_policy=NO_CACHE)
def checkpoint(run_dir: str, iteration: int, cursor: int) -> str:
    """Checkpoint the live session of the run in ``run_dir`` (``tasks.live``) in the background, after
    the write before it (whose error this raises); returns the folder, on disk once the session's
    ``checkpoint_writer.wait()`` returns (the end of the run waits for it)."""
    return str(save_checkpoint(live_session(run_dir), iteration, cursor, background=True))
