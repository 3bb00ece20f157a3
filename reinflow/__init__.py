"""reinflow: train AgentScope agents with GRPO on a Prefect pipeline.

The names a workflow author needs are importable from here::

    from reinflow import Workflow, WorkflowOutput, Task, TunedModel, Judge
    from reinflow import execute_python_code_tool, SandboxLimits   # what the shipped agents use

``TunedModel`` is loaded on first use (it imports AgentScope), so ``import reinflow.config`` and
the CLI's start-up stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from reinflow.rollout.workflow import Task, Workflow, WorkflowOutput

if TYPE_CHECKING:
    from reinflow.judging.judge import Judge
    from reinflow.rollout.tuned_model import TunedModel
    from reinflow.sandbox.python_tool import execute_python_code_tool
    from reinflow.sandbox.runner import SandboxLimits

__version__ = "0.1.0"
__all__ = [
    "Judge", "SandboxLimits", "Task", "TunedModel", "Workflow", "WorkflowOutput", "__version__",
    "execute_python_code_tool",
]

_LAZY = {
    "TunedModel": "reinflow.rollout.tuned_model",
    "Judge": "reinflow.judging.judge",
    "execute_python_code_tool": "reinflow.sandbox.python_tool",
    "SandboxLimits": "reinflow.sandbox.runner",
}


def __getattr__(name: str) -> Any:
    """Import the heavy public names on first access."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reinflow' has no attribute {name!r}")
