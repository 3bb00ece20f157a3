"""Pid files of the background processes reinflow starts, so ``reinflow stop`` stops only those.

Each process registers itself in ``<project root>/.reinflow/pids/<name>.pid``: a JSON record of its
pid, its command line and its start time (as the OS reports them), and whatever the process wants
to tell (a logview's URL). A pid is only a number the OS hands out again, so before signalling,
:func:`stop` checks that the live process with that pid still has the recorded command line and
start time; a record that no longer matches (the process ended, the pid was reused) is removed and
reported as stale, and nothing is signalled.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

PID_DIR = Path(".reinflow") / "pids"
TERM_WAIT_SECONDS = 5.0
"""How long :func:`stop` waits after SIGTERM before it sends SIGKILL."""


@dataclass(frozen=True)
class PidRecord:
    """One registered process."""

    name: str
    pid: int
    cmdline: list[str]
    started: float  # the process's creation time, as psutil reports it
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StopResult:
    """What :func:`stop` did with one record: ``terminated``, ``killed`` or ``stale``."""

    record: PidRecord
    outcome: str


def pid_dir(project_root: Path) -> Path:
    """Where the project's pid files live."""
    return project_root / PID_DIR


def register(project_root: Path, name: str, info: dict[str, Any] | None = None, pid: int | None = None) -> Path:
    """Record process ``pid`` (default: this one) as ``name``; returns the pid file (written atomically)."""
    process = psutil.Process(pid or os.getpid())
    record = PidRecord(name, process.pid, process.cmdline(), process.create_time(), dict(info or {}))
    folder = pid_dir(project_root)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pid"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(asdict(record)))
    os.replace(partial, path)
    return path


def unregister(project_root: Path, name: str, pid: int | None = None) -> None:
    """Remove ``name``'s pid file if it still belongs to ``pid`` (default: this process)."""
    path = pid_dir(project_root) / f"{name}.pid"
    record = _read(path)
    if record is not None and record.pid == (pid or os.getpid()):
        path.unlink(missing_ok=True)


def records(project_root: Path) -> list[PidRecord]:
    """Every readable record, by name; an unreadable pid file is removed (it names no process)."""
    found = []
    for path in sorted(pid_dir(project_root).glob("*.pid")):
        record = _read(path)
        if record is None:
            path.unlink(missing_ok=True)
        else:
            found.append(record)
    return found


def sweep(project_root: Path) -> list[PidRecord]:
    """Remove the pid files whose process has ended (or whose pid now runs something else), signalling
    nothing; returns their records. Run before starting a background process."""
    stale = [record for record in records(project_root) if not is_alive(record)]
    for record in stale:
        (pid_dir(project_root) / f"{record.name}.pid").unlink(missing_ok=True)
    return stale


def is_alive(record: PidRecord) -> bool:
    """True when the record's pid is running the recorded command, started at the recorded time."""
    try:
        process = psutil.Process(record.pid)
        same = process.cmdline() == record.cmdline and abs(process.create_time() - record.started) < 0.01
        return same and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def stop(project_root: Path, names: list[str] | None = None, wait_seconds: float = TERM_WAIT_SECONDS) -> list[StopResult]:
    """SIGTERM each registered process (all, or those in ``names``), SIGKILL it after ``wait_seconds``
    if it is still there, and remove its pid file. Records that no longer match a live process are
    removed without signalling anything."""
    results = []
    for record in records(project_root):
        if names and record.name not in names:
            continue
        outcome = _terminate(record, wait_seconds) if is_alive(record) else "stale"
        (pid_dir(project_root) / f"{record.name}.pid").unlink(missing_ok=True)
        results.append(StopResult(record, outcome))
    return results


def _terminate(record: PidRecord, wait_seconds: float) -> str:
    process = psutil.Process(record.pid)
    _signal(process.terminate)
    if _wait_gone(process, wait_seconds):
        return "terminated"
    _signal(process.kill)
    _wait_gone(process, wait_seconds)
    return "killed"


def _signal(send: Callable[[], None]) -> None:
    try:
        send()
    except psutil.NoSuchProcess:  # it ended between the check and the signal
        pass


def _wait_gone(process: psutil.Process, seconds: float) -> bool:
    """Wait until the process has exited. An exited child of another process stays a zombie until its
    parent reaps it (psutil's own ``wait`` would wait for that), so a zombie counts as gone."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _read(path: Path) -> PidRecord | None:
    try:
        return PidRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def wait_for(project_root: Path, name: str, child: subprocess.Popen, timeout_seconds: float) -> PidRecord | None:
    """Wait until the ``child`` we started has registered as ``name``; None if it exited or took too long."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline and child.poll() is None:
        record = _read(pid_dir(project_root) / f"{name}.pid")
        if record is not None and record.pid == child.pid:
            return record
        time.sleep(0.1)
    return None
