"""Which process owns a run, and whether it still runs: what turns a stale "running" into "crashed".

A run records its owner in ``run.json`` when it starts or resumes: the host name, the pid and the
process's start time as the kernel counts it (``/proc/<pid>/stat``, field 22: clock ticks after
boot). A pid alone is a number the kernel hands out again; the pair (pid, start time) names one
process for as long as the machine is up. A SIGKILLed run never writes its status again, so a
reader on the same host that finds no process with that pair knows the owner is gone.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from reinflow.tracking.process_stat import START_TICKS, STATE, stat_fields


def process_start_ticks(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks after boot, or None where there is no such
    process (or no ``/proc`` to ask)."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[START_TICKS])


def current_owner() -> dict[str, Any]:
    """This process, as ``run.json`` records an owner."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start_ticks": process_start_ticks(os.getpid())}


def owner_gone(owner: dict[str, Any] | None) -> bool:
    """True only where ``owner`` is known to have ended: it ran on this host and no process with its
    pid and start time exists. An owner on another host, or none recorded (a run from before
    owners were recorded), counts as not gone: nothing here can tell."""
    if not owner or owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    if not Path("/proc/self/stat").exists():  # no /proc: only whether the pid exists
        return not pid_exists(owner["pid"])
    ticks = process_start_ticks(owner["pid"])
    if ticks is None:
        return True
    if ticks != owner.get("start_ticks"):
        return True  # the pid was handed to another process
    return zombie(owner["pid"])


def pid_exists(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def zombie(pid: int) -> bool:
    """Whether ``pid`` has ended and only waits for its parent to collect it."""
    fields = stat_fields(pid)
    return fields is None or fields[STATE] in ("Z", "X")
