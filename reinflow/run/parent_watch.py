"""Run a Python module as a child process that ends when its parent process ends, however it ends.

``python -m reinflow.run.parent_watch <parent pid> <module> [args...]`` runs ``python -m <module>
[args...]`` in this same process (``runpy``: same pid, same signals), plus a daemon thread that
checks every :data:`POLL_SECONDS` whether the process is still the child of ``<parent pid>``. When
the parent dies, even of SIGKILL, the kernel hands its children to another parent (init or a
subreaper): the thread then sends SIGTERM to this process (the module's own clean shutdown, e.g.
uvicorn's) and, if it is still there :data:`GRACE_SECONDS` later, exits outright.

``prctl(PR_SET_PDEATHSIG)`` would be shorter, but it fires when the *thread* that started the child
ends, not the process, and a library may start its child from a short-lived thread.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time

POLL_SECONDS = 0.5
"""How often the watcher asks who the parent is."""
GRACE_SECONDS = 5.0
"""How long the module may take to shut down after SIGTERM before the process exits outright."""


def command(args: list[str], parent: int) -> list[str]:
    """``[python, "-m", module, *rest]`` rewritten to run under the watcher of ``parent``; any other
    command is returned unchanged (only ``-m`` commands can be wrapped this way)."""
    if len(args) < 3 or args[1] != "-m":
        return list(args)
    return [args[0], "-m", __name__, str(parent), *args[2:]]


def watch(parent: int, poll_seconds: float = POLL_SECONDS, grace_seconds: float = GRACE_SECONDS) -> None:
    """Block until this process is no longer ``parent``'s child, then end it (SIGTERM, then exit)."""
    while os.getppid() == parent:
        time.sleep(poll_seconds)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_seconds)
    os._exit(1)


def main(argv: list[str]) -> None:
    """``<parent pid> <module> [args...]``: watch the parent, run the module as ``__main__``."""
    parent, module, *rest = argv
    threading.Thread(target=watch, args=(int(parent),), name="parent-watch", daemon=True).start()
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
