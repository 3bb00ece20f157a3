"""Import and construct the user's workflow and judge classes named in the config.

Names are ``module.path->ClassName`` (the AgentScope tuning form) or ``module.path:ClassName``,
imported with the project root on ``sys.path`` so ``agents.math_agent->MathAgent`` resolves.
:func:`import_class` imports and checks a class (``reinflow.run.preflight`` stops there: a
constructor may load a model); :func:`construct_plugin` also checks its base class and builds it
from the config's options. Every problem is a one-line :class:`PluginError`.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reinflow.errors import ReinflowError, one_line


class PluginError(ReinflowError):
    """A workflow or judge named in the config that cannot be imported or used."""


def split_import_path(name: str) -> tuple[str, str]:
    """``'a.b->C'`` or ``'a.b:C'`` → ``('a.b', 'C')``.

    >>> split_import_path("agents.math_agent->MathAgent")
    ('agents.math_agent', 'MathAgent')
    >>> split_import_path("judges.math_answer:MathAnswerJudge")
    ('judges.math_answer', 'MathAnswerJudge')
    """
    for separator in ("->", ":"):
        module, found, attribute = name.partition(separator)
        if found and module and attribute:
            return module, attribute
    raise PluginError(f"'{name}': expected module.path->ClassName or module.path:ClassName")


def import_class(name: str, project_root: Path, role: str, required_methods: tuple[str, ...]) -> type:
    """Import the class ``name`` and check it has the methods its role needs."""
    module_name, class_name = split_import_path(name)
    root = str(project_root.resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise PluginError(f"{role} '{name}': cannot import module '{module_name}' ({one_line(error)})") from None
    except Exception as error:  # noqa: BLE001 - the user's module may raise anything while it loads
        raise PluginError(
            f"{role} '{name}': importing module '{module_name}' raised {type(error).__name__}: {one_line(error)}"
        ) from None
    found = vars(module).get(class_name)
    if not isinstance(found, type):
        raise PluginError(f"{role} '{name}': module '{module_name}' has no class '{class_name}'")
    missing = [method for method in required_methods if not callable(getattr(found, method, None))]
    if missing:
        raise PluginError(f"{role} '{name}': class {class_name} lacks the method(s) {', '.join(missing)}")
    if inspect.isabstract(found):
        abstract = ", ".join(sorted(found.__abstractmethods__))
        raise PluginError(f"{role} '{name}': class {class_name} does not implement {abstract}")
    return found


def construct_plugin(
    name: str,
    options: Mapping[str, Any],
    project_root: Path,
    *,
    role: str,
    required_methods: tuple[str, ...],
    base: type | None,
    options_key: str,
) -> Any:
    """Import the class ``name`` (:func:`import_class`) and construct it as ``cls(**options)``.

    Args:
        name: the config's ``module.path->ClassName`` (e.g. ``rollout.workflow``).
        options: the config's keyword arguments for the constructor (e.g. ``rollout.workflow_options``).
        project_root: where the user's modules are imported from.
        role: what the plugin is, for messages: ``"workflow"`` or ``"judge"``.
        required_methods: methods the class must have (``("run",)``).
        base: a class the plugin must subclass, one users import from the package root
            (``reinflow.Workflow``); ``None``: any class with the methods will do (duck typing).
        options_key: the config key of ``options``, for messages (``"rollout.workflow_options"``).

    Returns:
        The constructed plugin. A constructor that rejects its options (``TypeError`` for an
        unknown keyword, pydantic's ``ValidationError``, a ``ReinflowError`` of its own) gives a
        one-line :class:`PluginError` naming ``options_key``; any other exception is a bug of the
        plugin and propagates with its traceback.
    """
    cls = import_class(name, project_root, role, required_methods)
    if base is not None and not issubclass(cls, base):
        raise PluginError(f"{role} '{name}': {cls.__name__} must subclass reinflow.{base.__name__}")
    try:
        return cls(**options)
    except ValidationError as error:
        raise PluginError(f"{role} '{name}': bad {options_key}: {_first_problem(error)}") from None
    except (TypeError, ReinflowError) as error:
        raise PluginError(f"{role} '{name}': bad {options_key}: {one_line(error)}") from None


def _first_problem(error: ValidationError) -> str:
    """``<option>: <what is wrong>[ (and N more problems)]``: pydantic's own first line is only
    ``1 validation error for Options``. The rejected value is not shown (it may be a secret)."""
    problems = error.errors()
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return f"{where}: {first['msg']}{more}"
