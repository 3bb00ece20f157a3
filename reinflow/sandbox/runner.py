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

This module is the public entry point; the pieces live beside it: :mod:`reinflow.sandbox.limits`
(what a run may use), :mod:`reinflow.sandbox.launch_config` (what A is told),
:mod:`reinflow.sandbox.live_run` (one started run: pipes, pidfd, kill and cleanup),
:mod:`reinflow.sandbox.pumps` (the blocking and asyncio drivers), :mod:`reinflow.sandbox.result`
and :mod:`reinflow.sandbox.tool_output` (what the agent sees).
"""

from __future__ import annotations

import functools
import os
import time

from reinflow.errors import SandboxUnavailableError
from reinflow.sandbox.limits import SandboxIsolation, SandboxLimits
from reinflow.sandbox.live_run import DRAIN_SECONDS, start_run
from reinflow.sandbox.pumps import pump_async, pump_sync
from reinflow.sandbox.result import SandboxResult

__all__ = [
    "SandboxIsolation",
    "SandboxLimits",
    "SandboxResult",
    "probe_isolation",
    "run_python",
    "run_python_async",
]


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
    run = start_run(code, limits, isolation)
    try:
        finished = pump_sync(run, run.should_stop, run.started + limits.wall_seconds)
        run.kill_all()
        pump_sync(run, run.drained, time.monotonic() + DRAIN_SECONDS)
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
    run = start_run(code, limits, isolation)
    try:
        finished = await pump_async(run, run.should_stop, run.started + limits.wall_seconds)
        run.kill_all()
        await pump_async(run, run.drained, time.monotonic() + DRAIN_SECONDS)
    finally:
        run.close()
    return run.result(timed_out=not finished)
