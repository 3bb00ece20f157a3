"""A Ray policy worker killed mid-update: the iteration fails cleanly, ``--resume`` rebuilds the group.

``REINFLOW_CRASH_AT=worker_update:2`` (``reinflow/faults.py``, forwarded to the workers) makes the
last rank's worker process SIGKILL itself as its update of iteration 2 starts, while rank 0 computes
its share and then waits in the all-reduce. The driver must notice at once (not wait for rank 0,
which would block for the collective's timeout), end the run with one line naming the dead worker
(rank, pid, node), and keep iteration 1's checkpoint; a resume starts a new Ray instance and a new
group, restores iteration 1 and finishes with nothing lost or repeated.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from helpers.train_run import BACKBONES, assert_run_is_whole, error_line, history, project, run_dir, train
from reinflow.run.checkpoint import list_checkpoints
from reinflow.faults import CRASH_ENV

RAY = BACKBONES["ray"]
RAY_OVERRIDES = [arg for arg in RAY if "=" in arg] + ["backbone=ray"]


@pytest.mark.slow
@pytest.mark.reliability("a lost Ray policy worker fails the iteration cleanly; resume rebuilds the group",
                         tried="SIGKILL of rank 1 of 2 as its update of iteration 2 starts")
def test_a_worker_killed_mid_update_fails_cleanly_and_resume_rebuilds_the_group(tmp_path):
    root = project(tmp_path)
    started = time.monotonic()
    failed = train(root, *RAY, env={CRASH_ENV: "worker_update:2"}, check=False, timeout_s=400)
    print(f"failed run: {time.monotonic() - started:.0f} s, exit {failed.returncode}")
    assert failed.returncode == 2, failed.stderr[-3000:]
    line = error_line(failed)
    print(line)
    match = re.search(r"train_step: policy worker 1 of 2 \(pid (\d+) on [\d.]+\) was lost", line)
    assert match, line
    with pytest.raises(ProcessLookupError):  # the named worker is the dead one
        os.kill(int(match.group(1)), 0)
    assert "--resume latest" in line
    folder = run_dir(root)
    assert [i for i, _ in list_checkpoints(folder / "checkpoints")] == [1]
    assert [step for step, _ in history(root)["iteration"]] == [0, 1]  # iteration 2 not logged
    started = time.monotonic()
    train(root, "--resume", "latest", *RAY)
    print(f"resumed run: {time.monotonic() - started:.0f} s")
    assert_run_is_whole(root, *RAY_OVERRIDES)
