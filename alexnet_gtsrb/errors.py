"""Errors meant for the user: entry points print their message and exit non-zero, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (missing data, bad file, bad config value); the message says how."""

    exit_code = 2
    prefix = "error: "

    def __init__(self, message: str = "", *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class DataNotFoundError(UserError):
    """No GTSRB tree where the config points."""


class BadDataError(UserError):
    """A file in the GTSRB tree is missing, corrupt or malformed."""


class BadFileError(UserError):
    """A file read by name that is not a regular file (a folder, pipe or device) or is over its size cap."""


class ConfigError(UserError):
    """A config value that cannot work; the message names the key and the allowed values."""


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite (the run diverged)."""


class TrainingInterrupted(UserError):
    """Training stopped on a signal after saving a checkpoint; exits with 128 + the signal number."""

    exit_code = 143
    prefix = ""
