"""What makes a folder a checkpoint, readable without torch (the CLI's preflight checks it)."""

from __future__ import annotations

from pathlib import Path

COMPLETE = "COMPLETE"
"""The empty marker written last into a checkpoint folder (see ``run.checkpoint``)."""


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint folder, or None when it is one."""
    if not path.exists():
        return f"no such folder: {path.resolve()}"
    if not path.is_dir():
        return f"{path.resolve()} is a file, not a checkpoint folder"
    if not (path / COMPLETE).is_file():
        return (f"{path.resolve()} is not a complete checkpoint (no {COMPLETE} marker; checkpoints are "
                "<run folder>/checkpoints/iter_N/)")
    return None
