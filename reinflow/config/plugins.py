"""Import the user's workflow and judge classes named in the config.

Names are ``module.path->ClassName`` (the AgentScope tuning form) or ``module.path:ClassName``,
imported with the project root on ``sys.path`` so ``agents.math_agent->MathAgent`` resolves.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

from reinflow.errors import ReinflowError


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
        raise PluginError(f"{role} '{name}': cannot import module '{module_name}' ({error})") from None
    except Exception as error:  # noqa: BLE001 - the user's module may raise anything while it loads
        first = (str(error).strip().splitlines() or [""])[0]
        raise PluginError(
            f"{role} '{name}': importing module '{module_name}' raised {type(error).__name__}: {first}"
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
