"""Read an experiment YAML file into an :class:`ExperimentConfig`, every problem one readable message.

The models and their defaults are in :mod:`reinflow.config.experiment`; this module only reads the
file, applies the command line's dotted overrides (:mod:`reinflow.config.overrides`) and turns
what can go wrong (no file, not YAML, not UTF-8, not a mapping, a validation error) into a
:class:`ConfigError` whose message names the file, the key path and the nearest valid key.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from reinflow.config.errors import ConfigError, format_validation_error
from reinflow.config.experiment import ExperimentConfig
from reinflow.config.overrides import apply_overrides
from reinflow.errors import one_line


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read an experiment YAML, apply dotted ``key=value`` overrides and validate it.

    Raises ConfigError (one readable message, no traceback needed) on any problem.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(error)}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not valid UTF-8 text: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides, source=str(path))
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, ExperimentConfig, source=str(path))) from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where. PyYAML's own text starts with the
    context (``while scanning a simple key``), so a marked error is rebuilt from its problem and
    position; any other is :func:`one_line`."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return one_line(error)
