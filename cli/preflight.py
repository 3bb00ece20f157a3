"""Checks of the command line's own arguments, run before any flow (and so Prefect) starts.

A config's shape and the files it names are checked by ``reinflow.run.preflight``; these check what
only the command line names: the run to resume, the checkpoint to evaluate, the dataset to prepare,
the folder to view. Each problem is a ``ConfigError`` whose message is the whole error line.
"""

from __future__ import annotations

from pathlib import Path

from reinflow.config import ExperimentConfig
from reinflow.config.errors import ConfigError
from reinflow.run.checkpoint_files import checkpoint_problem
from reinflow.run.run_state import find_run_to_resume


def check_resume(config: ExperimentConfig, project_root: Path, resume: str | None) -> None:
    """``--resume NAME|latest`` names a run of the experiment made with this config."""
    if resume is not None:
        find_run_to_resume(config, project_root, None if resume == "latest" else resume)


def check_eval_target(checkpoint: Path | None, base_model: bool) -> None:
    """``--checkpoint`` is a complete checkpoint folder, and not given with ``--base-model``."""
    if checkpoint is None:
        return
    if base_model:
        raise ConfigError("give either --checkpoint or --base-model, not both")
    problem = checkpoint_problem(checkpoint)
    if problem:
        raise ConfigError(f"--checkpoint {checkpoint}: {problem}")


def check_hub_target(target: str, project_root: Path) -> None:
    """A ``--target`` that is read as a hub dataset: a local folder, cached, or known to the hub."""
    from reinflow.data.hub_check import check_hub_dataset
    from reinflow.data.sources import DataSourceError

    try:
        check_hub_dataset(target, project_root)
    except DataSourceError as error:
        raise ConfigError(f"--target {error} (--target takes a hub dataset id, a local .jsonl/.parquet file, "
                          "or a folder)") from None


def check_runs_dir(runs_dir: Path, verb: str = "logview") -> None:
    """The folder ``reinflow logview`` (or ``reinflow runs``) is to show exists."""
    if not runs_dir.exists():
        raise ConfigError(f"{verb}: --runs-dir {runs_dir}: no such folder ({runs_dir.resolve()}); "
                          "give a config's tracking.run_dir, where training writes its runs")
    if not runs_dir.is_dir():
        raise ConfigError(f"{verb}: --runs-dir {runs_dir}: is a file, not a folder")
