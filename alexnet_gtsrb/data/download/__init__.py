"""Download and unpack the official GTSRB archives into a data root, safely and resumably.

After a successful run the root holds the layout the rest of the package expects::

    <root>/GTSRB/Final_Training/Images/000NN/*.ppm (+ GT-000NN.csv)   43 class directories   part "train"
    <root>/GTSRB/Final_Test/Images/*.ppm + GT-final_test.csv                                  part "test"

``parts=("test",)`` fetches only the test archives (~85 MB), enough to evaluate a checkpoint on the
official 12,630 test images without the 263 MB training archive.

Why the care: the archives are large (~350 MB) and come from a single academic server, so runs get
interrupted, mirrors get used, and a half-written or tampered archive must never turn into a silently
broken dataset. Hence: streamed downloads into ``.part`` files (resumed with HTTP Range when possible),
md5 verification, path-traversal/symlink checks on every zip member, extraction into a temporary
directory followed by renames into place, and per-archive ``.extracted`` markers so reruns are cheap.

Modules: :mod:`.transport` (HTTP, resume, md5, progress bars), :mod:`.archive` (the archive list, safe
extraction, markers, layout check), :mod:`.__main__` (the command line)::

    python -m alexnet_gtsrb.data.download --root DIR [--only {all,test}] [--mirror URL] [--no-progress]
                                          [--md5 FILE=HASH] [--timeout SECONDS]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alexnet_gtsrb.data.download.archive import (
    DOWNLOADS_DIR,
    OFFICIAL_ARCHIVES,
    PARTS,
    Archive,
    BadArchiveError,
    DownloadError,
    check_parts,
    extract,
    layout_problems,
    marker_complete,
    marker_path,
    remove_if_empty,
    remove_stale_extract_dirs,
    validate_archives,
    write_marker,
)
from alexnet_gtsrb.data.download.transport import (
    DEFAULT_BASE_URL,
    MIRROR_ENV_VAR,
    archive_url,
    cached_archive_ok,
    download,
    resolve_base_url,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "MIRROR_ENV_VAR",
    "OFFICIAL_ARCHIVES",
    "PARTS",
    "ROOT_ENV_VAR",
    "Archive",
    "DownloadError",
    "download_gtsrb",
    "layout_problems",
    "main",
    "resolve_base_url",
]

ROOT_ENV_VAR = "GTSRB_ROOT"


def __getattr__(name: str) -> Any:
    """``main`` (the command line) is imported on first use: importing ``__main__`` here would make
    ``python -m alexnet_gtsrb.data.download`` warn that the module was already imported."""
    if name == "main":
        from alexnet_gtsrb.data.download.__main__ import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _install_archive(
    archive: Archive,
    root: Path,
    downloads: Path,
    base_url: str,
    progress: bool,
    timeout: float,
    say: Callable[[str], None],
) -> None:
    """Make sure one archive is downloaded, verified and unpacked (skipping whatever is already done)."""
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
        download(archive_url(base_url, archive.filename), archive, part, final, progress, timeout, say)
    say(f"{archive.filename}: unpacking")
    try:
        installed = extract(final, root, archive.dest)
    except BadArchiveError:
        final.unlink(missing_ok=True)
        raise
    write_marker(marker, archive, installed)


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


def download_gtsrb(
    root: str | os.PathLike[str],
    base_url: str | None = None,
    archives: Sequence[Archive] = OFFICIAL_ARCHIVES,
    progress: bool = True,
    timeout: float = 60,
    parts: Sequence[str] = PARTS,
) -> Path:
    """Download, verify and unpack the GTSRB archives of the given parts into root; return the absolute root.

    `parts` selects the parts of the dataset ("train", "test"; default both): only the archives whose
    ``part`` is selected are fetched, and only those parts' layout is required at the end.
    Idempotent, per part: archives already unpacked (per their marker) are skipped, cached archives are
    reused after an md5 check, and a part whose layout is already complete without any marker (unpacked
    by hand) is left alone. `base_url` defaults to $GTSRB_MIRROR, then to the official server.
    Status messages and progress bars go to stderr when `progress` is true.
    """
    validate_archives(archives)
    parts = check_parts(parts)
    root_path = Path(root).expanduser().resolve()
    base = resolve_base_url(base_url)

    def say(message: str) -> None:
        """Print a status line to stderr when progress output is on."""
        if progress:
            print(f"[gtsrb] {message}", file=sys.stderr, flush=True)

    root_created = not root_path.exists()
    root_path.mkdir(parents=True, exist_ok=True)
    downloads = root_path / DOWNLOADS_DIR
    downloads_created = not downloads.exists()
    try:
        remove_stale_extract_dirs(root_path, say)
        todo = _parts_to_fetch(root_path, downloads, archives, parts, say)
        if not todo:
            return root_path
        downloads.mkdir(exist_ok=True)
        for archive in archives:
            if archive.part in todo:
                _install_archive(archive, root_path, downloads, base, progress, timeout, say)
        problems = layout_problems(root_path, parts)
        if problems:
            raise DownloadError(
                f"archives unpacked into {root_path} but the GTSRB layout is incomplete: "
                f"{'; '.join(problems)}. "
                f"Delete {downloads} and {root_path / 'GTSRB'} and rerun"
            )
    except BaseException:
        if downloads_created:
            remove_if_empty(downloads)
        if root_created:
            remove_if_empty(root_path)
        raise
    return root_path
