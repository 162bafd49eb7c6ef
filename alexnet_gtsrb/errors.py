"""Errors meant for the user: entry points print their message and exit non-zero, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (missing data, bad file, bad config value); the message says how."""

    exit_code = 2


class DataNotFoundError(UserError):
    """No GTSRB tree where the config points."""


class BadDataError(UserError):
    """A file in the GTSRB tree is missing, corrupt or malformed."""


class ConfigError(UserError):
    """A config value that cannot work; the message names the key and the allowed values."""
