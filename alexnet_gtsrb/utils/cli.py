"""What every entry point shares: user errors as one line (exit 2), rank-zero printing, where ``conf/`` is."""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.experimental.callback import Callback
from lightning.pytorch.utilities import rank_zero_only

from alexnet_gtsrb.errors import UserError
from alexnet_gtsrb.utils.early import config_dir

F = TypeVar("F", bound=Callable[..., Any])


#: a full disk, a quota, a read-only file system, a file too large, and permissions: the user's to fix, not a bug
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
NOT_ALLOWED = {errno.EACCES, errno.EPERM}


def _user_error(exc: BaseException) -> BaseException | None:
    """The UserError (or a config ValueError from building objects, or a disk or permission error) in a chain."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, UserError):
            return current
        if isinstance(current, OSError) and current.errno in DISK_FULL | NOT_ALLOWED:
            name, elsewhere = current.filename or "a file", "or write elsewhere (hydra.run.dir=<folder>)."
            if current.errno in DISK_FULL:
                return UserError(f"cannot write {name}: {current.strerror}. Free space there, {elsewhere}")
            return UserError(f"{name}: {current.strerror}. Fix its permissions, {elsewhere}")
        if type(current).__name__ == "InstantiationException" and isinstance(current.__cause__, ValueError):
            return current.__cause__
        current = current.__cause__ or current.__context__
    return None


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
            text = str(user)
            if "Original Traceback" in text:  # re-raised from a DataLoader worker: the last line is the message
                last = text.strip().splitlines()[-1]
                text = last.split(": ", 1)[1] if ": " in last else last
            print(f"{getattr(user, 'prefix', 'error: ')}{text}", file=sys.stderr, flush=True)
            sys.exit(getattr(user, "exit_code", 2))

    return wrapper  # type: ignore[return-value]


@rank_zero_only
def print_rank_zero(*args: Any) -> None:
    """print() on global rank zero only (DDP runs one process per device)."""
    print(*args, flush=True)


#: ``config_path`` for ``@hydra.main`` (an absolute path, so it works from any working directory).
CONFIG_PATH = str(config_dir())


def hydra_entry_point(config_name: str, run: Callable[[Any], Any]) -> Callable[[], Any]:
    """``main()`` for an entry point: Hydra's ``@hydra.main`` for ``conf/<config_name>.yaml`` around ``run(cfg)``
    (whose return value goes to a sweeper), user errors as one line and exit 2."""
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


class CheckOutputFolder(Callback):
    """Check where a run will write before Hydra creates its folder (``conf/hydra/default.yaml``): an empty
    ``ALEXNET_GTSRB_LOGS`` would put it at the file-system root, a ``task_name`` with a path in it outside the logs
    folder, and a file in the folder's place ends in a traceback. Each is one line and exit 2 instead."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        _check_output_folder(config, str(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _check_output_folder(config, str(config.hydra.sweep.dir), "hydra.sweep.dir")


@exit_on_user_error
def _check_output_folder(config: Any, folder: str, key: str) -> None:
    log_dir = config.get("paths", {}).get("log_dir")
    if log_dir is not None and not str(log_dir).strip():
        raise UserError(
            "paths.log_dir is empty (is ALEXNET_GTSRB_LOGS set to an empty value?): unset it or name a folder."
        )
    task = str(config.get("task_name", "run"))
    if not task.strip() or task in (".", "..") or "/" in task or "\\" in task:
        raise UserError(f"task_name={task!r} must be a plain name (it becomes a folder under paths.log_dir).")
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise UserError(f"{key}={folder} is a file, not a folder: name another folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{key}={folder}: cannot create the folder ({exc.strerror}): name a writable folder.") from None
