"""Problems the user must fix and warnings they should read. main.py prints each error as one line
(no traceback) and exits 2."""
import sys


class DataError(ValueError):
    """A dataset problem: the message names the file or folder and the fix."""


class ConfigError(RuntimeError):
    """A flag asks for something this machine or run cannot do: the message says what to do."""


class CheckpointError(ConfigError):
    """A checkpoint is missing or does not fit the model: the message says what to do."""


class NonFiniteLossError(ConfigError):
    """A loss became NaN or infinite: training stops before anything non-finite is saved."""


def warn(message):
    """Print a one-line warning a user should read (the run goes on)."""
    print(f'warning: {message}', file=sys.stderr, flush=True)
