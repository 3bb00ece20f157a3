"""The Prefect server goes away for 20 s while a deployed training run is running.

A real stack (``tests/helpers/prefect_stack.py``: `prefect server start` on SQLite, the process work
pool ``local``, a worker) runs the ``train`` deployment on the tiny model for 6 iterations. Once the
first checkpoint is on disk the server is SIGKILLed, left down for 20 s, then started again on the
same database and port. The flow run's process keeps training through the outage: its API calls
(task and subflow creation, state reports) are retried with back-off for
``tracking.prefect_retry_seconds`` (``flows/api_retries.py``). The run must complete, in Prefect and
on disk, without ``--resume``, and end whole: no iteration lost or repeated, the right data
cursor, no duplicate MLflow step, the last checkpoint loadable.
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


def _newest_checkpoint(root):
    return max((p.parent.name for p in root.glob(f"runs/{EXPERIMENT}/*/checkpoints/iter_*/COMPLETE")),
               key=lambda name: int(name.removeprefix("iter_")), default=None)


OUTAGE_S = 20
OVERRIDES = ["train.iterations=6"]


@pytest.mark.slow
@pytest.mark.reliability("a 20-second Prefect server outage mid-run is ridden out",
                         tried="SIGKILL of `prefect server` during a deployed train run, down 20 s, restarted on its "
                               "database; the run completes without --resume")
def test_a_server_outage_during_a_deployed_run_is_ridden_out(tmp_path):
    root = project(tmp_path / "project")
    with running_stack(tmp_path) as stack:
        stack.cli("deploy", "--all")
        deployments = {d["name"]: d for d in api(stack, "POST", "/deployments/filter", {})}
        parameters = {"config_path": "configs/tiny.yaml", "project_root": str(root), "overrides": OVERRIDES}
        started = time.monotonic()
        first = run_deployment(stack, deployments["train"], parameters)
        checkpoint = wait_for("the first checkpoint", lambda: _first_checkpoint(root), 480, stack)
        stack.kill_server(signal.SIGKILL)
        killed = time.monotonic()
        time.sleep(OUTAGE_S)
        stack.start_server()
        print(f"server killed {killed - started:.0f} s into the run (at {checkpoint.parent.name}), "
              f"back after {time.monotonic() - killed:.0f} s (at {_newest_checkpoint(root)})")
        run = wait_until_final(stack, first["id"])  # COMPLETED, with no second run
        print(f"Prefect's state of the run: {run['state']['type']}; total {time.monotonic() - started:.0f} s")
        (run_json,) = root.glob(f"runs/{EXPERIMENT}/*/run.json")
        assert json.loads(run_json.read_text())["status"] == "finished"
        assert len(api(stack, "POST", "/flow_runs/filter", {"flow_runs": {"deployment_id": {
            "any_": [deployments["train"]["id"]]}}})) == 1
    assert_run_is_whole(root, *OVERRIDES)
