"""What every entry point shares: user errors as one line (exit 2), rank-zero printing, where ``conf/`` is."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from lightning.pytorch.utilities import rank_zero_only

from alexnet_gtsrb.errors import UserError
from alexnet_gtsrb.utils.early import config_dir

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def _user_error(exc: BaseException) -> BaseException | None:
    """The UserError (or config ValueError raised while building objects) inside an exception chain."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, UserError):
            return current
        if type(current).__name__ == "InstantiationException" and isinstance(current.__cause__, ValueError):
            return current.__cause__
        current = current.__cause__ or current.__context__
    return None


def _message(exc: BaseException) -> str:
    text = str(exc)
    # Errors re-raised from DataLoader workers carry the worker's traceback in the message: keep the
    # last line, which is the original message.
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def exit_on_user_error(fn: F) -> F:
    """Run an entry point; a UserError prints one clear message and exits non-zero, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is the user's to fix
            user = _user_error(exc)
            if user is None:
                raise
            print(f"{getattr(user, 'prefix', 'error: ')}{_message(user)}", file=sys.stderr, flush=True)
            sys.exit(getattr(user, "exit_code", 2))

    return wrapper  # type: ignore[return-value]


@rank_zero_only
def print_rank_zero(*args: Any) -> None:
    """print() on global rank zero only (DDP runs one process per device)."""
    print(*args, flush=True)


#: ``config_path`` for ``@hydra.main`` (an absolute path, so it works from any working directory).
CONFIG_PATH = str(config_dir())


def hydra_entry_point(config_name: str, run: Callable[[Any], Any]) -> Callable[[], Any]:
    """``main()`` for an entry point that composes ``conf/<config_name>.yaml``: Hydra's ``@hydra.main`` around
    ``run(cfg)``, user errors as one line and exit 2. Its return value goes to a sweeper."""
    import hydra

    @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)
    @exit_on_user_error
    def main(cfg: Any) -> Any:
        return run(cfg)

    main.__doc__ = f"Compose conf/{config_name}.yaml and run {run.__module__}.{run.__name__}."
    return main
