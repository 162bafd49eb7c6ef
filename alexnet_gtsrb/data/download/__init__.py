"""Download and unpack the official GTSRB archives into a data root, safely and resumably.

After a successful run the root holds the layout the rest of the package expects::

    <root>/GTSRB/Final_Training/Images/000NN/*.ppm (+ GT-000NN.csv)   43 class directories   part "train"
    <root>/GTSRB/Final_Test/Images/*.ppm + GT-final_test.csv                                  part "test"

``parts=("test",)`` fetches only the test archives (~85 MB), enough to evaluate a checkpoint on the
official 12,630 test images without the 263 MB training archive.

Why the care: the archives are large (~350 MB) and come from a single academic server, so runs get
interrupted, mirrors get used, and a half-written or tampered archive must never turn into a silently
broken dataset, and a hostile mirror or archive must never fill the disk, hang the run or write outside
the root. Hence: streamed downloads into ``.part`` files (resumed with HTTP Range when possible), capped in
size (1.25x the official size) and in time (an overall deadline per archive, 6 h by default), md5
verification, checks of every zip member before anything is written (path traversal, symlinks, members
that conflict with each other or with what is already in the root, zip-bomb caps on the member count and
on the declared uncompressed size, by default 20x the archive's size), extraction into a temporary
directory (each member cut off past its declared size) followed by renames into place, per-archive
``.extracted`` markers so reruns are cheap, and one-line errors that remove partial files (a ``.part`` is
kept only where a rerun can resume it).

Modules: :mod:`.transport` (HTTP, resume, md5, size cap, progress bars), :mod:`.deadline` (the overall time
limit), :mod:`.archive` (the archive list, sizes, markers, layout check), :mod:`.unpack` (member checks,
safe extraction), :mod:`.__main__` (the command line)::

    python -m alexnet_gtsrb.data.download --root DIR [--only {all,test}] [--mirror URL] [--no-progress]
                                          [--md5 FILE=HASH] [--size FILE=BYTES] [--timeout SECONDS]
                                          [--deadline SECONDS] [--max-unpacked BYTES]
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alexnet_gtsrb.data.download.archive import (
    DOWNLOADS_DIR,
    NO_SPACE_FIX,
    OFFICIAL_ARCHIVES,
    PARTS,
    Archive,
    BadArchiveError,
    DownloadError,
    check_parts,
    is_no_space,
    layout_problems,
    marker_complete,
    marker_path,
    os_error_text,
    validate_archives,
    write_marker,
)
from alexnet_gtsrb.data.download.deadline import DEFAULT_DEADLINE
from alexnet_gtsrb.data.download.transport import (
    DEFAULT_BASE_URL,
    MIRROR_ENV_VAR,
    archive_url,
    cached_archive_ok,
    download,
    resolve_base_url,
)
from alexnet_gtsrb.data.download.unpack import extract, remove_if_empty, remove_stale_extract_dirs

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_DEADLINE",
    "MIRROR_ENV_VAR",
    "OFFICIAL_ARCHIVES",
    "PARTS",
    "ROOT_ENV_VAR",
    "Archive",
    "DownloadError",
    "download_gtsrb",
    "layout_problems",
    "resolve_base_url",
]

ROOT_ENV_VAR = "GTSRB_ROOT"


def _install_archive(
    archive: Archive,
    root: Path,
    downloads: Path,
    base_url: str,
    progress: bool,
    limits: tuple[float, float, int | None],
    say: Callable[[str], None],
) -> None:
    """Make sure one archive is downloaded, verified and unpacked (skipping whatever is already done).

    `limits` is (network timeout, overall download deadline, cap on the declared uncompressed size)."""
    timeout, deadline, max_unpacked = limits
    marker = marker_path(downloads, archive)
    if marker.is_file():
        if marker_complete(marker, root, archive):
            say(f"{archive.filename}: already unpacked, skipping")
            return
        say(f"{archive.filename}: earlier extraction is incomplete or outdated; unpacking again")
        marker.unlink()
    final = downloads / archive.filename
    part = downloads / f"{archive.filename}.part"
    if cached_archive_ok(final, archive, say):
        say(f"{archive.filename}: reusing verified archive {final}")
        part.unlink(missing_ok=True)
    else:
        download(archive_url(base_url, archive.filename), archive, part, final, progress, timeout, say, deadline)
    say(f"{archive.filename}: unpacking")
    try:
        installed = extract(final, root, archive.dest, max_unpacked)
    except BadArchiveError:
        final.unlink(missing_ok=True)
        raise
    write_marker(marker, archive, installed)


def _os_error(exc: OSError, root: Path) -> DownloadError:
    """A one-line DownloadError for a filesystem failure not handled where it happened."""
    if is_no_space(exc):
        folder = Path(exc.filename).parent if exc.filename else root
        return DownloadError(f"no space left on device in {folder} while installing GTSRB into {root}; {NO_SPACE_FIX}")
    return DownloadError(f"could not install GTSRB into {root} ({os_error_text(exc)})")


def _parts_to_fetch(
    root: Path, downloads: Path, archives: Sequence[Archive], parts: Sequence[str], say: Callable[[str], None]
) -> list[str]:
    """The requested parts that need work: a part whose layout is already complete and none of whose
    archives has a marker (unpacked by hand) is left alone."""
    todo = []
    for part in parts:
        markers = [marker_path(downloads, a) for a in archives if a.part == part]
        if not any(m.exists() for m in markers) and not layout_problems(root, (part,)):
            say(f"complete GTSRB {part} layout already present in {root}; nothing to download for it")
            continue
        todo.append(part)
    return todo


def _check_limits(**limits: Any) -> None:
    for name, value in limits.items():
        if name == "max_unpacked" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _fetch_parts(
    root_path: Path,
    archives: Sequence[Archive],
    parts: Sequence[str],
    base: str,
    progress: bool,
    limits: tuple[float, float, int | None],
    say: Callable[[str], None],
) -> None:
    """Fetch and unpack the archives of the parts not yet in place, then check the layout they make."""
    downloads = root_path / DOWNLOADS_DIR
    try:
        root_path.mkdir(parents=True, exist_ok=True)
        remove_stale_extract_dirs(root_path, say)
        todo = _parts_to_fetch(root_path, downloads, archives, parts, say)
        if not todo:
            return
        downloads.mkdir(exist_ok=True)
        for archive in archives:
            if archive.part in todo:
                _install_archive(archive, root_path, downloads, base, progress, limits, say)
    except OSError as exc:  # anything the steps above did not already turn into a message
        raise _os_error(exc, root_path) from exc
    problems = layout_problems(root_path, parts)
    if problems:
        raise DownloadError(
            f"archives unpacked into {root_path} but the GTSRB layout is incomplete: "
            f"{'; '.join(problems)}. "
            f"Delete {downloads} and {root_path / 'GTSRB'} and rerun"
        )


def download_gtsrb(
    root: str | os.PathLike[str],
    base_url: str | None = None,
    archives: Sequence[Archive] = OFFICIAL_ARCHIVES,
    progress: bool = True,
    timeout: float = 60,
    parts: Sequence[str] = PARTS,
    deadline: float = DEFAULT_DEADLINE,
    max_unpacked: int | None = None,
) -> Path:
    """Download, verify and unpack the GTSRB archives of the given parts into root; return the absolute root.

    `parts` selects the parts of the dataset ("train", "test"; default both): only the archives whose
    ``part`` is selected are fetched, and only those parts' layout is required at the end.
    Idempotent, per part: archives already unpacked (per their marker) are skipped, cached archives are
    reused after an md5 check, and a part whose layout is already complete without any marker (unpacked
    by hand) is left alone. `base_url` defaults to $GTSRB_MIRROR, then to the official server.
    Status messages and progress bars go to stderr when `progress` is true.

    Limits against a broken or hostile mirror: `timeout` seconds per network read; `deadline` seconds for
    each archive's whole transfer (passing it raises, keeping the ``.part`` for a resume); at most
    ``Archive.size`` x 1.25 bytes per archive (2 GiB when the size is None); and a cap on the uncompressed
    size an archive's members declare: `max_unpacked` bytes, or by default 20x the archive's size (at least
    16 MiB, at most 2 GiB). Every failure is a DownloadError with a one-line message.
    """
    validate_archives(archives)
    parts = check_parts(parts)
    _check_limits(timeout=timeout, deadline=deadline, max_unpacked=max_unpacked)
    root_path = Path(root).expanduser().resolve()
    base = resolve_base_url(base_url)

    def say(message: str) -> None:
        """Print a status line to stderr when progress output is on."""
        if progress:
            print(f"[gtsrb] {message}", file=sys.stderr, flush=True)

    downloads = root_path / DOWNLOADS_DIR
    for folder in (root_path, downloads):
        if os.path.lexists(folder) and not folder.is_dir():
            raise DownloadError(f"{folder} exists but is not a directory; move it aside or choose another --root")
    root_created = not root_path.exists()
    downloads_created = not downloads.exists()
    try:
        _fetch_parts(root_path, archives, parts, base, progress, (timeout, deadline, max_unpacked), say)
    except BaseException:
        if downloads_created:
            remove_if_empty(downloads)
        if root_created:
            remove_if_empty(root_path)
        raise
    return root_path
