"""Check what a config names on disk before any Prefect flow starts, so a mistake is one line.

:func:`reinflow.config.load_config` checks a config's shape; these check the things it points to:
the local data files, the output folders, and the workflow and judge classes (imported and checked
for their methods, not constructed: an LLM judge's constructor may load a model). Inside a flow
the same mistakes would surface only after Prefect started, wrapped in its log lines.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from reinflow.config import DataConfig, ExperimentConfig, LocalSource, ReasoningGymSource
from reinflow.config.errors import ConfigError
from reinflow.config.models import check_model_name
from reinflow.data.shards import load_manifest, manifest_path
from reinflow.data.sources import count_rows, local_file
from reinflow.errors import ReinflowError
from reinflow.config.plugins import PluginError, import_class
from reinflow.rollout.workflow import Workflow
from reinflow.config.warmup import RAY_UNSUPPORTED


def check_experiment(config: ExperimentConfig, project_root: Path, source: str) -> None:
    """Raise a one-line ConfigError (``<source>: <key path>: <problem>``) for the first problem found."""
    check_data(config.data, project_root, source)
    _check_folder(project_root / config.tracking.run_dir, "tracking.run_dir", source)
    try:
        check_model_name(config.model.path, project_root)
    except ReinflowError as error:
        raise ConfigError(f"{source}: model.path: {error}") from None
    if config.rollout.workflow is not None:
        _check_plugin(config.rollout.workflow, project_root, "workflow", ("run",), "rollout.workflow", source)
    elif config.rollout.workflow_command is not None:
        _check_command(config.rollout.workflow_command, project_root, source)
    _check_plugin(config.judge.protocol, project_root, "judge", ("compute_reward",), "judge.protocol", source)
    check_warmup(config, project_root, source)


class TaskIndexError(ReinflowError):
    """``--task N`` names a row the split does not have."""


def check_task_index(data: DataConfig, project_root: Path, task_index: int) -> None:
    """``task_index`` is a row of the train split, as far as is known before the data is prepared:
    the shards' manifest where they exist, else a reasoning-gym source's size, else the rows of a
    local file (an upper bound: broken rows are skipped when it is prepared). A hub split's size is
    known only once it is prepared."""
    split, bound = data.train_split, ""
    if manifest_path(project_root / data.path, split).is_file():
        rows = load_manifest(project_root / data.path, split)["rows"]
    elif isinstance(data.source, ReasoningGymSource) and split in data.source.sizes:
        rows = data.source.sizes[split]
    elif isinstance(data.source, LocalSource) and split in data.source.files:
        rows, bound = count_rows(local_file(data.source, split, project_root)), "at most "
    else:
        return
    if task_index >= rows:
        raise TaskIndexError(f"--task {task_index}: the {split} split has {bound}{rows} tasks (rows 0 to {rows - 1})")


def check_warmup(config: ExperimentConfig, project_root: Path, source: str) -> None:
    """The warm start's demonstrations file and earlier run exist, and the backbone can warm-start."""
    warmup = config.warmup
    if warmup.demonstrations is not None and not (project_root / warmup.demonstrations).is_file():
        path = (project_root / warmup.demonstrations).resolve()
        raise ConfigError(f"{source}: warmup.demonstrations: no such file: {path}")
    if warmup.from_run is not None and not (project_root / warmup.from_run).exists():
        path = (project_root / warmup.from_run).resolve()
        raise ConfigError(f"{source}: warmup.from_run: no such run folder or judged file: {path}")
    if warmup.enabled and config.backbone != "debug":
        raise ConfigError(f"{source}: warmup: {RAY_UNSUPPORTED}")


def check_data(data: DataConfig, project_root: Path, source: str) -> None:
    """The local data files exist and the shard folder is not a file."""
    if isinstance(data.source, LocalSource):
        for split, file in data.source.files.items():
            path = (project_root / file).resolve()
            if not path.is_file():
                raise ConfigError(f"{source}: data.source.files.{split}: no such file: {path}")
    _check_folder(project_root / data.path, "data.path", source)


def _check_folder(path: Path, key: str, source: str) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{source}: {key}: {path} is a file, not a folder")


def _check_command(command: list[str], project_root: Path, source: str) -> None:
    """The program of ``rollout.workflow_command`` exists and may be run (a path with a slash is
    taken from the project root, a bare name from $PATH, as the episode's process will be)."""
    program = command[0]
    if "/" in program:
        path = project_root / program
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"{source}: rollout.workflow_command: no executable file {path}")
    elif shutil.which(program) is None:
        raise ConfigError(f"{source}: rollout.workflow_command: '{program}' is not on $PATH")


def _check_plugin(
    name: str, project_root: Path, role: str, methods: tuple[str, ...], key: str, source: str
) -> None:
    try:
        cls = import_class(name, project_root, role, methods)
        if role == "workflow" and not issubclass(cls, Workflow):
            raise PluginError(f"workflow '{name}': {cls.__name__} must subclass reinflow.Workflow")
    except ReinflowError as error:
        raise ConfigError(f"{source}: {key}: {error}") from None
