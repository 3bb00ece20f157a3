"""reinflow: train AgentScope agents with GRPO on a Prefect pipeline.

The names a workflow author needs are importable from here::

    from reinflow import Workflow, WorkflowOutput, Task, TunedModel, Judge

``TunedModel`` is loaded on first use (it imports AgentScope), so ``import reinflow.config`` and
the CLI's start-up stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from reinflow.workflow import Task, Workflow, WorkflowOutput

if TYPE_CHECKING:
    from reinflow.judge import Judge
    from reinflow.tuned_model import TunedModel

__version__ = "0.1.0"
__all__ = ["Judge", "Task", "TunedModel", "Workflow", "WorkflowOutput", "__version__"]

_LAZY = {"TunedModel": "reinflow.tuned_model", "Judge": "reinflow.judge"}


def __getattr__(name: str) -> Any:
    """Import the heavy public names on first access."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reinflow' has no attribute {name!r}")
