"""The text an agent sees after a sandbox run: :func:`format_tool_output`.

What the code printed comes first; then the tail of stderr (a traceback's last lines are the
useful ones); then one bracketed note per way the run did not simply exit 0, so a small model can
tell a timeout from a crash from a missing ``print``.
"""

from __future__ import annotations

import signal

from reinflow.sandbox.result import SandboxResult

__all__ = ["format_tool_output"]

SIGNAL_REASONS = {
    signal.SIGXCPU: "CPU time limit exceeded",
    signal.SIGXFSZ: "file size limit exceeded",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGABRT: "aborted",
    signal.SIGINT: "interrupted",
}
"""Why a signal usually ends sandboxed code; any other signal is reported as 'killed'."""


def format_tool_output(result: SandboxResult, stderr_tail_chars: int = 2000) -> str:
    """The text the agent sees: stdout, then the tail of stderr, then a note on how the run ended.

    >>> from reinflow.sandbox.limits import SandboxIsolation
    >>> r = SandboxResult(stdout="5\\n", stderr="", exit_code=0, timed_out=False, killed_signal=None,
    ...                   truncated=False, wall_seconds=0.1, sandbox_uid=None,
    ...                   isolation=SandboxIsolation(drops_privileges=False, network_isolated=False,
    ...                                              private_tmp=False, pid_namespace=False))
    >>> format_tool_output(r)
    '5\\n'
    """
    sections = [result.stdout] if result.stdout else []
    if result.stderr:
        tail = result.stderr[-stderr_tail_chars:]
        cut = "…" if len(tail) < len(result.stderr) else ""
        sections.append(f"[stderr]\n{cut}{tail}")
    sections.extend(_notes(result))
    if not sections:
        sections.append("[no output: the code printed nothing; use print() to show values]")
    return "".join(section if section.endswith("\n") else section + "\n" for section in sections)


def _notes(result: SandboxResult) -> list[str]:
    """Bracketed lines that say why the run ended, when it did not simply exit 0."""
    notes = []
    if result.timed_out:
        notes.append(f"[timed out after {result.wall_seconds:.1f} s: the program was killed]")
    if result.truncated:
        notes.append("[output limit reached: the program was killed and the rest of its output dropped]")
    if result.killed_signal is not None and not (result.timed_out or result.truncated):
        name = signal.Signals(result.killed_signal).name
        notes.append(f"[the program died of {name}: {SIGNAL_REASONS.get(result.killed_signal, 'killed')}]")
    if result.exit_code not in (0, None):
        notes.append(f"[exit code {result.exit_code}]")
    return notes
