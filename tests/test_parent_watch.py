"""reinflow.run.parent_watch: a module run under the watcher ends when its parent is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from reinflow.run import parent_watch

ROOT = Path(__file__).resolve().parents[1]

MODULES = {
    "stubborn.py": "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(600)\n",
    "polite.py": "import time\nprint('up', flush=True)\ntime.sleep(600)\n",
    "exits_three.py": "import sys\nassert sys.argv[1:] == ['a', '--b'], sys.argv\nsys.exit(3)\n",
}
# A parent that starts the module under the watcher, says the child's pid, and waits to be killed.
PARENT = textwrap.dedent("""
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-m", "reinflow.run.parent_watch", str(os.getpid()), sys.argv[1]])
    print(child.pid, flush=True)
    time.sleep(600)
""")


@pytest.fixture
def env(tmp_path: Path) -> dict:
    for name, text in MODULES.items():
        (tmp_path / name).write_text(text)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}


def gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize(("module", "within_s"), [("polite", 5), ("stubborn", 5 + parent_watch.GRACE_SECONDS)])
def test_the_child_ends_after_its_parent_is_sigkilled(env, tmp_path, module, within_s):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, module], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    try:
        time.sleep(1.5)  # the module is up and the watcher has looked at least once
        assert not gone(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + within_s
        while not gone(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gone(child), f"{module} still runs {within_s} s after its parent was SIGKILLed"
    finally:
        if not gone(child):
            child.kill()


def test_the_module_runs_as_main_with_its_arguments_and_exit_status(env, tmp_path):
    command = [sys.executable, "-m", "reinflow.run.parent_watch", str(os.getpid()), "exits_three", "a", "--b"]
    assert subprocess.run(command, cwd=tmp_path, env=env, timeout=60).returncode == 3


def test_only_python_m_commands_are_wrapped():
    assert parent_watch.command(["py", "-m", "uvicorn", "--port", "1"], 42) == [
        "py", "-m", "reinflow.run.parent_watch", "42", "uvicorn", "--port", "1"]
    assert parent_watch.command(["py", "script.py"], 42) == ["py", "script.py"]


def test_prefect_sees_a_subprocess_module_whose_popen_runs_python_m_under_the_watcher(monkeypatch):
    from cli.children import ParentWatchedSubprocess

    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda args, *more, **options: started.append((args, options)))
    shim = ParentWatchedSubprocess(parent=4242)
    shim.Popen(["py", "-m", "uvicorn", "--factory", "x:y"], env={"A": "1"})
    assert started == [(["py", "-m", "reinflow.run.parent_watch", "4242", "uvicorn", "--factory", "x:y"], {"env": {"A": "1"}})]
    assert shim.TimeoutExpired is subprocess.TimeoutExpired and shim.PIPE == subprocess.PIPE


RELEASING_PARENT = textwrap.dedent("""
    import os, subprocess, sys, time
    from reinflow.run import parent_watch
    child = subprocess.Popen(parent_watch.command([sys.executable, "-m", sys.argv[1]], os.getpid()))
    print(child.pid, flush=True)
    time.sleep(1.5)  # the watcher is up
    assert parent_watch.watched_parent(["x", "-m", parent_watch.MODULE, str(os.getpid()), sys.argv[1]]) == os.getpid()
    parent_watch.release(child.pid)
    time.sleep(0.5)
    os.kill(os.getpid(), 9)  # as SIGKILLed as it gets: the released child stays
""")


def test_a_released_child_outlives_its_parent(env, tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", RELEASING_PARENT, "polite"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    try:
        assert parent.wait(timeout=60) == -signal.SIGKILL
        time.sleep(2 * parent_watch.POLL_SECONDS + 2)
        assert not gone(child), "a released child ended with its parent"
    finally:
        if not gone(child):
            child.kill()


def test_watched_parent_reads_only_watched_command_lines():
    assert parent_watch.watched_parent(parent_watch.command(["py", "-m", "reinflow.logview", "--x"], 42)) == 42
    assert parent_watch.watched_parent(["py", "-m", "reinflow.logview", "42"]) is None
    assert parent_watch.watched_parent(["py"]) is None
