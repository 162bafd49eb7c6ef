"""Files: write atomically (temp file in the same folder, fsync, rename), check free space, find the cache root."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from alexnet_gtsrb.errors import UserError

CACHE_ENV = "ALEXNET_GTSRB_CACHE"


def cache_root() -> Path:
    """Where generated data and caches live: ``$ALEXNET_GTSRB_CACHE``, else ``~/.cache/alexnet_gtsrb``."""
    base = os.environ.get(CACHE_ENV)
    return Path(base).expanduser() if base else Path.home() / ".cache" / "alexnet_gtsrb"


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is fsynced and renamed over ``target``.

    A crash or an exception at any moment leaves either the old complete file or the new complete one,
    never a half-written ``target``; the temporary file is removed on failure. The new file gets the
    mode a plain ``open(..., "w")`` would give (0666 less the umask), not ``mkstemp``'s 0600.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike[str], mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """``open(target, mode)`` that replaces ``target`` only once everything was written (see :func:`atomic_path`)."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_write opens files for writing, got mode {mode!r}")
    with atomic_path(target) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f
        f.flush()


def require_free_space(
    where: str | os.PathLike[str], needed: int, what: str, fix: str, error: type[UserError] = UserError
) -> None:
    """Raise ``error`` naming ``what``, the sizes and ``fix`` when ``where`` has fewer than ``needed`` bytes free."""
    folder = Path(where)
    while not folder.exists() and folder != folder.parent:  # the nearest existing ancestor
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise error(
            f"not enough disk space in {where} for {what}: need {needed / 2**20:,.0f} MiB, "
            f"{free / 2**20:,.0f} MiB free; {fix}"
        )
