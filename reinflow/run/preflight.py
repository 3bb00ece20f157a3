"""Check what a config names on disk before any Prefect flow starts, so a mistake is one line.

:func:`reinflow.config.load_config` checks a config's shape; these check the things it points to:
the local data files, the output folders, and the workflow and judge classes (imported and checked
for their methods, not constructed: an LLM judge's constructor may load a model). Inside a flow
the same mistakes would surface only after Prefect started, wrapped in its log lines.
"""

from __future__ import annotations

from pathlib import Path

from reinflow.config import DataConfig, ExperimentConfig, LocalSource
from reinflow.config.errors import ConfigError
from reinflow.errors import ReinflowError
from reinflow.config.plugins import PluginError, import_class
from reinflow.rollout.workflow import Workflow


def check_experiment(config: ExperimentConfig, project_root: Path, source: str) -> None:
    """Raise a one-line ConfigError (``<source>: <key path>: <problem>``) for the first problem found."""
    check_data(config.data, project_root, source)
    _check_folder(project_root / config.tracking.run_dir, "tracking.run_dir", source)
    _check_plugin(config.rollout.workflow, project_root, "workflow", ("run",), "rollout.workflow", source)
    _check_plugin(config.judge.protocol, project_root, "judge", ("compute_reward",), "judge.protocol", source)


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


def _check_plugin(
    name: str, project_root: Path, role: str, methods: tuple[str, ...], key: str, source: str
) -> None:
    try:
        cls = import_class(name, project_root, role, methods)
        if role == "workflow" and not issubclass(cls, Workflow):
            raise PluginError(f"workflow '{name}': {cls.__name__} must subclass reinflow.Workflow")
    except ReinflowError as error:
        raise ConfigError(f"{source}: {key}: {error}") from None
