"""The Prefect server restarted while a deployed training run is running.

A real stack (``tests/helpers/prefect_stack.py``: `prefect server start` on SQLite, the process work
pool ``local``, a worker) runs the ``train`` deployment on the tiny model. Once the first
checkpoint is on disk the server is SIGKILLed, then started again on the same database and port.
The flow run's process keeps training while the API is gone (its state reports are retried by
Prefect's client). What Prefect makes of the run is printed; either it completes, or, where Prefect
marks it crashed or failed, a second run of the deployment with ``resume=latest`` finishes it. Either
way the training run must end whole: no iteration lost or repeated, the right data cursor, no
duplicate MLflow step, the last checkpoint loadable.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from helpers.prefect_stack import api, run_deployment, running_stack, wait_for, wait_until_final
from helpers.train_run import EXPERIMENT, assert_run_is_whole, project


def _first_checkpoint(root):
    """Any finished checkpoint: with ``train.keep_checkpoints`` 1, iter_1 is gone once iter_2 is written."""
    return next(root.glob(f"runs/{EXPERIMENT}/*/checkpoints/iter_*/COMPLETE"), None)


@pytest.mark.slow
@pytest.mark.reliability("a Prefect server restart mid-run loses nothing",
                         tried="SIGKILL of `prefect server` during a deployed train run, restarted on its database")
def test_a_server_restart_during_a_deployed_run_loses_nothing(tmp_path):
    root = project(tmp_path / "project")
    with running_stack(tmp_path) as stack:
        stack.cli("deploy", "--all")
        deployments = {d["name"]: d for d in api(stack, "POST", "/deployments/filter", {})}
        parameters = {"config_path": "configs/tiny.yaml", "project_root": str(root)}
        started = time.monotonic()
        first = run_deployment(stack, deployments["train"], parameters)
        wait_for("the first checkpoint", lambda: _first_checkpoint(root), 480, stack)
        stack.kill_server(signal.SIGKILL)
        killed = time.monotonic()
        stack.start_server()
        print(f"server killed {killed - started:.0f} s into the run, back after {time.monotonic() - killed:.0f} s")
        run = wait_until_final(stack, first["id"], expect=None)
        print(f"Prefect's state of the run: {run['state']['type']} ({run['state'].get('message')})")
        (run_json,) = root.glob(f"runs/{EXPERIMENT}/*/run.json")
        finished = json.loads(run_json.read_text())["status"] == "finished"
        print(f"training run on disk: {'finished' if finished else 'unfinished'}")
        if not finished:
            again = run_deployment(stack, deployments["train"], {**parameters, "resume": "latest"})
            wait_until_final(stack, again["id"])
        print(f"total {time.monotonic() - started:.0f} s")
    assert_run_is_whole(root)
