"""``python -m reinflow.logview --runs-dir DIR --register-as NAME``: the background logview that
``reinflow train --with-logview`` starts (``background.py``), served on a free loopback port until
SIGTERM. Users run ``reinflow logview`` instead, which takes the same settings and more."""

from __future__ import annotations

import argparse
from pathlib import Path

from reinflow.logview.server import serve
from reinflow.logview.settings import LogviewSettings


def main() -> None:
    """Serve ``--runs-dir`` and record this process in the pid file ``--register-as``."""
    parser = argparse.ArgumentParser(prog="python -m reinflow.logview", description=__doc__)
    parser.add_argument("--runs-dir", type=Path, required=True, help="Folder of <experiment>/<run>/ run folders.")
    parser.add_argument("--register-as", required=True, help="Name of this process's pid file.")
    args = parser.parse_args()
    settings = LogviewSettings(runs_dir=args.runs_dir)
    serve(settings, Path.cwd(), args.register_as, lambda url: print(f"logview of {settings.runs_dir}: {url}", flush=True))


if __name__ == "__main__":
    main()
