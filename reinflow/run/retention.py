"""Compaction of a run's episode files (``tracking.raw_episode_files``).

Each training iteration leaves ``rollouts/iter_N.parquet`` (what the rollout wrote) and
``judged/iter_N.parquet`` (the same episodes with the judge's rewards, what the logview shows);
each evaluation leaves ``eval/iter_N/<kind>.parquet`` and ``<kind>_judged.parquet`` alike. With
``raw_episode_files: drop_when_judged`` the raw file of an iteration is deleted once its judged
file exists and a checkpoint covers the iteration: a resume never goes back to it (it re-runs only
the iterations after the newest checkpoint), and the logview and ``reinflow runs`` read the judged
files. ``keep`` (the default) deletes nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

_ITERATION = re.compile(r"^iter_(\d+)(\.parquet)?$")


def drop_judged_raw_files(run_dir: Path, checkpointed: int) -> int:
    """Delete the raw episode files of iterations ``<= checkpointed`` whose judged file exists;
    returns the bytes freed."""
    doomed = [raw for raw, judged in _raw_and_judged(run_dir, checkpointed) if judged.is_file() and raw.is_file()]
    freed = 0
    for raw in doomed:
        size = raw.stat().st_size
        raw.unlink(missing_ok=True)
        freed += size
    return freed


def _raw_and_judged(run_dir: Path, checkpointed: int) -> list[tuple[Path, Path]]:
    pairs = []
    for raw in _numbered(run_dir / "rollouts", checkpointed):
        pairs.append((raw, run_dir / "judged" / raw.name))
    for folder in _numbered(run_dir / "eval", checkpointed):
        pairs += [(raw, raw.with_name(raw.stem + "_judged.parquet"))
                  for raw in folder.glob("*.parquet") if not raw.stem.endswith("_judged")]
    return pairs


def _numbered(folder: Path, up_to: int) -> list[Path]:
    """``iter_N`` entries of ``folder`` with ``N <= up_to``."""
    if not folder.is_dir():
        return []
    return [entry for entry in folder.iterdir()
            if (match := _ITERATION.match(entry.name)) and int(match.group(1)) <= up_to]
