"""Crash points for fault-injection tests: ``REINFLOW_CRASH_AT=<stage>:<iteration>`` makes the
process SIGKILL itself at that point, as a power cut or the OOM killer would. Unset (always, in
normal use), a crash point is a no-op. Stages: ``rollout`` (episodes written, result not yet
recorded), ``judge`` (likewise), ``update`` (weights changed in memory only), ``checkpoint``
(half a checkpoint on disk), ``tracking`` (between the metrics and the checkpoint), ``warmup``
(the warm start, after its N-th optimizer step: N counts steps, not iterations), and
``worker_update`` (Ray backbone: the last rank's worker process kills itself at the start of its
N-th update, while the other ranks compute theirs; N is the iteration in a run started afresh)."""

from __future__ import annotations

import os
import signal

CRASH_ENV = "REINFLOW_CRASH_AT"


def crash_point(stage: str, iteration: int) -> None:
    """SIGKILL this process if ``REINFLOW_CRASH_AT`` names this stage and iteration."""
    if os.environ.get(CRASH_ENV) == f"{stage}:{iteration}":
        os.kill(os.getpid(), signal.SIGKILL)
