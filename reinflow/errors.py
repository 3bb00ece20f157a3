"""The base of every error meant for the user as it stands: the CLI prints its message in one line."""


class ReinflowError(ValueError):
    """A problem with the user's input (config, data, model, plugin), explained in its message."""
