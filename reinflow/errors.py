"""The base of every error meant for the user as it stands: the CLI prints its message in one line."""


class ReinflowError(ValueError):
    """A problem with the user's input (config, data, model, plugin), explained in its message."""


class RunInterrupted(RuntimeError):
    """The machinery under a run failed (a policy worker died, the engine crashed, the disk filled),
    not the user's input. What finished is kept; ``reinflow train --resume latest`` continues. The
    CLI prints its message in one line."""


class EngineUnavailableError(ReinflowError):
    """The configured rollout engine's library is missing or not the version reinflow was built
    against (the message names the version and the install command)."""


class SandboxUnavailableError(RuntimeError):
    """No safe way to run code was found (as root: privileges could not be dropped)."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` as one line for the user: its first non-blank line, stripped, or
    the exception's class name where the message is empty (``raise ValueError()``).

    Tracebacks of user code, pydantic, PyYAML, Ray and Prefect put a headline first and details
    on the lines below; a reinflow error message is one line, so the headline is what is shown.
    Every place that turns a caught exception into part of a message goes through this function.

    >>> one_line(ValueError("cannot parse row 3\\n  line 3, column 7\\n    ^"))
    'cannot parse row 3'
    >>> one_line(RuntimeError("\\n\\n  worker died  \\n(pid 12)"))
    'worker died'
    >>> one_line(KeyError())
    'KeyError'
    >>> one_line(OSError(" \\n\\t"))
    'OSError'
    """
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__
