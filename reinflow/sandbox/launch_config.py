"""What the launcher (process A) is told: the JSON config that :data:`~reinflow.sandbox.launcher.LAUNCHER_SOURCE`
reads from its argv, built from a run's limits, isolation, working directory and uid.

The launcher runs in a fresh interpreter that imports nothing of reinflow, so everything it needs
(namespace flags, mounts, resource limits, the code's argv and environment) is decided here, in the
trainer, as plain JSON-able data.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

from reinflow.sandbox.limits import SandboxIsolation, SandboxLimits

__all__ = ["exposed_paths", "launcher_config", "real_interpreter"]

NICE = 10
"""The code runs at this nice level, so it yields the CPU to the trainer."""

SCRATCH_DIRS = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock"]
"""World-writable by convention: with a private tmpfs, each is bound onto the run's working directory."""

_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_CLONE_NEWPID = 0x20000000


def real_interpreter() -> str:
    """The real interpreter binary (a venv's ``bin/python`` is a symlink to it)."""
    return os.path.realpath(sys.executable)


def exposed_paths() -> list[str]:
    """The interpreter's folders, made reachable for the run's uid wherever they are (the launcher
    lays a tmpfs over their first non-traversable ancestor, holding bind mounts of just these)."""
    return sorted({sys.base_prefix, os.path.dirname(real_interpreter())})


def launcher_config(workdir: Path, uid: int | None, limits: SandboxLimits, isolation: SandboxIsolation) -> dict:
    """Everything the launcher needs, as JSON-able data."""
    cwd = "/tmp" if isolation.private_tmp else str(workdir)
    interpreter = real_interpreter()
    return {
        "unshare_flags": _unshare_flags(isolation),
        "private_tmp": isolation.private_tmp,
        "pid_namespace": isolation.pid_namespace,
        "kill_all": isolation.drops_privileges or isolation.pid_namespace,
        "workdir": str(workdir),
        "expose": exposed_paths(),
        "scratch_dirs": SCRATCH_DIRS,
        "nice": NICE,
        "tmpfs_options": f"size={limits.workdir_bytes},nr_inodes=4096,mode=0700"
        + (f",uid={uid},gid={uid}" if uid is not None else ""),
        "rlimits": _rlimits(limits),
        "uid": uid,
        "parent_pid": os.getpid(),
        "cwd": cwd,
        "argv": [interpreter, "-I", "-S", "-B", "-u", "main.py"],
        "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": cwd, "TMPDIR": cwd},
    }


def _rlimits(limits: SandboxLimits) -> list[tuple[int, int, int]]:
    """``(resource, soft, hard)`` triples the reaper sets before it drops to the run's uid."""
    return [
        (resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1),
        (resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes),
        (resource.RLIMIT_NPROC, limits.max_processes + 1, limits.max_processes + 1),  # + the reaper
        (resource.RLIMIT_FSIZE, limits.file_size_bytes, limits.file_size_bytes),
        (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        (resource.RLIMIT_CORE, 0, 0),
    ]


def _unshare_flags(isolation: SandboxIsolation) -> int:
    """The ``unshare(2)`` flags of ``isolation``; without root the network needs a user namespace too."""
    flags = _CLONE_NEWNS | _CLONE_NEWIPC if isolation.private_tmp or isolation.pid_namespace else 0
    if isolation.pid_namespace:
        flags |= _CLONE_NEWPID
    if isolation.network_isolated:
        flags |= _CLONE_NEWNET if isolation.drops_privileges else _CLONE_NEWUSER | _CLONE_NEWNET
    return flags
