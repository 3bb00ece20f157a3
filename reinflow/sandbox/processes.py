"""The sandbox's per-run uids and its process sweeps: finding and killing every process of a run by
uid (through a pidfd, so a recycled pid is never hit)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

from reinflow.errors import SandboxUnavailableError

UID_BASE = 2**30
UID_SLOTS = 256


class UidPool:
    """Per-run uids, unique among the live runs on this host: ``2**30 + pid*256 + slot``.

    Slots are handed out round-robin, so a uid is reused as late as possible (zombies that a
    non-reaping host init leaves behind still count towards their uid's RLIMIT_NPROC).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: set[int] = set()
        self._next = 0

    def acquire(self) -> int:
        """A uid no other live run on this host uses; raises when 256 runs of this process are live."""
        with self._lock:
            order = [(self._next + i) % UID_SLOTS for i in range(UID_SLOTS)]
            free = [slot for slot in order if slot not in self._used]
            if not free:
                raise SandboxUnavailableError(f"more than {UID_SLOTS} concurrent sandbox runs in one process")
            self._used.add(free[0])
            self._next = free[0] + 1
        return UID_BASE + os.getpid() * UID_SLOTS + free[0]

    def release(self, uid: int) -> None:
        """Give a uid back once none of its processes is alive."""
        with self._lock:
            self._used.discard((uid - UID_BASE) % UID_SLOTS)


UIDS = UidPool()


def live_pids_of_uid(uid: int) -> list[int]:
    """Pids of the host's live (not zombie) processes whose real uid is ``uid``."""
    return [pid for pid in _all_pids() if _live_status(pid).get("Uid", "").split()[:1] == [str(uid)]]


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _live_status(pid: int) -> dict[str, str]:
    """``/proc/<pid>/status`` as a dict; empty if the process is gone or a zombie."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        text = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {} if fields["State"].split()[0] in ("Z", "X") else fields
    return {}


def kill_uid(uid: int, rounds: int = 1000) -> None:
    """SIGKILL every process of ``uid`` until none is left (forks racing the sweep are caught later)."""
    for _ in range(rounds):
        pids = live_pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            kill_if(pid, "Uid", uid)
        time.sleep(0.001)
    raise SandboxUnavailableError(f"processes of sandbox uid {uid} survive SIGKILL: {live_pids_of_uid(uid)}")


def kill_children(parent_pid: int) -> None:
    """SIGKILL the live children of ``parent_pid`` (the launcher's only child is the reaper)."""
    children = Path(f"/proc/{parent_pid}/task/{parent_pid}/children")
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for pid in children.read_text().split():
            kill_if(int(pid), "PPid", parent_pid)


def kill_if(pid: int, status_field: str, expected: int) -> None:
    """SIGKILL ``pid`` through a pidfd if its status field (``Uid``, ``PPid``) still starts with
    ``expected`` once the pidfd pins it, so a recycled pid is never hit."""
    with contextlib.suppress(ProcessLookupError):
        pidfd = os.pidfd_open(pid)
        try:
            if _live_status(pid).get(status_field, "").split()[:1] == [str(expected)]:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        finally:
            os.close(pidfd)
