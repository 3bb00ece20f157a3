"""A SIGKILLed `reinflow train` leaves no process behind: Prefect's ephemeral server ends with it.

The command runs in a session of its own (so that whatever the test fails to stop can be killed as
a group at the end), but only the command's own pid is SIGKILLed: its children have to go by
themselves. They are found before the kill, by walking the command's process tree.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from helpers.train_run import EXPERIMENT, ROOT, kill_group, project
from reinflow.run.run_state import effective_status

GONE_WITHIN_S = 20


def server_child(cli: psutil.Process) -> psutil.Process | None:
    for child in cli.children(recursive=True):
        try:
            if "uvicorn" in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            pass
    return None


def wait_for(what: str, condition, timeout_s: float, cli: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        assert cli.poll() is None, f"the command ended before {what}:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout_s} s:\n{log.read_text()[-3000:]}")


def still_there(process: psutil.Process) -> bool:
    """Alive and the same process (a pid handed out again does not count; a zombie is gone)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
@pytest.mark.reliability("a SIGKILLed command leaves no process behind",
                         tried="SIGKILL of `reinflow train` alone (not its group) once its Prefect server runs")
def test_a_sigkilled_train_leaves_no_prefect_server(tmp_path):
    root = project(tmp_path)
    log = root / "train.log"
    command = [sys.executable, "-c", "from cli.app import main; main()", "train", "--conf", "configs/tiny.yaml"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    with (root / "train.out").open("w") as out, log.open("w") as err:
        cli = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=err, start_new_session=True)
    try:
        tree = psutil.Process(cli.pid)
        server = wait_for("Prefect server child", lambda: server_child(tree), 300, cli, log)
        assert "reinflow.run.parent_watch" in server.cmdline(), server.cmdline()
        wait_for("run folder", lambda: next(root.glob(f"runs/{EXPERIMENT}/*/run.json"), None), 300, cli, log)
        children = tree.children(recursive=True)
        assert server in children

        os.kill(cli.pid, signal.SIGKILL)  # the command only, not its process group
        cli.wait(timeout=30)
        deadline = time.monotonic() + GONE_WITHIN_S
        while any(map(still_there, children)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [(child.pid, child.cmdline()) for child in children if still_there(child)]
        assert not left, f"left behind {GONE_WITHIN_S} s after the SIGKILL: {left}"
    finally:
        if cli.poll() is None:
            os.kill(cli.pid, signal.SIGKILL)
            cli.wait(timeout=30)
        kill_group(cli.pid)
    (run_json,) = root.glob(f"runs/{EXPERIMENT}/*/run.json")
    assert effective_status(json.loads(run_json.read_text())) == "crashed"
