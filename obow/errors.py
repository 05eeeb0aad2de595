"""User-facing errors: one line that says what is wrong and how to fix it."""


class ObowError(Exception):
    """An error caused by the user's input (config, data, checkpoint), not by a bug.

    The CLI prints it as one line and exits with status 2; the lab stores it as the run's error.
    """


class ConfigError(ObowError):
    pass


class DataError(ObowError):
    pass


class CheckpointError(ObowError):
    pass


class StopRequested(Exception):
    """Raised inside a run when its reporter asks it to stop (cancellation, time budget)."""
