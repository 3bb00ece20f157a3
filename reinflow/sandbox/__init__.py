"""The sandbox wing: model-written Python runs here, in a locked-down child process, never in ours.

- :mod:`reinflow.sandbox.runner`: :func:`run_python` / :func:`run_python_async` and the limits;
- :mod:`reinflow.sandbox.launcher`: the launcher/reaper source run in a fresh interpreter;
- :mod:`reinflow.sandbox.processes`: per-run uids and the process sweeps;
- :mod:`reinflow.sandbox.python_tool`: the ``execute_python_code`` AgentScope tool over it
  (imported on first use: it imports AgentScope).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from reinflow.errors import SandboxUnavailableError
from reinflow.sandbox.runner import (
    MIB,
    SandboxIsolation,
    SandboxLimits,
    SandboxResult,
    format_tool_output,
    probe_isolation,
    run_python,
    run_python_async,
)

if TYPE_CHECKING:
    from reinflow.sandbox.python_tool import execute_python_code_tool

__all__ = [
    "MIB", "SandboxIsolation", "SandboxLimits", "SandboxResult", "SandboxUnavailableError",
    "execute_python_code_tool", "format_tool_output", "probe_isolation", "run_python", "run_python_async",
]


def __getattr__(name: str) -> Any:
    """Import the AgentScope tool on first access, so the sandbox alone stays light."""
    if name == "execute_python_code_tool":
        return importlib.import_module("reinflow.sandbox.python_tool").execute_python_code_tool
    raise AttributeError(f"module 'reinflow.sandbox' has no attribute {name!r}")
