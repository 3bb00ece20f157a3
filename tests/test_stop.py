"""`reinflow stop`: it stops the background logview that reinflow started (found by its pid file),
and never signals a process whose pid merely matches a stale pid file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
