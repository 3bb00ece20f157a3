"""The sandbox wing: model-written Python runs here, in a locked-down child process, never in ours.

- :mod:`reinflow.sandbox.runner`: :func:`run_python` / :func:`run_python_async` and :func:`probe_isolation`;
- :mod:`reinflow.sandbox.limits`: :class:`SandboxLimits` (what a run may use) and :class:`SandboxIsolation`;
- :mod:`reinflow.sandbox.result`: :class:`SandboxResult`, what a run produced and how it ended;
- :mod:`reinflow.sandbox.tool_output`: :func:`format_tool_output`, the text the agent sees;
- :mod:`reinflow.sandbox.live_run` and :mod:`reinflow.sandbox.pumps`: one started run and its drivers;
- :mod:`reinflow.sandbox.launch_config` and :mod:`reinflow.sandbox.launcher`: what the launcher is told,
  and its source (the launcher/reaper run in a fresh interpreter);
- :mod:`reinflow.sandbox.processes`: per-run uids and the process sweeps;
- :mod:`reinflow.sandbox.host_view`: what the code sees of a host path (the same file, none, or no way in);
- :mod:`reinflow.sandbox.notebook_cell`: the notebook-style echo of a final bare expression;
- :mod:`reinflow.sandbox.python_tool`: the ``execute_python_code`` AgentScope tool over it
  (imported on first use: it imports AgentScope).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from reinflow.errors import SandboxUnavailableError
from reinflow.sandbox.limits import MIB, SandboxIsolation, SandboxLimits
from reinflow.sandbox.result import SandboxResult
from reinflow.sandbox.runner import probe_isolation, run_python, run_python_async
from reinflow.sandbox.tool_output import format_tool_output

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
