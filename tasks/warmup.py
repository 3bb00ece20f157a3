"""Prefect task: the warm start (supervised fine-tuning on demonstrations) before the baseline evaluation."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from reinflow.run.warmup import record_warm_start, warm_start
from tasks.live import live_session
from tasks.progress import count_progress


@task(name="warmup", task_run_name="warmup", cache_policy=NO_CACHE)
def warmup(run_dir: str) -> dict[str, float]:
    """Warm-start the live session's policy of the run in ``run_dir`` (``tasks.live``). Not cached: it
    changes the in-memory policy; it ends with checkpoint ``iter_0``, so a resumed run does not call
    it again (``reinflow.run.warmup``). Returns the warm start's totals."""
    logger, session = get_run_logger(), live_session(run_dir)
    with count_progress("warm start") as on_step:
        warm = warm_start(session, on_step)
    for source in warm.sources:
        logger.info("warm start: %s", source.summary())
        for example in source.examples:
            logger.warning("warm start: %s skipped %s", source.source, example)
    losses = warm.result.losses
    logger.info("warm start: %d steps on %d samples, loss %.4f -> %.4f, %d trained tokens, %.1fs", len(losses),
                warm.samples, losses[0] if losses else 0.0, losses[-1] if losses else 0.0,
                warm.result.trained_tokens, warm.result.seconds)
    record_warm_start(session, warm)
    return warm.totals
