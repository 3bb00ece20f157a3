"""What the model's code sees of a host path: the same file, no such path, or a door it cannot pass.

Three things decide it, all set up by the launcher (``launcher.py``) before the code starts:

- **the private scratch space**: with ``private_tmp``, the run's own tmpfs is bound onto ``/tmp``,
  ``/var/tmp``, ``/dev/shm`` and ``/run/lock``; a host path under one of them does not exist for
  the code (a checkout under ``/tmp`` included);
- **the interpreter's way in**: with a mount namespace, the first non-traversable ancestor of the
  interpreter's folders (``/root`` for a pyenv Python under ``/root``) is covered by a small tmpfs
  holding only bind mounts of those folders; anything else under that ancestor does not exist for
  the code (a checkout under ``/root`` next to such a Python included);
- **host permissions, as another user**: with ``drops_privileges`` the code is a per-run uid in no
  group, so only the "other" permission bits apply: a path with an ancestor lacking ``o+x`` (a home
  folder of mode 700 or 750) cannot be reached (PermissionError), and a reachable file is readable
  only where it is world-readable, writable only where it is world-writable.

The launcher runs in a fresh interpreter that imports nothing of reinflow, so it repeats the
"first non-traversable ancestor" rule (:func:`first_blocked_ancestor`) in its own source.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from reinflow.sandbox.launch_config import SCRATCH_DIRS, exposed_paths
from reinflow.sandbox.limits import SandboxIsolation

__all__ = ["HostView", "first_blocked_ancestor", "host_path_view"]

HostView = Literal["visible", "hidden", "unreachable"]
"""``visible``: the host's own file, host permissions as another user apply; ``hidden``: no such
path (FileNotFoundError); ``unreachable``: an ancestor the code may not traverse (PermissionError)."""


def first_blocked_ancestor(path: str) -> str | None:
    """The first proper ancestor of the absolute ``path`` (``/`` excluded) that others may not
    traverse (no ``o+x``), or None; the launcher's rule, stat'ed on the host."""
    parts = path.strip("/").split("/")
    ancestors = ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]
    return next((a for a in ancestors if os.path.isdir(a) and not os.stat(a).st_mode & 1), None)


def host_path_view(path: Path | str, isolation: SandboxIsolation) -> HostView:
    """How the model's code, run under ``isolation``, sees the host path ``path``."""
    real = os.path.realpath(path)
    if isolation.private_tmp and any(_under(real, os.path.realpath(d)) for d in SCRATCH_DIRS if os.path.isdir(d)):
        return "hidden"
    if isolation.private_tmp or isolation.pid_namespace:  # a mount namespace: the interpreter is exposed
        exposed = exposed_paths()
        covers = {blocked for blocked in map(first_blocked_ancestor, exposed) if blocked}
        if any(_under(real, top) for top in covers) and not any(_under(real, e) for e in exposed):
            return "hidden"
    if isolation.drops_privileges and first_blocked_ancestor(real):
        return "unreachable"
    return "visible"


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")
