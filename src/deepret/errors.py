"""The exception types that the CLI turns into a one-line error and exit status 2."""


class DeepretError(Exception):
    """A user-facing error: the message names the file or value at fault and what to do."""


class WeightsUnavailableError(DeepretError):
    """Pretrained weights cannot be had here (no network, no cached file, package missing)."""


class DeepretWarning(UserWarning):
    """A user-facing warning (e.g. a fallback taken): the CLI prints it as one line `deepret: warning: ...`."""
