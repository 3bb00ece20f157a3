"""The fields of a process's ``/proc/<pid>/stat`` line: the one parse that the memory figures (a
process's parent) and a run's owner check (its start time, whether it is a zombie) share.

Field 2, the command name, is in parentheses and may hold spaces or ``)``, so the fields are split
after the line's last ``)``. Linux only: elsewhere there is no file to read and the answer is None.
"""

from __future__ import annotations

from pathlib import Path

STATE, PARENT_PID, START_TICKS = 0, 1, 19
"""Indices into ``stat_fields``' list for the line's fields 3 (the state letter), 4 (the parent's
pid) and 22 (the start time in clock ticks after boot)."""


def stat_fields(pid: int | str, proc: Path = Path("/proc")) -> list[str] | None:
    """The fields of ``proc/<pid>/stat`` from field 3 (the state) on, or None where the process (or
    ``/proc``) is not there to read."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()
