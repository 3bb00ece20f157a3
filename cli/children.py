"""Processes a ``reinflow`` command starts end with it, even when it is SIGKILLed.

Prefect's ephemeral mode (no ``PREFECT_API_URL``) starts its API server as a child process
(``python -m uvicorn ... prefect.server.api.server:create_app``, started by Prefect's
``SubprocessASGIServer``). Prefect stops it at exit, but a SIGKILLed command runs no exit handler,
and the server would run on, orphaned. :func:`tie_prefect_server` makes Prefect start it under
``reinflow.run.parent_watch``, which ends it once this process is gone.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from reinflow.run import parent_watch


class ParentWatchedSubprocess:
    """What ``prefect.server.api.server`` sees as its ``subprocess`` module: the real one, except
    that ``Popen`` of a ``python -m`` command runs it under the parent watcher of this process."""

    def __init__(self, parent: int) -> None:
        self.parent = parent

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def Popen(self, args: list[str], *more: Any, **options: Any) -> subprocess.Popen:  # noqa: N802 (subprocess's name)
        return subprocess.Popen(parent_watch.command(list(args), self.parent), *more, **options)


def tie_prefect_server() -> None:
    """Where this process would start Prefect's ephemeral server, have it end with this process.
    Call before the first flow runs; once is enough (later calls change nothing)."""
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:  # a real server elsewhere: nothing is started here
        return
    from prefect.server.api import server

    if not isinstance(server.subprocess, ParentWatchedSubprocess):
        server.subprocess = ParentWatchedSubprocess(os.getpid())
