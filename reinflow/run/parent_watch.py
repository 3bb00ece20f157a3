"""Run a Python module as a child process that ends when its parent process ends, however it ends.

``python -m reinflow.run.parent_watch <parent pid> <module> [args...]`` runs ``python -m <module>
[args...]`` in this same process (``runpy``: same pid, same signals), plus a daemon thread that
checks every :data:`POLL_SECONDS` whether the process is still the child of ``<parent pid>``. When
the parent dies, even of SIGKILL, the kernel hands its children to another parent (init or a
subreaper): the thread then sends SIGTERM to this process (the module's own clean shutdown, e.g.
uvicorn's) and, if it is still there :data:`GRACE_SECONDS` later, exits outright.

The parent may *release* the child (:func:`release`, signal :data:`RELEASE_SIGNAL`): from then on
the watcher stops and the child outlives its parent. ``reinflow train --with-logview`` does this
when it ends by itself, so that the logview stays for browsing until ``reinflow stop``; a SIGKILLed
command releases nothing, and its logview ends with it.

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
RELEASE_SIGNAL = signal.SIGUSR1
"""What the parent sends to let the child outlive it (:func:`release`)."""
MODULE = "reinflow.run.parent_watch"
"""The module name to look for in a watched child's command line."""


def command(args: list[str], parent: int) -> list[str]:
    """``[python, "-m", module, *rest]`` rewritten to run under the watcher of ``parent``; any other
    command is returned unchanged (only ``-m`` commands can be wrapped this way)."""
    if len(args) < 3 or args[1] != "-m":
        return list(args)
    return [args[0], "-m", MODULE, str(parent), *args[2:]]


def watched_parent(cmdline: list[str]) -> int | None:
    """The parent pid a child started by :func:`command` watches, read from its command line; None
    for any other command line."""
    if len(cmdline) < 4 or cmdline[1:3] != ["-m", MODULE] or not cmdline[3].isdigit():
        return None
    return int(cmdline[3])


def release(pid: int) -> None:
    """Let the watched child ``pid`` outlive its parent (check first that ``pid`` is that child)."""
    os.kill(pid, RELEASE_SIGNAL)


def watch(parent: int, poll_seconds: float = POLL_SECONDS, grace_seconds: float = GRACE_SECONDS,
          released: threading.Event | None = None) -> None:
    """Block until this process is no longer ``parent``'s child, then end it (SIGTERM, then exit);
    return without ending it once ``released`` is set."""
    released = released or threading.Event()
    while os.getppid() == parent and not released.is_set():
        time.sleep(poll_seconds)
    if released.is_set():
        return
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_seconds)
    os._exit(1)


def main(argv: list[str]) -> None:
    """``<parent pid> <module> [args...]``: watch the parent, run the module as ``__main__``."""
    parent, module, *rest = argv
    released = threading.Event()
    signal.signal(RELEASE_SIGNAL, lambda *_: released.set())
    threading.Thread(target=watch, args=(int(parent),), kwargs={"released": released}, name="parent-watch",
                     daemon=True).start()
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
