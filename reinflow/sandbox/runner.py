"""Run model-written Python in a locked-down child process (the `execute_python_code` tool).

Model-written code never runs in the trainer's process. :func:`run_python` (and its asyncio twin
:func:`run_python_async`, which runs many calls concurrently on one event loop, without threads)
writes the code to ``main.py`` in a fresh working directory and starts three processes:

* **A, the launcher** (``python -I -S -c LAUNCHER_SOURCE``, the trainer's uid, a new session). It creates
  the namespaces, mounts the private filesystem, forks B, waits, and exits with the code's status
  (dying of the same signal when the code died of one). It stays out of reach of the code.
* **B, the reaper**: pid 1 of the run's own PID namespace. It mounts a fresh ``/proc``, sets the
  resource limits and ``PR_SET_NO_NEW_PRIVS``, drops to the run's uid, forks C, reaps every orphan,
  and once C has exited it SIGKILLs whatever C left behind, reaps it, and reports C's status to A.
* **C, the code**: ``execve`` of the interpreter (``-I -S -B -u main.py``) with an environment built
  from scratch (``PATH``, ``LANG``, ``HOME``, ``TMPDIR``: no secrets) and stdin at EOF.

What locks C down (root; see :func:`probe_isolation` for other users):

1. **A per-run uid/gid** ``2**30 + pid*256 + slot`` (no passwd entry needed), unique among the live
   runs on the host: no capabilities, root-only files unreadable, project files unwritable, the
   trainer and other runs cannot be signalled or traced, ``RLIMIT_NPROC`` counts only this run's
   tasks, and every process of the run can be found by uid and killed.
2. **Namespaces**: network (empty; even ``127.0.0.1`` is unreachable), PID (the code sees and can
   name only its own processes, all of which die when the run ends), mount and IPC. In the mount
   namespace a size-capped tmpfs is mounted on the working directory and bound onto ``/tmp``,
   ``/var/tmp``, ``/dev/shm`` and ``/run/lock``, so every scratch write is private and vanishes with
   the run; and
   the interpreter's prefix is bind-mounted where a non-traversable ancestor (``/root`` for a pyenv
   Python) would hide it from the run's uid.
3. **Resource limits**: ``RLIMIT_CPU`` (SIGXCPU, then SIGKILL one second later), ``RLIMIT_AS``,
   ``RLIMIT_NPROC``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE`` and ``RLIMIT_CORE=0``.
4. **Parent-death signal**: A and B die with SIGKILL if their parent dies. The code runs at nice 10.

The trainer reads stdout and stderr in chunks from non-blocking pipes, keeps at most
``output_bytes`` of each and kills the run the moment either passes it. At the wall-clock limit, on
overflow or on cancellation it SIGKILLs B through a pidfd (the kernel then kills and reaps the whole
PID namespace), lets A reap B and exit, reaps A and deletes the working directory. Without a PID
namespace it instead sweeps ``/proc`` for the run's uid after every run. There is no seccomp filter
and no cgroup. ``docs/SANDBOX.md`` says what is promised, what is not, and shows the battery of
hostile programs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import resource
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from reinflow.errors import SandboxUnavailableError
from reinflow.sandbox.launcher import LAUNCHER_SOURCE
from reinflow.sandbox.processes import UIDS, kill_children, kill_uid

__all__ = [
    "SandboxIsolation",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailableError",
    "format_tool_output",
    "probe_isolation",
    "run_python",
    "run_python_async",
]

MIB = 1024 * 1024
_DRAIN_SECONDS = 1.0
_READ_CHUNK_BYTES = 65536
_NICE = 10  # the code yields the CPU to the trainer
_SCRATCH_DIRS = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock"]  # world-writable by convention

_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_CLONE_NEWPID = 0x20000000


class SandboxLimits(BaseModel):
    """What one run of model-written code may use. The defaults suit a tool call of an agent episode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wall_seconds: float = Field(
        10.0, gt=0, le=3600, description="Wall-clock limit; then the whole run is killed (SIGKILL)."
    )
    cpu_seconds: int = Field(
        10, ge=1, le=3600, description="CPU time of each process (RLIMIT_CPU): SIGXCPU, then SIGKILL 1 s later."
    )
    memory_bytes: int = Field(
        512 * MIB,
        ge=64 * MIB,
        description="Address space of each process (RLIMIT_AS). Per process, not per run: a run may "
        "hold up to max_processes × memory_bytes (no cgroup is used).",
    )
    max_processes: int = Field(
        16,
        ge=1,
        le=4096,
        description="Tasks (processes and threads) of the run (RLIMIT_NPROC). Exact with a per-run uid "
        "(root); without root it counts all the user's tasks, so forks may fail early.",
    )
    output_bytes: int = Field(
        64 * 1024, ge=256, description="Cap on captured stdout and on stderr, each; past it the run is killed."
    )
    file_size_bytes: int = Field(
        16 * MIB, ge=0, description="Largest file the code may write (RLIMIT_FSIZE): EFBIG past it."
    )
    workdir_bytes: int = Field(
        64 * MIB,
        ge=MIB,
        description="Size of the private tmpfs that is the working directory and also /tmp, /var/tmp, "
        "/dev/shm and /run/lock (when private_tmp is available): ENOSPC past it. It is RAM, freed when "
        "the run ends.",
    )
    open_files: int = Field(64, ge=16, le=65536, description="Open file descriptors per process (RLIMIT_NOFILE).")


class SandboxIsolation(BaseModel):
    """Which OS protections a run used (see :func:`probe_isolation`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    drops_privileges: bool = Field(description="Runs as a per-run uid/gid with no capabilities (needs root).")
    network_isolated: bool = Field(description="Runs in an empty network namespace: no network at all.")
    private_tmp: bool = Field(
        description="Private mount + IPC namespace: the working directory, /tmp, /var/tmp, /dev/shm and "
        "/run/lock are one private size-capped tmpfs (needs root)."
    )
    pid_namespace: bool = Field(
        description="Own PID namespace: /proc shows only the run's processes, which cannot see or name "
        "the trainer's, and all of them are killed and reaped when the code's main process ends."
    )


class SandboxResult(BaseModel):
    """What a run produced and how it ended."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stdout: str = Field(description="Captured stdout, UTF-8 decoded with replacement, at most output_bytes.")
    stderr: str = Field(description="Captured stderr, same rules.")
    exit_code: int | None = Field(description="The exit status; None when the process died of a signal.")
    timed_out: bool = Field(description="The wall-clock limit was hit and the run was killed.")
    killed_signal: int | None = Field(description="The signal that ended the main process, if any.")
    truncated: bool = Field(description="Output passed output_bytes; the run was killed and the rest dropped.")
    wall_seconds: float = Field(description="Wall time of the whole call, cleanup included.")
    sandbox_uid: int | None = Field(description="The uid the code ran as; None: the trainer's own uid.")
    isolation: SandboxIsolation = Field(description="The OS protections this run used.")


# ----------------------------------------------------------------------------- isolation


def _interpreter() -> str:
    """The real interpreter binary (a venv's ``bin/python`` is a symlink to it)."""
    return os.path.realpath(sys.executable)


def _candidates() -> list[SandboxIsolation]:
    """The isolation levels to try, strongest first. As root, all of them drop privileges."""
    if os.geteuid() == 0:
        return [
            SandboxIsolation(drops_privileges=True, network_isolated=True, private_tmp=True, pid_namespace=True),
            SandboxIsolation(drops_privileges=True, network_isolated=True, private_tmp=True, pid_namespace=False),
            SandboxIsolation(drops_privileges=True, network_isolated=False, private_tmp=False, pid_namespace=False),
        ]
    return [
        SandboxIsolation(drops_privileges=False, network_isolated=True, private_tmp=False, pid_namespace=False),
        SandboxIsolation(drops_privileges=False, network_isolated=False, private_tmp=False, pid_namespace=False),
    ]


@functools.cache
def probe_isolation() -> SandboxIsolation:
    """The strongest isolation that works on this machine, found once per process (~0.1–0.5 s).

    Each candidate runs ``print('ok')``; the first that prints ``ok`` wins. Raises
    :class:`SandboxUnavailableError` when none works (as root this means privileges could not be
    dropped, and model code is never run as root).
    """
    failures = []
    for isolation in _candidates():
        result = run_python("print('ok')", SandboxLimits(), isolation=isolation)
        if result.exit_code == 0 and result.stdout == "ok\n":
            return isolation
        failures.append(f"{isolation}: exit {result.exit_code}, {result.stderr.strip()[-300:]}")
    raise SandboxUnavailableError("no sandbox isolation works here:\n" + "\n".join(failures))


def _rlimits(limits: SandboxLimits) -> list[tuple[int, int, int]]:
    return [
        (resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1),
        (resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes),
        (resource.RLIMIT_NPROC, limits.max_processes + 1, limits.max_processes + 1),  # + the reaper
        (resource.RLIMIT_FSIZE, limits.file_size_bytes, limits.file_size_bytes),
        (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        (resource.RLIMIT_CORE, 0, 0),
    ]


def _unshare_flags(isolation: SandboxIsolation) -> int:
    flags = _CLONE_NEWNS | _CLONE_NEWIPC if isolation.private_tmp or isolation.pid_namespace else 0
    if isolation.pid_namespace:
        flags |= _CLONE_NEWPID
    if isolation.network_isolated:
        flags |= _CLONE_NEWNET if isolation.drops_privileges else _CLONE_NEWUSER | _CLONE_NEWNET
    return flags


def _launcher_config(workdir: Path, uid: int | None, limits: SandboxLimits, isolation: SandboxIsolation) -> dict:
    """Everything the launcher needs, as JSON-able data."""
    cwd = "/tmp" if isolation.private_tmp else str(workdir)
    interpreter = _interpreter()
    return {
        "unshare_flags": _unshare_flags(isolation),
        "private_tmp": isolation.private_tmp,
        "pid_namespace": isolation.pid_namespace,
        "kill_all": isolation.drops_privileges or isolation.pid_namespace,
        "workdir": str(workdir),
        "expose": sorted({sys.base_prefix, os.path.dirname(interpreter)}),
        "scratch_dirs": _SCRATCH_DIRS,
        "nice": _NICE,
        "tmpfs_options": f"size={limits.workdir_bytes},nr_inodes=4096,mode=0700"
        + (f",uid={uid},gid={uid}" if uid is not None else ""),
        "rlimits": _rlimits(limits),
        "uid": uid,
        "parent_pid": os.getpid(),
        "cwd": cwd,
        "argv": [interpreter, "-I", "-S", "-B", "-u", "main.py"],
        "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": cwd, "TMPDIR": cwd},
    }


# ----------------------------------------------------------------------------- one run


class _Capture:
    """Bytes of one stream, kept up to a cap; the rest is counted, not stored."""

    def __init__(self, cap_bytes: int) -> None:
        self.cap_bytes = cap_bytes
        self.chunks: list[bytes] = []
        self.kept_bytes = 0
        self.overflowed = False

    def add(self, data: bytes) -> None:
        room = self.cap_bytes - self.kept_bytes
        if len(data) > room:
            self.overflowed = True
            data = data[: max(room, 0)]
        self.chunks.append(data)
        self.kept_bytes += len(data)

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", errors="replace")


@dataclass
class _Run:
    """A started sandbox run: its process, pipes, pidfd and bookkeeping."""

    popen: subprocess.Popen
    workdir: Path
    pidfd: int
    uid: int | None
    isolation: SandboxIsolation
    started: float
    captures: dict[int, _Capture] = field(default_factory=dict)
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
            data = os.read(fd, _READ_CHUNK_BYTES)
            if data:
                self.captures[fd].add(data)
            else:
                self.open_pipes.discard(fd)

    def overflowed(self) -> bool:
        return any(capture.overflowed for capture in self.captures.values())

    def should_stop(self) -> bool:
        return self.exited or self.overflowed()

    def drained(self) -> bool:
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
        if not self.exited and not _readable(self.pidfd, _DRAIN_SECONDS):
            self.kill_group()
            self.kill_all()
        self.popen.wait()
        for fd in (*self.captures, self.pidfd):
            os.close(fd)
        shutil.rmtree(self.workdir)
        if self.uid is not None:
            UIDS.release(self.uid)

    def result(self, timed_out: bool) -> SandboxResult:
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


def _start(code: str, limits: SandboxLimits, isolation: SandboxIsolation) -> _Run:
    """Create the workdir, write ``main.py`` and start the launcher in a new session."""
    uid = UIDS.acquire() if isolation.drops_privileges else None
    workdir = Path(tempfile.mkdtemp(prefix=f"reinflow-sandbox-{os.getpid()}-"))
    (workdir / "main.py").write_text(code, encoding="utf-8")
    (workdir / "main.py").chmod(0o644)
    if uid is not None and not isolation.private_tmp:
        os.chown(workdir, uid, uid)
    config = _launcher_config(workdir, uid, limits, isolation)
    try:
        popen = subprocess.Popen(
            [_interpreter(), "-I", "-S", "-c", LAUNCHER_SOURCE, json.dumps(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            cwd=workdir,
            start_new_session=True,
        )
    except OSError:  # e.g. the trainer is out of fds or processes: undo, then re-raise
        shutil.rmtree(workdir)
        if uid is not None:
            UIDS.release(uid)
        raise
    run = _Run(popen, workdir, os.pidfd_open(popen.pid), uid, isolation, started=time.monotonic())
    for pipe in (popen.stdout, popen.stderr):
        fd = os.dup(pipe.fileno())
        pipe.close()
        os.set_blocking(fd, False)
        run.captures[fd] = _Capture(limits.output_bytes)
        run.open_pipes.add(fd)
    return run


# ----------------------------------------------------------------------------- drivers


def _pump_sync(run: _Run, until: Callable[[], bool], deadline: float) -> bool:
    """Handle fd events until ``until()`` holds (True) or the deadline passes (False)."""
    with selectors.DefaultSelector() as selector:
        registered: set[int] = set()
        while not until():
            _sync_registrations(selector, registered, run.watched_fds())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in selector.select(remaining):
                run.on_ready(key.fd)
    return True


def _sync_registrations(selector: selectors.BaseSelector, registered: set[int], wanted: set[int]) -> None:
    for fd in registered - wanted:
        selector.unregister(fd)
    for fd in wanted - registered:
        selector.register(fd, selectors.EVENT_READ)
    registered.clear()
    registered.update(wanted)


async def _pump_async(run: _Run, until: Callable[[], bool], deadline: float) -> bool:
    """The asyncio twin of :func:`_pump_sync`: fd readers on the running loop, no threads."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    registered: set[int] = set()

    def on_ready(fd: int) -> None:
        run.on_ready(fd)
        wake.set()

    try:
        while not until():
            wanted = run.watched_fds()
            for fd in registered - wanted:
                loop.remove_reader(fd)
            for fd in wanted - registered:
                loop.add_reader(fd, on_ready, fd)
            registered = set(wanted)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), remaining)
    finally:
        for fd in registered:
            loop.remove_reader(fd)
    return True


def _resolve(
    limits: SandboxLimits | None, isolation: SandboxIsolation | None
) -> tuple[SandboxLimits, SandboxIsolation]:
    """The given limits and isolation, or the defaults and the probed isolation."""
    return limits or SandboxLimits(), isolation or probe_isolation()


def run_python(
    code: str, limits: SandboxLimits | None = None, *, isolation: SandboxIsolation | None = None
) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a fresh sandbox and return what it printed and how it ended.

    Blocks until the run ends (at most ``limits.wall_seconds`` plus cleanup). ``isolation`` defaults
    to :func:`probe_isolation`; pass a weaker one only to test or demonstrate a fallback.
    """
    limits, isolation = _resolve(limits, isolation)
    run = _start(code, limits, isolation)
    try:
        finished = _pump_sync(run, run.should_stop, run.started + limits.wall_seconds)
        run.kill_all()
        _pump_sync(run, run.drained, time.monotonic() + _DRAIN_SECONDS)
    finally:
        run.close()
    return run.result(timed_out=not finished)


async def run_python_async(
    code: str, limits: SandboxLimits | None = None, *, isolation: SandboxIsolation | None = None
) -> SandboxResult:
    """:func:`run_python` on the running event loop: many runs proceed concurrently, without threads.

    Cancelling the awaiting task kills the run and cleans up before the cancellation propagates.
    """
    limits, isolation = _resolve(limits, isolation)
    run = _start(code, limits, isolation)
    try:
        finished = await _pump_async(run, run.should_stop, run.started + limits.wall_seconds)
        run.kill_all()
        await _pump_async(run, run.drained, time.monotonic() + _DRAIN_SECONDS)
    finally:
        run.close()
    return run.result(timed_out=not finished)


# ----------------------------------------------------------------------------- tool output

_SIGNAL_REASONS = {
    signal.SIGXCPU: "CPU time limit exceeded",
    signal.SIGXFSZ: "file size limit exceeded",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGABRT: "aborted",
    signal.SIGINT: "interrupted",
}


def format_tool_output(result: SandboxResult, stderr_tail_chars: int = 2000) -> str:
    """The text the agent sees: stdout, then the tail of stderr, then a note on how the run ended.

    >>> r = SandboxResult(stdout="5\\n", stderr="", exit_code=0, timed_out=False, killed_signal=None,
    ...                   truncated=False, wall_seconds=0.1, sandbox_uid=None,
    ...                   isolation=SandboxIsolation(drops_privileges=False, network_isolated=False,
    ...                                              private_tmp=False, pid_namespace=False))
    >>> format_tool_output(r)
    '5\\n'
    """
    sections = [result.stdout] if result.stdout else []
    if result.stderr:
        tail = result.stderr[-stderr_tail_chars:]
        cut = "…" if len(tail) < len(result.stderr) else ""
        sections.append(f"[stderr]\n{cut}{tail}")
    sections.extend(_notes(result))
    if not sections:
        sections.append("[no output: the code printed nothing; use print() to show values]")
    return "".join(section if section.endswith("\n") else section + "\n" for section in sections)


def _notes(result: SandboxResult) -> list[str]:
    """Bracketed lines that say why the run ended, when it did not simply exit 0."""
    notes = []
    if result.timed_out:
        notes.append(f"[timed out after {result.wall_seconds:.1f} s: the program was killed]")
    if result.truncated:
        notes.append("[output limit reached: the program was killed and the rest of its output dropped]")
    if result.killed_signal is not None and not (result.timed_out or result.truncated):
        name = signal.Signals(result.killed_signal).name
        notes.append(f"[the program died of {name}: {_SIGNAL_REASONS.get(result.killed_signal, 'killed')}]")
    if result.exit_code not in (0, None):
        notes.append(f"[exit code {result.exit_code}]")
    return notes
