"""What every entry point shares: user errors as one line (exit 2), rank-zero printing, where ``conf/`` is."""

from __future__ import annotations

import errno
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.experimental.callback import Callback
from lightning.pytorch.utilities import rank_zero_only

from alexnet_gtsrb.errors import UserError
from alexnet_gtsrb.utils.early import config_dir

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


#: a full disk, a quota, a read-only file system, a file too large: the user's to fix, not a bug
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
#: permissions: the user's to fix too
NOT_ALLOWED = {errno.EACCES, errno.EPERM}


def _disk_error(exc: OSError) -> UserError:
    name, elsewhere = exc.filename or "a file", "or write elsewhere (hydra.run.dir=<folder>)."
    if exc.errno in DISK_FULL:
        return UserError(f"cannot write {name}: {exc.strerror}. Free space there, {elsewhere}")
    return UserError(f"{name}: {exc.strerror}. Fix its permissions, {elsewhere}")


def _user_error(exc: BaseException) -> BaseException | None:
    """The UserError (or config ValueError raised while building objects, or a disk or permission error) inside
    an exception chain."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, UserError):
            return current
        if isinstance(current, OSError) and current.errno in DISK_FULL | NOT_ALLOWED:
            return _disk_error(current)
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
        use_extensions(cfg)
        return run(cfg)

    main.__doc__ = f"Compose conf/{config_name}.yaml and run {run.__module__}.{run.__name__}."
    return main


def use_extensions(cfg: Any) -> None:
    """Import the modules ``cfg.extensions`` names (their presets and networks register on import)."""
    if cfg.get("extensions"):
        from alexnet_gtsrb.extensions import load_extensions

        load_extensions(cfg.extensions)


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


class CheckOutputFolder(Callback):
    """Check where a run will write before Hydra creates its folder (registered in ``conf/hydra/default.yaml``).

    Hydra makes ``hydra.run.dir`` (or ``hydra.sweep.dir``) right after this callback: an empty
    ``ALEXNET_GTSRB_LOGS`` would put it at the file-system root, a ``task_name`` with a path in it outside the
    logs folder, and a file in the folder's place ends in a traceback. Each is one line and exit 2 instead.
    """

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        self._check(config, str(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._check(config, str(config.hydra.sweep.dir), "hydra.sweep.dir")

    @staticmethod
    def _check(config: Any, folder: str, key: str) -> None:
        log_dir = config.get("paths", {}).get("log_dir")
        if log_dir is not None and not str(log_dir).strip():
            _refuse("paths.log_dir is empty (is ALEXNET_GTSRB_LOGS set to an empty value?): unset it or name a folder.")
        task = str(config.get("task_name", "run"))
        if not task.strip() or task in (".", "..") or "/" in task or "\\" in task:
            _refuse(f"task_name={task!r} must be a plain name (it becomes a folder under paths.log_dir).")
        path = Path(folder)
        if path.exists() and not path.is_dir():
            _refuse(f"{key}={folder} is a file, not a folder: name another folder.")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _refuse(f"{key}={folder}: cannot create the folder ({exc.strerror}): name a writable folder.")
