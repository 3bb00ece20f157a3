"""Handing the policy's weights over to the rollout engine: at once (:func:`sync_engine_weights`), or
taken now and served later (:func:`take_engine_weights`, :func:`serve_taken_weights`).

On-policy (``train.max_off_policy_steps: 0``) the update syncs the engine before the next rollout.
With rollouts running ahead of the update, the engine is busy until they are done; the flow then
*takes* update N's weights (``Policy.engine_weights_later``: on the Ray backbone, rank 0 puts them
into its object store before its next step) and the next rollouts ahead *serve* them first thing, in
their own thread, while the flow judges and updates the next iteration. So shipping them to the
engine's node and loading them (1.1-1.2 s for the quickstart's model between the two nodes of
``bench/off_policy_overlap.py``, 0.23 s of it the load) runs beside the next update instead of
between the two. Every other use of the engine (a rollout or evaluation in the flow's thread)
serves the taken weights first.

The policy's next optimizer step waits until they are served (``Policy.hold_state``): an in-process
trainer hands out views of its live weights.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from reinflow.run.rollout_runtime import RolloutRuntime
from reinflow.training.base import Policy


@dataclass(eq=False)
class TakenWeights:
    """Update ``version``'s weights, as the engine loads them, not yet served by it."""

    version: int
    fetch: Callable[[], Any]  # RolloutRuntime.policy_weights_later: a state dict or a LoraAdapter, once
    served: threading.Event = field(default_factory=threading.Event)  # set once loaded, or given up


class HandoverSession(Protocol):
    """What of a ``run.session.TrainingSession`` the hand-over reads and writes."""

    runtime: RolloutRuntime
    policy: Policy
    engine_version: int  # the update whose weights the engine serves
    taken_weights: TakenWeights | None


def sync_engine_weights(session: HandoverSession, version: int) -> float:
    """Serve the policy's weights (those of update ``version``) from the engine now; returns the seconds."""
    started = time.perf_counter()
    session.runtime.load_policy(session.policy)
    session.engine_version = version
    return time.perf_counter() - started


def take_engine_weights(session: HandoverSession, version: int) -> float:
    """Take the policy's weights (those of update ``version``) for the engine to serve later
    (:func:`serve_taken_weights`); the policy changes them only once they are served. Returns the seconds."""
    started = time.perf_counter()
    taken = TakenWeights(version, session.runtime.policy_weights_later(session.policy))
    session.policy.hold_state(taken.served.wait)
    session.taken_weights = taken
    return time.perf_counter() - started


def serve_taken_weights(session: HandoverSession) -> float | None:
    """Load the taken weights into the engine (``None``: none were taken); returns the seconds. The
    policy is released also when loading fails (the error is raised)."""
    taken, session.taken_weights = session.taken_weights, None
    if taken is None:
        return None
    started = time.perf_counter()
    try:
        session.runtime.engine.load_weights(taken.fetch())
        session.engine_version = taken.version
    finally:
        taken.served.set()
    return time.perf_counter() - started
