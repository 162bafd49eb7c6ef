"""Errors meant for the user: entry points print their message and exit non-zero, without a traceback."""

from __future__ import annotations

from typing import overload


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


@overload
def int_setting(key: str, value: object, minimum: int, maximum: int | None = None) -> int: ...


@overload
def int_setting(key: str, value: object, minimum: int, maximum: int | None = None, *, null: str) -> int | None: ...


def int_setting(key: str, value: object, minimum: int, maximum: int | None = None, *, null: str = "") -> int | None:
    """``value`` as an int when it is a whole number in [minimum, maximum] (None: no upper bound); else a
    ConfigError naming ``key``, the value and the allowed range. ``null``: what null means where null is allowed
    (it is returned as None); empty: null is refused too. ``true`` is refused although Python counts it as 1."""
    if value is None and null:
        return None
    number = value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, float) and value.is_integer():
        number = int(value)
    if number is not None and minimum <= number and (maximum is None or number <= maximum):
        return number
    allowed = f"a whole number >= {minimum}" if maximum is None else f"a whole number from {minimum} to {maximum}"
    raise ConfigError(f"{key}={value!r} must be {allowed}" + (f", or null ({null})." if null else "."))
