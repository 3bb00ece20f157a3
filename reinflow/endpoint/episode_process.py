"""Run one episode's process: task JSON on stdin, result JSON as the last line of stdout.

The process starts in its own session (process group), so ending it ends what it started too.
Its output is read as it comes and only the last ``max_output_bytes`` of stdout and of stderr are
kept: a chatty agent cannot fill the trainer's memory. When the episode is cancelled (the rollout's
episode timeout), the whole group is killed before the cancellation goes on: a hanging agent
ends as a timed-out episode, never a stray process. When the process exits, what it left running
is killed as well (a background child holding its stdout open would otherwise hold the episode
until its timeout).

The result line (:class:`CommandResult`)::

    {"final_answer": "42", "metadata": {"env": {...}, ...}, "judge_input": {...}, "reward": null}

every key optional: ``final_answer`` (a string or a number) for the judge, ``metadata`` kept with
the rollout (its ``env`` is the judge's ``env``), ``judge_input`` extra keys for the judge's
``judge_input_dictionary``, ``reward`` a reward of the agent's own (then no judge runs).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reinflow.errors import one_line
from reinflow.rollout.workflow import Task

EXIT_POLL_SECONDS = 0.05
"""How often a running process is checked for its exit (its output pipes may outlive it)."""


class CommandFailed(Exception):
    """The episode's process failed: it exited with an error or printed no valid result."""


class CommandResult(BaseModel):
    """What the process prints as the last line of its stdout."""

    model_config = ConfigDict(extra="forbid")

    final_answer: str | int | float | None = Field(None, description="The agent's final answer, for the judge.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Kept with the rollout; `env` goes to the judge.")
    judge_input: dict[str, Any] = Field(default_factory=dict, description="Extra keys of the judge's input.")
    reward: float | None = Field(None, description="A reward the agent computed itself (then no judge runs).")


def task_json(task: Task, episode_id: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """What an agent outside the process is given: the task's fields, the workflow options
    (``rollout.workflow_options``) and its episode id."""
    return {"task_id": task.task_id, "question": task.question, "reference_answer": task.reference_answer,
            "row": task.row, "options": dict(options), "episode_id": episode_id}


@dataclass(frozen=True)
class ProcessOutput:
    """How the process ended and the tails of what it printed."""

    returncode: int
    stdout: bytes
    stderr: bytes

    def redacted(self, secret: str) -> ProcessOutput:
        """The output with ``secret`` (the run's token) blanked out, so no error message or result
        kept in the rollout can carry it, even from an agent that prints its environment.

        >>> ProcessOutput(0, b'{"metadata": {"key": "s3cr3t"}}', b"").redacted("s3cr3t").stdout
        b'{"metadata": {"key": "[redacted]"}}'
        """
        mask, token = b"[redacted]", secret.encode()
        return ProcessOutput(self.returncode, self.stdout.replace(token, mask), self.stderr.replace(token, mask))


async def run_process(command: Sequence[str], stdin: bytes, env: Mapping[str, str], cwd: Path,
                      max_output_bytes: int) -> ProcessOutput:
    """Run ``command`` to its end (see the module docstring); cancelling kills its process group."""
    try:
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=dict(env), cwd=cwd, start_new_session=True,
        )
    except OSError as error:
        raise CommandFailed(start_failure(command[0], cwd, error)) from None
    readers = asyncio.gather(
        _feed(process.stdin, stdin), _tail(process.stdout, max_output_bytes), _tail(process.stderr, max_output_bytes)
    )
    try:
        while process.returncode is None and not readers.done():
            await asyncio.wait({readers}, timeout=EXIT_POLL_SECONDS)
        # Once the process has exited, what it left running (which may hold its stdout open) ends too.
        _kill_group(process.pid)
        _, stdout, stderr = await readers
        returncode = await process.wait()
    finally:
        _kill_group(process.pid)  # all of it when cancelled
        readers.cancel()
        if process.returncode is None:
            await asyncio.shield(process.wait())
    return ProcessOutput(returncode, stdout, stderr)


def start_failure(program: str, cwd: Path, error: OSError) -> str:
    """Why the process could not start, in one line (the program gone or changed after the preflight).

    >>> start_failure("my-agent", Path("/project"), FileNotFoundError(2, "No such file or directory"))
    'workflow_command `my-agent` could not start: not found (a bare name is looked up on $PATH)'
    """
    if isinstance(error, FileNotFoundError):
        where = f"a path is taken from the project root {cwd}" if "/" in program else "a bare name is looked up on $PATH"
        why = f"not found ({where})"
    elif isinstance(error, PermissionError):
        why = "not executable (a folder, or a file without the x bit: chmod +x it or name its interpreter first)"
    else:
        why = one_line(error)
    return f"workflow_command `{program}` could not start: {why}"


async def _feed(stream: asyncio.StreamWriter | None, data: bytes) -> None:
    """Write the task and close stdin; a process that does not read it is not an error."""
    if stream is None:
        return
    try:
        stream.write(data)
        await stream.drain()
        stream.close()
    except (BrokenPipeError, ConnectionResetError):
        pass


async def _tail(stream: asyncio.StreamReader | None, limit: int) -> bytes:
    """Everything the stream gives until EOF, keeping only the last ``limit`` bytes."""
    kept = bytearray()
    while stream is not None and (chunk := await stream.read(65_536)):
        kept += chunk
        if len(kept) > limit:
            del kept[: len(kept) - limit]
    return bytes(kept)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def parse_result(output: ProcessOutput, program: str) -> CommandResult:
    """The result line of a finished process, or :class:`CommandFailed` saying what went wrong."""
    if output.returncode != 0:
        how = f"was killed by signal {-output.returncode}" if output.returncode < 0 else \
            f"exited with status {output.returncode}"
        raise CommandFailed(f"workflow_command `{program}` {how}: {last_line(output.stderr) or 'no stderr'}")
    line = last_line(output.stdout)
    if not line:
        raise CommandFailed(f"workflow_command `{program}` printed nothing on stdout; its last line must be the "
                            f"result JSON, e.g. {{\"final_answer\": \"42\"}} (stderr: {last_line(output.stderr) or '-'})")
    try:
        payload = json.loads(line)
        result = CommandResult.model_validate(payload)
    except json.JSONDecodeError as error:
        raise CommandFailed(f"workflow_command `{program}`: the last line of stdout is not JSON ({error}): "
                            f"{line[:200]!r}") from None
    except RecursionError:
        raise CommandFailed(f"workflow_command `{program}`: the last line of stdout is not JSON (nested too deep "
                            f"to decode): {line[:200]!r}") from None
    except ValidationError as error:
        raise CommandFailed(f"workflow_command `{program}`: bad result line: {one_line(error)}; "
                            f"{_first_problem(error)}") from None
    return result


def _first_problem(error: ValidationError) -> str:
    problem = error.errors(include_url=False)[0]
    path = ".".join(str(part) for part in problem["loc"]) or "(the line)"
    return f"{path}: {problem['msg']} (keys: final_answer, metadata, judge_input, reward)"


def last_line(data: bytes) -> str:
    """The last non-blank line of ``data`` (decoded leniently), stripped.

    >>> last_line(b'thinking...\\n{"final_answer": "4"}\\n\\n')
    '{"final_answer": "4"}'
    """
    for line in reversed(data.decode("utf-8", errors="replace").splitlines()):
        if line.strip():
            return line.strip()
    return ""
