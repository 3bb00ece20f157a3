"""What one sandbox run produced and how it ended: :class:`SandboxResult`.

:mod:`reinflow.sandbox.live_run` builds it once the run is over and cleaned up;
:func:`reinflow.sandbox.tool_output.format_tool_output` turns it into the text an agent sees.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from reinflow.sandbox.limits import SandboxIsolation

__all__ = ["SandboxResult"]


class SandboxResult(BaseModel):
    """What a run produced and how it ended."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stdout: str = Field(description="Captured stdout, UTF-8 decoded with replacement, at most output_bytes.")
    stderr: str = Field(description="Captured stderr, same rules.")
    exit_code: int | None = Field(description="The exit status; None when the process died of a signal.")
    timed_out: bool = Field(description="The wall-clock limit was hit and the run was killed.")
    killed_signal: int | None = Field(description="The signal that ended the main process, if any.")
    truncated: bool = Field(description="Output passed output_bytes; the run was killed and the rest dropped.")
    wall_seconds: float = Field(description="Wall time of the whole call, cleanup included.")
    sandbox_uid: int | None = Field(description="The uid the code ran as; None: the trainer's own uid.")
    isolation: SandboxIsolation = Field(description="The OS protections this run used.")
