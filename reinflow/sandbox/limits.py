"""What constrains one sandbox run: the resource limits it may use and the OS protections it gets.

:class:`SandboxLimits` is what a caller passes (its defaults suit one tool call of an agent
episode); :class:`SandboxIsolation` is what :func:`reinflow.sandbox.runner.probe_isolation` found
this machine allows. Both are frozen pydantic models, so a run can never change them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MIB", "SandboxIsolation", "SandboxLimits"]

MIB = 1024 * 1024


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
    """Which OS protections a run used (see :func:`reinflow.sandbox.runner.probe_isolation`)."""

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
