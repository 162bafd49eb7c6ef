"""Small helpers shared by the entry points: user-facing errors, rank-zero printing, checkpoint paths."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lightning.pytorch.utilities import rank_zero_only

from alexnet_gtsrb.errors import UserError

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def _user_error(exc: BaseException) -> BaseException | None:
    """The UserError (or config ValueError raised while building objects) inside an exception chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserError):
            return exc
        if type(exc).__name__ == "InstantiationException" and isinstance(exc.__cause__, ValueError):
            return exc.__cause__
        exc = exc.__cause__ or exc.__context__
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


def resolve_ckpt_path(ckpt_path: str | None, run_dir: str | Path | None = None) -> str | None:
    """The checkpoint file to resume from.

    - a ``.ckpt`` file: itself;
    - a run folder: the newest ``last*.ckpt`` under it;
    - ``last``: the newest ``last*.ckpt`` under ``run_dir`` (this run's output folder, i.e. the folder named by
      ``hydra.run.dir=...``), so the run continues in place.
    """
    if ckpt_path in (None, "", "null"):
        return None
    if str(ckpt_path) == "last":
        if run_dir is None:
            raise UserError("ckpt_path=last needs the run folder: add hydra.run.dir=<the run folder to continue>.")
        found = _newest_last(Path(run_dir))
        if found is None:
            raise UserError(
                f"ckpt_path=last: no last.ckpt under {run_dir}. Name the run folder to continue with "
                "hydra.run.dir=<folder>, or pass ckpt_path=<file.ckpt>."
            )
        return str(found)
    path = Path(str(ckpt_path)).expanduser()
    if path.is_dir():
        found = _newest_last(path)
        if found is None:
            raise UserError(f"ckpt_path={ckpt_path}: no last.ckpt under this folder.")
        return str(found)
    if not path.is_file():
        raise UserError(f"ckpt_path={ckpt_path}: no such checkpoint file.")
    return str(path)


def _newest_last(folder: Path) -> Path | None:
    """The most recently written ``last*.ckpt`` under ``folder`` (None when there is none)."""
    if not folder.is_dir():
        return None
    found = sorted(folder.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None
