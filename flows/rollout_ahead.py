"""Rollouts that run ahead of the update (``train.max_off_policy_steps``, ``reinflow/run/off_policy.py``).

Beside iteration N's judge and update, one background thread runs the ``rollout`` task of the next
iterations (``iterations_to_roll_ahead``) one after the other, each from the cursor the one before
it ended at, on update N - 1's weights. Their results wait in ``session.rolled_ahead`` for their own
iteration. The engine refuses new weights with episodes in flight, so once the thread is done
(``wait``) the flow takes update N's weights (``run.weight_handover``), and the next iteration's
thread serves them first thing, beside that iteration's judge and update
(``weight_sync_seconds``, logged at the iteration whose thread loaded them).

The thread runs in a copy of the subflow's context, so its task runs belong to ``iter-N`` and reach
the live session (``tasks.live``). A rollout that finished is a cached task result too: after a
crash, the resumed run asks for the same rollout (same iteration and cursor) and gets it back, with
the ``policy_version`` it recorded, instead of sampling it again; one that did not finish left no
file (episode files are written atomically) and runs again. So none is lost or counted twice.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from reinflow.faults import crash_point
from reinflow.run.off_policy import iterations_to_roll_ahead
from reinflow.run.session import TrainingSession
from reinflow.run.weight_handover import serve_taken_weights
from tasks.rollout import rollout


class RolloutsAhead:
    """The background rollouts started beside one iteration's update."""

    def __init__(self, session: TrainingSession, iterations: list[int], cursor: int) -> None:
        self.session, self.iterations, self.cursor = session, iterations, cursor
        self.error: BaseException | None = None
        self.weight_sync_seconds: float | None = None  # loading the weights taken after the last update
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run,), daemon=True,
                                        name=f"rollout-ahead-{iterations[0]}")
        self._thread.start()

    def _run(self) -> None:
        session, cursor = self.session, self.cursor
        config = session.config.model_dump(mode="json")
        try:
            self.weight_sync_seconds = serve_taken_weights(session)
            for iteration in self.iterations:
                result = rollout(config, str(session.project_root), str(session.run_dir), iteration, cursor,
                                 policy_version=session.engine_version)
                session.rolled_ahead[iteration] = result
                cursor = result["next_cursor"]
                crash_point("rollout_ahead", iteration)
        except BaseException as error:  # noqa: BLE001 - handed to the flow's thread by wait()
            self.error = error

    def join(self) -> None:
        """Block until the rollouts are done (or one failed)."""
        self._thread.join()

    def wait(self) -> None:
        """Block until the rollouts are done; raise the first one's error, if one failed."""
        self.join()
        if self.error is not None:
            raise self.error


@contextmanager
def rolling_ahead(session: TrainingSession, iteration: int, rolled: dict[str, Any]) -> Iterator[RolloutsAhead | None]:
    """Start the rollouts of the iterations after ``iteration`` (whose rollout result is ``rolled``)
    that ``train.max_off_policy_steps`` allows, in the background; ``None`` when there are none. On
    leaving the block they are waited for, also when it raised (the engine is not left busy)."""
    train = session.config.train
    iterations = iterations_to_roll_ahead(iteration, train.iterations, train.max_off_policy_steps,
                                          set(session.rolled_ahead))
    if not iterations:
        serve_taken_weights(session)  # none ahead: the engine serves the last update now
    ahead = RolloutsAhead(session, iterations, rolled["next_cursor"]) if iterations else None
    try:
        yield ahead
    finally:
        if ahead is not None:
            ahead.join()


def rollout_result(session: TrainingSession, iteration: int) -> dict[str, Any]:
    """Iteration ``iteration``'s rollout: the one rolled ahead for it, else the ``rollout`` task now
    (a cached result where it already ran) on the engine's weights."""
    ahead = session.rolled_ahead.pop(iteration, None)
    if ahead is not None:
        return ahead
    serve_taken_weights(session)
    return rollout(session.config.model_dump(mode="json"), str(session.project_root), str(session.run_dir),
                   iteration, session.cursor, policy_version=session.engine_version)
