"""What ``reinflow runs`` lists: each run under a runs folder, where it stands and how to go on.

Everything comes from the run folder itself (no MLflow, no Prefect): the status from ``run.json``
as a reader sees it (``run_state.effective_status``: a ``running`` run whose owner process is gone
reads as ``crashed``), the iteration reached from the judged episode files (``judged/iter_N.parquet``),
the total from the run's own config (``experiment.yaml``), the held-out pass@1 of the newest greedy
evaluation (``eval/iter_N/greedy_judged.parquet``: the share of held-out tasks whose greedy episode
succeeded), and, for a run that neither finished nor still runs, the command that resumes it.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from reinflow.config import ExperimentConfig, load_config
from reinflow.config.errors import ConfigError
from reinflow.run.checkpoint_files import COMPLETE
from reinflow.run.run_state import RUN_FILE, effective_status

CONFIG_FILE = "experiment.yaml"
"""The run's validated config, written by the training flow when the run starts."""
NOT_RESUMABLE = ("running", "finished")
"""Statuses that get no resume command: the run goes on by itself, or has nothing left to do."""

_ITER = re.compile(r"^iter_(\d+)$")


@dataclass(frozen=True)
class RunRow:
    """One line of ``reinflow runs``."""

    experiment: str
    name: str
    path: Path
    status: str  # running | finished | crashed | unknown (run.json unreadable or without a status)
    iteration: int | None  # newest iteration whose episodes were judged; None: none yet
    iterations: int | None  # train.iterations of the run's config; None: no readable experiment.yaml
    checkpoint: int | None  # newest complete checkpoint (where a resume continues from)
    pass_at_1: float | None  # held-out pass@1 of the newest greedy evaluation
    pass_at_1_iteration: int | None  # which evaluation that is
    resume: str | None  # the command that continues the run (None for running and finished runs)


def run_rows(runs_dir: Path, cwd: Path) -> list[RunRow]:
    """Every run folder under ``runs_dir`` (``<experiment>/<run>/run.json``), by experiment, newest
    run first; resume commands are written to be typed in ``cwd``."""
    folders = sorted((p.parent for p in runs_dir.glob(f"*/*/{RUN_FILE}")), key=lambda p: p.name, reverse=True)
    return [run_row(folder, runs_dir, cwd) for folder in sorted(folders, key=lambda p: p.parent.name)]


def run_row(folder: Path, runs_dir: Path, cwd: Path) -> RunRow:
    """Where the run in ``folder`` stands."""
    status = effective_status(_recorded(folder))
    config = run_config(folder)
    evaluated = newest_pass_at_1(folder)
    resume = None if status in NOT_RESUMABLE else resume_command(folder, runs_dir, cwd, config)
    return RunRow(folder.parent.name, folder.name, folder, status, _newest(folder / "judged", ".parquet"),
                  config.train.iterations if config else None, _newest_checkpoint(folder),
                  evaluated[1] if evaluated else None, evaluated[0] if evaluated else None, resume)


def run_config(folder: Path) -> ExperimentConfig | None:
    """The run's own config (``experiment.yaml``), or None where it is missing or unreadable."""
    try:
        return load_config(folder / CONFIG_FILE)
    except ConfigError:
        return None


def newest_pass_at_1(folder: Path) -> tuple[int, float] | None:
    """``(iteration, pass@1)`` of the newest evaluation with judged greedy episodes, or None."""
    for iteration, path in sorted(_numbered(folder / "eval"), reverse=True):
        judged = path / "greedy_judged.parquet"
        if judged.is_file():
            by_task: dict[str, bool] = {}
            for row in pq.read_table(judged, columns=["task_id", "is_success"]).to_pylist():
                by_task[row["task_id"]] = by_task.get(row["task_id"], False) or bool(row["is_success"])
            if by_task:
                return iteration, sum(by_task.values()) / len(by_task)
    return None


def resume_command(folder: Path, runs_dir: Path, cwd: Path, config: ExperimentConfig | None) -> str:
    """``reinflow train --conf <run>/experiment.yaml --resume <run>``, typed in the project folder the
    run belongs to (``cd <there> &&`` first where that is not ``cwd``). The run's own config has the
    fingerprint ``--resume`` checks; without one, the user names the config the run was made with."""
    root = (_project_root(config.tracking.run_dir, runs_dir) if config else None) or cwd
    conf = _relative(folder / CONFIG_FILE, root) if config else "<the config the run was made with>"
    command = f"reinflow train --conf {shlex.quote(str(conf))} --resume {shlex.quote(folder.name)}"
    if root.resolve() != cwd.resolve():
        command = f"cd {shlex.quote(str(root))} && {command}"
    return command


def _project_root(run_dir: Path, runs_dir: Path) -> Path | None:
    """The folder training ran in: ``runs_dir`` less the run's ``tracking.run_dir`` (relative paths
    in the config, data and MLflow among them, are read from there); None where it cannot be told."""
    if run_dir.is_absolute():
        return None
    here = runs_dir.resolve()
    parts = run_dir.parts
    if here.parts[len(here.parts) - len(parts):] != parts:
        return None
    return here.parents[len(parts) - 1] if parts else here


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.resolve().relative_to(root.resolve())
    except ValueError:
        return path.resolve()


def _recorded(folder: Path) -> dict:
    try:
        recorded = json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _newest_checkpoint(folder: Path) -> int | None:
    done = [n for n, path in _numbered(folder / "checkpoints") if (path / COMPLETE).is_file()]
    return max(done, default=None)


def _newest(folder: Path, suffix: str) -> int | None:
    return max((n for n, _ in _numbered(folder, suffix)), default=None)


def _numbered(folder: Path, suffix: str = "") -> list[tuple[int, Path]]:
    """``(N, path)`` of each ``iter_N<suffix>`` entry of ``folder``."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _ITER.match(path.name.removesuffix(suffix)) if path.name.endswith(suffix) else None
        if match:
            found.append((int(match.group(1)), path))
    return found
