"""Wall-clock seconds per stage of an iteration, for the metrics and the one-line summary."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block to ``seconds["seconds/<stage>"]``.

    >>> seconds = {}
    >>> with timed(seconds, "judge"):
    ...     pass
    >>> list(seconds)
    ['seconds/judge']
    """
    started = time.perf_counter()
    try:
        yield
    finally:
        key = f"seconds/{stage}"
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - started


def iteration_summary(iteration: int, iterations: int, metrics: dict[str, float]) -> str:
    """One line per iteration: reward, success, held-out pass@1 when evaluated, and seconds.

    >>> iteration_summary(3, 20, {"reward_mean": 0.25, "success_rate": 0.5, "seconds/iteration": 31.0,
    ...                           "seconds/rollout": 15.0, "seconds/judge": 0.2, "seconds/update": 14.0})
    'iter 3/20: reward 0.250, success 50.0%, 31.0 s (rollout 15.0, judge 0.2, update 14.0)'
    """
    parts = [f"iter {iteration}/{iterations}: reward {metrics['reward_mean']:.3f}",
             f"success {100 * metrics['success_rate']:.1f}%"]
    if "eval/pass_at_1" in metrics:
        parts.append(f"held-out pass@1 {metrics['eval/pass_at_1']:.3f}")
    stages = ", ".join(
        f"{stage} {metrics[f'seconds/{stage}']:.1f}"
        for stage in ("rollout", "judge", "update", "evaluate", "checkpoint")
        if f"seconds/{stage}" in metrics
    )
    return ", ".join(parts) + f", {metrics.get('seconds/iteration', 0.0):.1f} s ({stages})"
