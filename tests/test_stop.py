"""`reinflow stop`: it stops the background logview that reinflow started (found by its pid file),
and never signals a process whose pid merely matches a stale pid file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from reinflow.run import pidfiles
from reinflow.logview.background import background_name, ensure_background_logview

REINFLOW = [sys.executable, "-c", "from cli.app import main; main()"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*REINFLOW, *args], cwd=cwd, env={**os.environ, "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=120)


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for this test process to reap it counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stop_ends_the_background_logview_and_only_it(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    url, started = ensure_background_logview(tmp_path, runs)
    assert started
    assert ensure_background_logview(tmp_path, runs) == (url, False)  # a second train reuses it
    (record,) = pidfiles.records(tmp_path)
    assert record.name == background_name(runs) and record.info["url"] == url
    try:
        with urllib.request.urlopen(url + "api/runs", timeout=30) as response:
            assert json.load(response) == {"runs_dir": str(runs), "runs": []}

        result = run_cli("stop", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"stopped {record.name} (pid {record.pid}) {url}" in result.stdout
        assert gone(record.pid)
        assert not list(pidfiles.pid_dir(tmp_path).iterdir())
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(url + "api/runs", timeout=5)
        assert run_cli("stop", cwd=tmp_path).stdout.strip() == "nothing to stop"
    finally:
        if not gone(record.pid):
            os.kill(record.pid, 9)


def test_a_pid_file_naming_an_unrelated_process_is_removed_without_killing_it(tmp_path):
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        path = pidfiles.register(tmp_path, "logview-old", {"url": "http://127.0.0.1:1/"}, pid=bystander.pid)
        # the pid was reused: the record names the same pid but another command line
        record = json.loads(path.read_text()) | {"cmdline": [sys.executable, "-m", "reinflow.logview"]}
        path.write_text(json.dumps(record))

        result = run_cli("stop", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"logview-old: pid {bystander.pid} is no longer ours" in result.stdout
        assert bystander.poll() is None  # still running
        assert not path.exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_a_process_that_ignores_sigterm_is_killed(tmp_path):
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                 "print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert stubborn.stdout.readline().strip() == "ready"
        pidfiles.register(tmp_path, "stubborn", pid=stubborn.pid)
        (result,) = pidfiles.stop(tmp_path, wait_seconds=0.5)
        assert result.outcome == "killed" and stubborn.wait(timeout=5) == -9
    finally:
        stubborn.kill()
        stubborn.wait()


def test_stopping_an_unknown_name_is_a_one_line_error(tmp_path):
    result = run_cli("stop", "nope", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: stop: nothing registered as nope (registered: none)"


# A command that starts the background logview as `reinflow train --with-logview` does, says the
# logview's pid, then either ends by itself ("exit") or waits to be SIGKILLed ("wait").
STARTER = """
import sys, time
from pathlib import Path
from cli.app import _start_logview
from reinflow.run import pidfiles
_start_logview(Path(sys.argv[1]))
print(pidfiles.records(Path.cwd())[0].pid, flush=True)
if sys.argv[2] == "wait":
    time.sleep(600)
"""


def start_logview_from_a_command(tmp_path: Path, runs: Path, then: str) -> tuple[subprocess.Popen, psutil.Process]:
    command = subprocess.Popen([sys.executable, "-c", STARTER, str(runs), then], cwd=tmp_path, stdout=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    line = command.stdout.readline()
    while line and not line.strip().isdigit():  # the "logview: <url> (started…)" line comes first
        line = command.stdout.readline()
    assert line, "the command did not start its logview"
    return command, psutil.Process(int(line))


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return gone(pid)


def test_the_background_logview_ends_with_a_sigkilled_command_and_stays_after_a_finished_one(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    killed, logview = start_logview_from_a_command(tmp_path, runs, "wait")
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
        assert wait_gone(logview.pid, 10), "the logview outlived the SIGKILLed command that started it"
    finally:
        if not gone(logview.pid):
            logview.kill()

    finished, logview = start_logview_from_a_command(tmp_path, runs, "exit")
    try:
        assert finished.wait(timeout=60) == 0
        time.sleep(2)  # past the watcher's poll: released, it stays for browsing until `reinflow stop`
        assert not gone(logview.pid)
        assert [record.outcome for record in pidfiles.stop(tmp_path)] == ["terminated"]
    finally:
        if not gone(logview.pid):
            logview.kill()


def test_a_stale_pid_file_is_swept_when_the_next_logview_starts(tmp_path):
    ended = subprocess.Popen(["sleep", "60"])
    stale = pidfiles.register(tmp_path, "logview-ended", {"url": "http://127.0.0.1:1/"}, pid=ended.pid)
    ended.kill()
    ended.wait()
    runs = tmp_path / "runs"
    runs.mkdir()
    url, started = ensure_background_logview(tmp_path, runs)
    try:
        assert started and not stale.exists()
        assert [record.name for record in pidfiles.records(tmp_path)] == [background_name(runs)]
    finally:
        pidfiles.stop(tmp_path)
