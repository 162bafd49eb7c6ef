"""Files: read only regular files of a sane size, write atomically (temp file in the same folder, fsync, rename),
check free space, find the cache root. Every file the project reads by name goes through :func:`open_regular_file`
first: a named pipe would block the open or the read forever, ``/dev/zero`` would be read until memory runs out,
and a file far larger than its kind ever is would cost that memory too; each is refused in one line naming it.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
import stat
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO

from alexnet_gtsrb.errors import BadFileError, ConfigError, UserError

StrPath = str | os.PathLike[str]
#: Checkpoints and weight files: an AlexNet checkpoint with optimizer state and an EMA copy is under 1 GiB.
MAX_CHECKPOINT_BYTES = 8 * 1024**3
#: TensorBoard event files: scalars plus the figures the callbacks log each epoch.
MAX_EVENTS_BYTES = 2 * 1024**3
#: JSON, YAML and CSV files of a run (metrics, calibration, configs, markers): kilobytes to a few MB.
MAX_TEXT_BYTES = 64 * 1024**2
#: What a file is, in words, by the type letter of ``stat.filemode``, when it is not a regular file.
_KINDS = dict(d="a folder", p="a named pipe (FIFO)", c="a character device", b="a block device", s="a socket")


def _sentence(path: StrPath, text: str, fix: str) -> str:
    return f"{os.fspath(path)}: {text}" + (f" {fix}" if fix else "")


def _open_checked(
    path: StrPath, flags: int, what: str, max_bytes: int | None, fix: str, error: type[UserError]
) -> tuple[int, int]:
    """(descriptor, size) of ``path`` opened with ``flags`` once it is a regular file of at most ``max_bytes``.
    ``O_NONBLOCK``: opening a named pipe returns at once (its type is refused right after); the type and size come
    from ``fstat`` of the opened file, so they are those of the file that is read."""
    try:
        fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0), 0o666)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise error(_sentence(path, f"{what} cannot be opened ({getattr(e, 'strerror', None) or e}).", fix)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        problem = f"is not a regular file but {_KINDS.get(stat.filemode(st.st_mode)[0], 'another kind of file')}"
    elif max_bytes is not None and st.st_size > max_bytes:
        problem = f"of {st.st_size:,} bytes is over the limit of {max_bytes:,}"
    else:
        return fd, st.st_size
    os.close(fd)
    raise error(_sentence(path, f"{what} {problem}; refused without reading it.", fix))


def open_regular_file(
    path: StrPath, what: str, max_bytes: int | None, fix: str = "", error: type[UserError] = BadFileError
) -> tuple[int, BinaryIO]:
    """(size, the file opened for binary reading) when ``path`` is a regular file of at most ``max_bytes``
    (None: no cap); otherwise ``error`` in one line naming the file, ``what`` it should be, why, and ``fix``.
    A missing file raises :class:`FileNotFoundError` unchanged: callers say in their own terms what to do."""
    fd, size = _open_checked(path, os.O_RDONLY | getattr(os, "O_BINARY", 0), what, max_bytes, fix, error)
    return size, os.fdopen(fd, "rb")


def check_regular_file(
    path: StrPath, what: str, max_bytes: int | None, fix: str = "", error: type[UserError] = BadFileError
) -> Path:
    """``path`` as a Path once :func:`open_regular_file` accepts it, for readers that open it by name themselves
    (``torch.load``, TensorBoard's event reader, ``np.load``)."""
    open_regular_file(path, what, max_bytes, fix, error)[1].close()
    return Path(path)


def open_lock_file(path: StrPath, what: str, fix: str = "") -> IO[str]:
    """``path`` opened (created if missing) for reading and writing as a lock file, or :class:`BadFileError` in one
    line when something else sits there (a blocking open of a named pipe for writing would wait for a reader)."""
    return os.fdopen(_open_checked(path, os.O_RDWR | os.O_CREAT, what, None, fix, BadFileError)[0], "r+")


def read_text_file(
    path: StrPath, what: str, max_bytes: int = MAX_TEXT_BYTES, fix: str = "", error: type[UserError] = BadFileError
) -> str:
    """The UTF-8 text of a file :func:`open_regular_file` accepts, read from the file it checked, at most
    ``max_bytes`` (a file that grew past the cap since it was checked is refused too)."""
    with open_regular_file(path, what, max_bytes, fix, error)[1] as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise error(_sentence(path, f"{what} cannot be read ({e.strerror or e}).", fix)) from None
    if len(data) > max_bytes:
        raise error(_sentence(path, f"{what} grew over the limit of {max_bytes:,} bytes while read; refused.", fix))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(_sentence(path, f"{what} is not UTF-8 text (byte offset {e.start}).", fix)) from None


def cache_root() -> Path:
    """Where generated data and caches live: ``$ALEXNET_GTSRB_CACHE``, else ``~/.cache/alexnet_gtsrb``."""
    base = os.environ.get("ALEXNET_GTSRB_CACHE")
    return Path(base).expanduser() if base else Path.home() / ".cache" / "alexnet_gtsrb"


def cache_folder(cache_dir: StrPath | None, default: Path, write: bool = False) -> Path:
    """The folder ``data.cache_dir`` names (``default`` when null), created if missing; a ConfigError naming the
    key when it is not a folder, cannot be created, or, with ``write`` (building a cache; reading a complete one
    needs no write), is read-only. A mode without write bits is read-only for root too: it was set on purpose."""
    folder = Path(os.path.expanduser(str(cache_dir))) if cache_dir else default
    setting = f"data.cache_dir={cache_dir or 'null'}"
    fix = "point data.cache_dir at a writable folder or set data.cache=false"
    if folder.exists() and not folder.is_dir():
        kind = _KINDS.get(stat.filemode(folder.stat().st_mode)[0], "a file")
        raise ConfigError(f"{setting}: {folder} is {kind}, not a folder; {fix}.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{setting}: the folder {folder} cannot be created ({exc.strerror or exc}); {fix}.") from None
    marked = not folder.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    if write and (marked or not os.access(folder, os.W_OK | os.X_OK)):
        raise ConfigError(
            f"{setting}: the folder {folder} is read-only, so the image cache cannot be built there; {fix}."
        )
    return folder


@contextlib.contextmanager
def atomic_path(target: StrPath) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is fsynced and renamed over ``target``, so a crash
    or an exception at any moment leaves the old complete file or the new one (the temporary file is removed)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    open(tmp, "xb").close()  # created as a plain open() creates files: 0666 less the umask
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename durable (a no-op where folders cannot be opened)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def atomic_write(target: StrPath, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """``open(target, mode)`` that replaces ``target`` only once everything was written (see :func:`atomic_path`)."""
    with atomic_path(target) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f
        f.flush()


def require_free_space(where: StrPath, needed: int, what: str, fix: str, error: type[UserError] = UserError) -> None:
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


def write_table(
    rows: Sequence[Mapping[str, Any]],
    folder: Path,
    stem: str,
    title: str = "",
    footer: Mapping[str, Any] | None = None,
    columns: Sequence[str] = (),
) -> None:
    """Every table the project writes: ``<stem>.csv`` (the values; empty cells for None, NaN, inf) and ``<stem>.md``
    (``title``, a Markdown table of the same rows, floats with 4 decimals (1 in ``*_s`` columns of seconds), the
    ``footer`` row) in ``folder``; ``columns`` (default: the first row's keys) also heads an empty table."""
    columns = list(columns or (rows[0] if rows else []))

    def missing(value: Any) -> bool:
        return value is None or (isinstance(value, float) and not math.isfinite(value))

    def cell(value: Any, column: str) -> str:
        if isinstance(value, float) and not missing(value):
            return f"{value:.1f}" if column.endswith("_s") else f"{value:.4f}"
        return "" if missing(value) else str(value).replace("|", "\\|")

    with open(folder / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: "" if missing(v) else v for k, v in r.items()} for r in rows)
    lines = [title, ""] if title else []
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in [*rows, *([footer] if footer else [])]:
        lines.append("| " + " | ".join(cell(r.get(c), c) for c in columns) + " |")
    (folder / f"{stem}.md").write_text("\n".join(lines) + "\n")
