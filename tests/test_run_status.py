"""A run's true status: a SIGKILLed owner leaves "running" in run.json, and every reader says "crashed".

The owner here is a real process that starts a run exactly as the training flow does
(``run_state.new_run``) and then waits; the test SIGKILLs it by pid (never a process group, never
``kill -9 -PGID``) and asks the readers: ``effective_status``, the logview's run list and
``--resume latest``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reinflow.config import load_config
from reinflow.logview.runs import list_runs, run_status
from reinflow.run.owner import current_owner, owner_gone, process_start_ticks
from reinflow.run.run_state import RUN_FILE, ResumeError, effective_status, find_run_to_resume, run_to_resume

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "configs" / "tiny_e2e.yaml"

OWNER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from reinflow.config import load_config
    from reinflow.run.run_state import new_run
    run_dir, _ = new_run(load_config(Path(sys.argv[1]), [f"tracking.run_dir={sys.argv[2]}"]), Path(sys.argv[2]))
    print(run_dir, flush=True)
    time.sleep(600)
""")


def config_for(tmp_path: Path):
    return load_config(CONFIG, [f"tracking.run_dir={tmp_path / 'runs'}"])


@pytest.fixture
def owner(tmp_path: Path):
    """A live process owning a fresh run: ``(process, run folder)``; killed at the end whatever happens."""
    process = subprocess.Popen([sys.executable, "-c", OWNER, str(CONFIG), str(tmp_path / "runs")], cwd=tmp_path,
                               stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        run_dir = Path(process.stdout.readline().strip())
        assert (run_dir / RUN_FILE).is_file(), "the owner did not start its run"
        yield process, run_dir
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def recorded(run_dir: Path) -> dict:
    return json.loads((run_dir / RUN_FILE).read_text())


def test_a_sigkilled_run_reads_as_crashed_everywhere(owner, tmp_path):
    process, run_dir = owner
    config = config_for(tmp_path)
    written = recorded(run_dir)
    assert written["status"] == "running"
    assert written["owner"] == {"host": socket.gethostname(), "pid": process.pid,
                                "start_ticks": process_start_ticks(process.pid)}

    # alive: running, and not to be resumed from under its owner
    assert effective_status(written) == "running"
    assert [run_status(run)["status"] for run in list_runs(tmp_path / "runs")] == ["running"]
    with pytest.raises(ResumeError, match=f"run '{run_dir.name}' is still running \\(pid {process.pid} on "):
        find_run_to_resume(config, tmp_path, run_dir.name)
    with pytest.raises(ResumeError, match="no unfinished run"):
        find_run_to_resume(config, tmp_path, None)

    os.kill(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10  # the signal is delivered asynchronously
    while effective_status(recorded(run_dir)) != "crashed" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert effective_status(recorded(run_dir)) == "crashed"  # a zombie not yet reaped is gone already
    process.wait(timeout=30)
    assert recorded(run_dir)["status"] == "running"  # nobody wrote anything: the readers tell
    assert effective_status(recorded(run_dir)) == "crashed"
    assert [run_status(run)["status"] for run in list_runs(tmp_path / "runs")] == ["crashed"]
    assert find_run_to_resume(config, tmp_path, None)[0] == run_dir

    # resuming claims it: this process owns it now, and it is running again
    _, info = run_to_resume(config, tmp_path, None)
    assert info.owner == current_owner() and recorded(run_dir)["owner"] == current_owner()
    assert effective_status(recorded(run_dir)) == "running"


def test_a_reused_pid_does_not_pass_for_the_owner():
    me = current_owner()
    assert not owner_gone(me)
    assert owner_gone(me | {"start_ticks": me["start_ticks"] - 1})  # same pid, another process


@pytest.mark.parametrize("owner_record", [
    None,                                                            # written before owners were recorded
    {"host": "another-host.example", "pid": 1, "start_ticks": 0},    # cannot be asked from here
])
def test_what_cannot_be_checked_reads_as_written(owner_record):
    assert effective_status({"status": "running", "owner": owner_record}) == "running"
    assert effective_status({"status": "finished", "owner": {**current_owner(), "pid": 2 ** 22 + 1}}) == "finished"
    assert effective_status({}) == "unknown"
