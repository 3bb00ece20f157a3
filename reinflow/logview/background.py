"""``reinflow train --with-logview``: one background logview per runs folder, started once and
reused by later runs, registered in a pid file so that ``reinflow stop`` ends it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from reinflow.run import pidfiles
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
    for record in pidfiles.records(project_root):
        if record.name == name and pidfiles.is_alive(record):
            return record.info["url"], False
    log_path = project_root / ".reinflow" / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "reinflow.logview", "--runs-dir", str(runs_dir), "--register-as", name]
    with log_path.open("ab") as log:
        child = subprocess.Popen(command, cwd=project_root, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    record = pidfiles.wait_for(project_root, name, child, START_TIMEOUT_SECONDS)
    if record is None:
        child.kill()
        raise LogviewStartError(f"the background logview did not start within {START_TIMEOUT_SECONDS:g} s; see {log_path}")
    return record.info["url"], True
