"""The base of every error meant for the user as it stands: the CLI prints its message in one line."""


class ReinflowError(ValueError):
    """A problem with the user's input (config, data, model, plugin), explained in its message."""


class RunInterrupted(RuntimeError):
    """The machinery under a run failed (a policy worker died, the engine crashed, the disk filled),
    not the user's input. What finished is kept; ``reinflow train --resume latest`` continues. The
    CLI prints its message in one line."""


class SandboxUnavailableError(RuntimeError):
    """No safe way to run code was found (as root: privileges could not be dropped)."""
