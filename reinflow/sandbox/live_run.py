"""One started sandbox run: the launcher process, its output pipes, its pidfd and how it is ended.

:func:`start_run` writes ``main.py`` into a fresh working directory and starts the launcher (process
A, see :mod:`reinflow.sandbox.runner`) in a new session. The returned :class:`LiveRun` is then
driven by :mod:`reinflow.sandbox.pumps`: each readable fd is handed to :meth:`LiveRun.on_ready`,
which stores output up to the cap (:class:`Capture`) or records that the launcher exited. Whatever
happens, :meth:`LiveRun.close` kills what is left, reaps the launcher, closes the fds, deletes the
working directory and frees the uid; :meth:`LiveRun.result` then says how the run ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from reinflow.sandbox.launch_config import launcher_config, real_interpreter
from reinflow.sandbox.launcher import LAUNCHER_SOURCE
from reinflow.sandbox.limits import SandboxIsolation, SandboxLimits
from reinflow.sandbox.processes import UIDS, kill_children, kill_uid
from reinflow.sandbox.result import SandboxResult

__all__ = ["DRAIN_SECONDS", "Capture", "LiveRun", "start_run"]

DRAIN_SECONDS = 1.0
"""How long a killed run gets to close its pipes, and the launcher to exit, before harsher steps."""

READ_CHUNK_BYTES = 65536


class Capture:
    """Bytes of one stream, kept up to a cap; the rest is counted, not stored."""

    def __init__(self, cap_bytes: int) -> None:
        """An empty capture that keeps at most ``cap_bytes``."""
        self.cap_bytes = cap_bytes
        self.chunks: list[bytes] = []
        self.kept_bytes = 0
        self.overflowed = False

    def add(self, data: bytes) -> None:
        """Keep what fits under the cap; past it, drop the rest and mark the capture overflowed."""
        room = self.cap_bytes - self.kept_bytes
        if len(data) > room:
            self.overflowed = True
            data = data[: max(room, 0)]
        self.chunks.append(data)
        self.kept_bytes += len(data)

    def text(self) -> str:
        """What was kept, UTF-8 decoded with invalid bytes replaced."""
        return b"".join(self.chunks).decode("utf-8", errors="replace")


@dataclass
class LiveRun:
    """A started sandbox run: its process, pipes, pidfd and bookkeeping."""

    popen: subprocess.Popen
    workdir: Path
    pidfd: int
    uid: int | None
    isolation: SandboxIsolation
    started: float
    captures: dict[int, Capture] = field(default_factory=dict)
    open_pipes: set[int] = field(default_factory=set)
    exited: bool = False

    def watched_fds(self) -> set[int]:
        """Fds whose readability still matters: pipes before EOF, the pidfd before exit."""
        return self.open_pipes | (set() if self.exited else {self.pidfd})

    def on_ready(self, fd: int) -> None:
        """Handle one readable fd: record exit, or read one chunk (EOF closes the pipe)."""
        if fd == self.pidfd:
            self.exited = True
            return
        with contextlib.suppress(BlockingIOError):
            data = os.read(fd, READ_CHUNK_BYTES)
            if data:
                self.captures[fd].add(data)
            else:
                self.open_pipes.discard(fd)

    def overflowed(self) -> bool:
        """Whether stdout or stderr passed ``output_bytes``."""
        return any(capture.overflowed for capture in self.captures.values())

    def should_stop(self) -> bool:
        """The launcher exited, or the output passed its cap: time to end the run."""
        return self.exited or self.overflowed()

    def drained(self) -> bool:
        """The launcher exited and both pipes reached EOF: nothing more will arrive."""
        return self.exited and not self.open_pipes

    def kill_all(self) -> None:
        """SIGKILL everything the code started, sparing the launcher so it can reap and exit.

        With a PID namespace, killing the reaper (its init) makes the kernel kill and reap every
        process in it. Without one, a per-run uid lets a ``/proc`` sweep find every process of the
        run, ``setsid`` escapees included. Without either, the process group is all we can reach.
        Once the launcher has exited on its own in a PID namespace, nothing of the run is left.
        """
        if self.isolation.pid_namespace:
            if not self.exited:
                kill_children(self.popen.pid)
        elif self.uid is not None:
            kill_uid(self.uid)
        else:
            self.kill_group()

    def kill_group(self) -> None:
        """SIGKILL the launcher's process group (safe until the launcher is reaped: its pid is held)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def close(self) -> None:
        """Make sure nothing is left, reap the launcher, close fds, delete the workdir, free the uid."""
        self.kill_all()
        if not self.exited and not _readable(self.pidfd, DRAIN_SECONDS):
            self.kill_group()
            self.kill_all()
        self.popen.wait()
        for fd in (*self.captures, self.pidfd):
            os.close(fd)
        shutil.rmtree(self.workdir)
        if self.uid is not None:
            UIDS.release(self.uid)

    def result(self, timed_out: bool) -> SandboxResult:
        """How the closed run ended: the launcher's status mirrors the code's (signal included)."""
        code = self.popen.returncode
        stdout, stderr = self.captures.values()
        return SandboxResult(
            stdout=stdout.text(),
            stderr=stderr.text(),
            exit_code=code if code >= 0 else None,
            timed_out=timed_out,
            killed_signal=-code if code < 0 else None,
            truncated=self.overflowed(),
            wall_seconds=round(time.monotonic() - self.started, 3),
            sandbox_uid=self.uid,
            isolation=self.isolation,
        )


def _readable(fd: int, timeout_seconds: float) -> bool:
    """Wait until ``fd`` is readable (a pidfd: the process exited) or the timeout passes."""
    return bool(select.select([fd], [], [], timeout_seconds)[0])


def start_run(code: str, limits: SandboxLimits, isolation: SandboxIsolation) -> LiveRun:
    """Create the workdir, write ``main.py`` and start the launcher in a new session."""
    uid = UIDS.acquire() if isolation.drops_privileges else None
    workdir = Path(tempfile.mkdtemp(prefix=f"reinflow-sandbox-{os.getpid()}-"))
    (workdir / "main.py").write_text(code, encoding="utf-8")
    (workdir / "main.py").chmod(0o644)
    if uid is not None and not isolation.private_tmp:
        os.chown(workdir, uid, uid)
    try:
        popen = _launch(workdir, launcher_config(workdir, uid, limits, isolation))
    except OSError:  # e.g. the trainer is out of fds or processes: undo, then re-raise
        shutil.rmtree(workdir)
        if uid is not None:
            UIDS.release(uid)
        raise
    run = LiveRun(popen, workdir, os.pidfd_open(popen.pid), uid, isolation, started=time.monotonic())
    for pipe in (popen.stdout, popen.stderr):
        fd = os.dup(pipe.fileno())
        pipe.close()
        os.set_blocking(fd, False)
        run.captures[fd] = Capture(limits.output_bytes)
        run.open_pipes.add(fd)
    return run


def _launch(workdir: Path, config: dict) -> subprocess.Popen:
    """Start the launcher in ``workdir``, in a new session, with a minimal environment and stdin at EOF."""
    return subprocess.Popen(
        [real_interpreter(), "-I", "-S", "-c", LAUNCHER_SOURCE, json.dumps(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        cwd=workdir,
        start_new_session=True,
    )
