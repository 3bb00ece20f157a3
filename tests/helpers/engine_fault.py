"""Fault injection for end-to-end tests: the hf engine's scheduler raises mid-batch.

Imported before the CLI by a `reinflow train` subprocess (``helpers.train_run.train(preload=...)``)
whose environment sets ``REINFLOW_ENGINE_FAULT_AT=<iteration>:<pass>``: in the rollout of that
iteration, the scheduler's ``<pass>``-th pass that decodes running rows raises inside the scheduler
thread while every row's request is in flight, as a device error or a bug in a forward would.
"""

from __future__ import annotations

import os

import reinflow.run.rollout_runtime as rollout_runtime
from reinflow.engines.hf import HFEngine

FAULT_ENV = "REINFLOW_ENGINE_FAULT_AT"


class InjectedEngineFault(RuntimeError):
    """What the scheduler raises."""


def install(fault_iteration: int, at_pass: int) -> None:
    """Arm the engine when the rollout of ``fault_iteration`` starts; fail its ``at_pass``-th decode pass."""
    armed = {"passes": None}
    original_pass, original_rollout = HFEngine._pass, rollout_runtime.run_rollout

    def failing_pass(self: HFEngine, arrivals):
        if armed["passes"] is not None and self._active:
            armed["passes"] += 1
            if armed["passes"] == at_pass:
                raise InjectedEngineFault(f"injected at decode pass {at_pass} with {len(self._active)} rows running")
        return original_pass(self, arrivals)

    async def arming_rollout(*args, iteration: int, **kwargs):
        armed["passes"] = 0 if iteration == fault_iteration else None
        return await original_rollout(*args, iteration=iteration, **kwargs)

    HFEngine._pass = failing_pass
    rollout_runtime.run_rollout = arming_rollout


if os.environ.get(FAULT_ENV):
    _iteration, _pass = (int(part) for part in os.environ[FAULT_ENV].split(":"))
    install(_iteration, _pass)
