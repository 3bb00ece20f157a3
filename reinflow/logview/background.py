"""``reinflow train --with-logview``: one background logview per runs folder, started once and
reused by later runs, registered in a pid file so that ``reinflow stop`` ends it.

It is started under ``reinflow.run.parent_watch``: if the command that started it is SIGKILLed, it
ends too. A command that ends by itself releases it (:func:`release_background_logview`), so it
stays for browsing until ``reinflow stop``. Pid files of processes that have ended are swept first.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from reinflow.run import parent_watch, pidfiles
from reinflow.errors import ReinflowError

START_TIMEOUT_SECONDS = 60.0
"""How long to wait for the background logview to bind its port and register."""


class LogviewStartError(ReinflowError):
    """The background logview exited or did not register in time."""


def background_name(runs_dir: Path) -> str:
    """The pid-file name of the background logview of ``runs_dir``."""
    return "logview-" + hashlib.sha256(str(runs_dir.resolve()).encode()).hexdigest()[:8]


def ensure_background_logview(project_root: Path, runs_dir: Path) -> tuple[str, bool]:
    """The URL of the running background logview of ``runs_dir``, starting one if there is none;
    and whether it was started now."""
    name = background_name(runs_dir)
    pidfiles.sweep(project_root)
    for record in pidfiles.records(project_root):
        if record.name == name and pidfiles.is_alive(record):
            return record.info["url"], False
    log_path = project_root / ".reinflow" / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = parent_watch.command([sys.executable, "-m", "reinflow.logview", "--runs-dir", str(runs_dir),
                                    "--register-as", name], os.getpid())
    with log_path.open("ab") as log:
        child = subprocess.Popen(command, cwd=project_root, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    record = pidfiles.wait_for(project_root, name, child, START_TIMEOUT_SECONDS)
    if record is None:
        child.kill()
        raise LogviewStartError(f"the background logview did not start within {START_TIMEOUT_SECONDS:g} s; see {log_path}")
    return record.info["url"], True


def release_background_logview(project_root: Path, runs_dir: Path) -> bool:
    """Let the background logview of ``runs_dir`` outlive this process, where this process started
    it (and it still runs); returns whether it was released."""
    for record in pidfiles.records(project_root):
        if (record.name == background_name(runs_dir) and parent_watch.watched_parent(record.cmdline) == os.getpid()
                and pidfiles.is_alive(record)):
            parent_watch.release(record.pid)
            return True
    return False
