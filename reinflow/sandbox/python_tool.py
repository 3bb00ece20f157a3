"""The ``execute_python_code`` tool for AgentScope agents: model-written code runs in the sandbox.

    toolkit = Toolkit(tools=[execute_python_code_tool()])

Code never runs in the trainer's process (see ``reinflow.sandbox.runner`` and docs/SANDBOX.md). Like a
notebook cell, the value of a final bare expression is printed (``echo_last_expression``).
"""

from __future__ import annotations

from agentscope.permission import PermissionBehavior, PermissionDecision
from agentscope.tool import FunctionTool

from reinflow.sandbox.limits import SandboxLimits
from reinflow.sandbox.notebook_cell import echo_last_expression
from reinflow.sandbox.runner import run_python_async
from reinflow.sandbox.tool_output import format_tool_output


def execute_python_code_tool(limits: SandboxLimits | None = None, echo_last_value: bool = True) -> FunctionTool:
    """An always-allowed AgentScope tool that runs Python code in the sandbox and returns its output."""

    async def execute_python_code(code: str) -> str:
        """Run Python code and return what it prints. The value of a final bare expression is shown.

        Args:
            code (str): The Python source code to run.
        """
        source = echo_last_expression(code) if echo_last_value else code
        result = await run_python_async(source, limits)
        return format_tool_output(result)

    allow = PermissionDecision(behavior=PermissionBehavior.ALLOW, message="sandboxed Python is always allowed")
    return FunctionTool(execute_python_code, name="execute_python_code", permission=allow)
