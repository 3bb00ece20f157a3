"""The live objects of a flow run (engine, policy, judge, the training session), reached by its tasks
and subflows through a context variable, never through a Prefect parameter.

Prefect serialises a flow run's parameters for its API record (a subflow's too) and hashes a task's
inputs for its cache key; how it does so changes between releases (Prefect 3.7.7 with fastapi 0.136
turns a dataclass parameter into a dict through ``dataclasses.asdict``, which deep-copies it, and
torch's packed tensors refuse to be copied). So flows and tasks take plain values only (paths,
numbers, the config as a dict), and the flow that builds the live objects opens them here::

    with live(session=session):            # flows/train.py
        train_iteration(str(run_dir), iteration, ...)   # its tasks call live_session(run_dir)

Prefect runs a sync subflow or task in the caller's thread or in a thread that copies the caller's
context, so what ``live`` sets is what they see; nothing here outlives the ``with`` block and no
process-wide registry holds a run's objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from reinflow.judging.judge import Judge
from reinflow.run.rollout_runtime import RolloutRuntime
from reinflow.run.session import TrainingSession


@dataclass(frozen=True, eq=False)
class LiveObjects:
    """What runs a flow's stages: a training run's session, or (``reinflow eval``) a runtime and judge."""

    runtime: RolloutRuntime
    judge: Judge
    session: TrainingSession | None = None


_CURRENT: ContextVar[LiveObjects | None] = ContextVar("reinflow_live_objects", default=None)


@contextmanager
def live(*, session: TrainingSession | None = None, runtime: RolloutRuntime | None = None,
         judge: Judge | None = None) -> Iterator[LiveObjects]:
    """Make a training ``session`` (its runtime and judge with it), or a ``runtime`` and ``judge``,
    the live objects of the tasks and subflows called inside the block."""
    if session is not None:
        objects = LiveObjects(session.runtime, session.judge, session)
    elif runtime is not None and judge is not None:
        objects = LiveObjects(runtime, judge)
    else:
        raise TypeError("live() takes a session, or a runtime and a judge")
    token = _CURRENT.set(objects)
    try:
        yield objects
    finally:
        _CURRENT.reset(token)


def live_objects() -> LiveObjects:
    """The live objects of the enclosing flow run (``live``); a task called outside one is a bug."""
    objects = _CURRENT.get()
    if objects is None:
        raise RuntimeError("no live objects in this context: call this task inside a flow's `with live(...)` block "
                           "(flows/train.py, flows/evaluate.py)")
    return objects


def live_session(run_dir: str) -> TrainingSession:
    """The training session of the run in ``run_dir`` (the task's plain parameter, checked against it)."""
    session = live_objects().session
    if session is None:
        raise RuntimeError("this task needs a training session; the enclosing flow opened none")
    if Path(run_dir).resolve() != Path(session.run_dir).resolve():
        raise RuntimeError(f"the live training session is the run in {session.run_dir}, not {run_dir}")
    return session
