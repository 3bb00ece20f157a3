"""Subflows without a heartbeat thread of their own: about 1 s saved per training iteration.

Prefect 3.7.7 gives every flow run, subflows included, a heartbeat thread (every
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` s, 180 by default) that sleeps in 1-second steps, and joins it
when the run ends: each run waits out the step in progress. ``bench/subflow_overhead.py`` on 2 shared
cores: an empty subflow took 1097 ms with its heartbeat and 153 ms without (medians of 20). The 70
iteration subflows of the quickstart spent about 66 s of its 608 s outside the iteration's stages.

The train flow keeps its heartbeat: it runs for the whole run and reports it alive, so a crashed run
is still detected. Only the ``train-iteration`` subflows it starts run without one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings


@contextmanager
def without_subflow_heartbeat() -> Iterator[None]:
    """Flow runs started inside this block have no heartbeat thread; the running flow keeps its own
    (its thread started with it)."""
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
