"""Unpacking one archive safely: every member is checked before anything is written (unsafe paths, symbolic
links, members that conflict with each other, zip-bomb caps on the member count and the declared
uncompressed size, files or directories of the data root in the way), then the members are unpacked into a
temporary directory under the root, each one cut off if it yields more bytes than it declares, and the
result is renamed into place. Any failure removes the temporary directory."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from alexnet_gtsrb.data.download.archive import (
    CHUNK_SIZE,
    DEFAULT_MAX_UNPACKED,
    EXTRACT_PREFIX,
    MAX_MEMBERS,
    MAX_RATIO,
    NO_SPACE_FIX,
    RATIO_FLOOR,
    SEPARATORS,
    BadArchiveError,
    DownloadError,
    is_no_space,
    os_error_text,
    unsafe_reason,
)
from alexnet_gtsrb.utils.files import require_free_space

#: Disk space comes in blocks (4 KiB on ext4, xfs and tmpfs): a 1-byte file takes a whole block, which adds
#: tens of MB over the ~39,000 small training images, so the free-space check rounds every file up.
_BLOCK = 4096
#: What reading a damaged member can raise: bad CRC / truncated data, a broken deflate stream, an unsupported
#: compression method, an encrypted member.
_CORRUPT = (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError)

Parts = tuple[str, ...]


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    """True when the member's Unix mode bits (zip external attributes) mark it as a symbolic link."""
    return stat.S_ISLNK(info.external_attr >> 16)


def _parts(name: str) -> Parts:
    """Split a (checked) member name on / or \\ into path components, dropping empty and '.' parts."""
    return tuple(p for p in SEPARATORS.split(name) if p not in ("", "."))


def _refuse(archive_name: str, what: str, done: str = "nothing was extracted") -> BadArchiveError:
    """The error for an archive that must not be unpacked (it gets deleted)."""
    return BadArchiveError(
        f"refusing to extract {archive_name}: {what}; {done} and the archive was deleted. "
        "Check where it came from (--mirror)"
    )


# ------------------------------------------------------------------------------------------ member checks


def _conflict(archive_name: str, member: str, other: str, path: Parts) -> BadArchiveError:
    """Two members that cannot both be unpacked (same file twice, or one path both a file and a directory)."""
    where = "/".join(path)
    if member == other:
        return _refuse(archive_name, f"member '{member}' appears twice")
    return _refuse(archive_name, f"member '{member}' conflicts with member '{other}' (both claim '{where}')")


def _check_conflicts(info: zipfile.ZipInfo, files: dict[Parts, str], dirs: dict[Parts, str], name: str) -> None:
    """Record one member's path, refusing it if an earlier member makes it impossible: a file where a
    directory is needed (its own path or a parent), a directory where a file is, or the same file twice."""
    parts = _parts(info.filename)
    if not parts:
        return
    for i in range(1, len(parts)):
        if parts[:i] in files:
            raise _conflict(name, info.filename, files[parts[:i]], parts[:i])
        dirs.setdefault(parts[:i], info.filename)
    if parts in files:
        raise _conflict(name, info.filename, files[parts], parts)
    if info.is_dir():
        dirs.setdefault(parts, info.filename)
    elif parts in dirs:
        raise _conflict(name, info.filename, dirs[parts], parts)
    else:
        files[parts] = info.filename


def unpacked_cap(archive_bytes: int, max_unpacked: int | None) -> tuple[int, str]:
    """The cap on an archive's declared uncompressed size, and how it was set: `max_unpacked` when given,
    else MAX_RATIO times the archive's size, within [RATIO_FLOOR, DEFAULT_MAX_UNPACKED]."""
    if max_unpacked is not None:
        return max_unpacked, "set with --max-unpacked"
    cap = min(max(MAX_RATIO * archive_bytes, RATIO_FLOOR), DEFAULT_MAX_UNPACKED)
    return (
        cap,
        f"{MAX_RATIO}x the archive's {archive_bytes:,} bytes, within {RATIO_FLOOR:,} to {DEFAULT_MAX_UNPACKED:,}",
    )


def checked_members(zf: zipfile.ZipFile, archive_name: str, cap: tuple[int, str]) -> list[zipfile.ZipInfo]:
    """All members of the zip, after refusing the whole archive if any member is unsafe, if two members
    conflict, or if it holds more members or declares more uncompressed bytes (`cap`: the limit and how it
    was set) than a GTSRB archive could."""
    members = zf.infolist()
    for info in members:
        reason = unsafe_reason(info.filename)
        if reason is None and _is_symlink(info):
            reason = "symbolic link"
        if reason is not None:
            raise _refuse(archive_name, f"member '{info.filename}' is unsafe ({reason})")
    if len(members) > MAX_MEMBERS:
        raise _refuse(archive_name, f"it holds {len(members):,} members, more than the {MAX_MEMBERS:,} allowed")
    files: dict[Parts, str] = {}
    dirs: dict[Parts, str] = {}
    for info in members:
        _check_conflicts(info, files, dirs, archive_name)
    total = sum(info.file_size for info in members if not info.is_dir())
    if total > cap[0]:
        raise _refuse(
            archive_name,
            f"its members declare {total:,} bytes uncompressed, more than the cap of {cap[0]:,} bytes ({cap[1]}): "
            "a zip bomb, or not a GTSRB archive (if it is genuine, set a higher cap with --max-unpacked BYTES)",
        )
    return members


def _check_root(root: Path, base: Parts, members: list[zipfile.ZipInfo], archive_name: str) -> None:
    """Refuse (DownloadError, the archive is kept) when something already in root is in the way of a member:
    a file where a directory must go, or a directory where a file must go. Checked before anything is written,
    so that a refusal leaves the root unchanged."""
    absent: set[Parts] = set()
    checked: set[Parts] = set()

    def in_the_way(target: Path, what: str) -> DownloadError:
        return DownloadError(
            f"cannot unpack {archive_name} into {root}: {what}, but {target} is in the way; move it aside and rerun"
        )

    def need_dir(rel: Parts, who: str) -> None:
        if rel in checked:
            return
        checked.add(rel)
        target = root.joinpath(*rel)
        if rel[:-1] in absent or not os.path.lexists(target):
            absent.add(rel)
        elif not target.is_dir():
            raise in_the_way(target, f"{who} needs a directory there")

    for i in range(1, len(base) + 1):
        need_dir(base[:i], f"its destination '{'/'.join(base)}'")
    for info in members:
        rel = base + _parts(info.filename)
        if len(rel) == len(base):
            continue
        who = f"member '{info.filename}'"
        for i in range(len(base) + 1, len(rel)):
            need_dir(rel[:i], who)
        if info.is_dir():
            need_dir(rel, who)
        elif rel[:-1] not in absent:
            target = root.joinpath(*rel)
            if target.is_dir() and not target.is_symlink():
                raise in_the_way(target, f"{who} is a file")


# --------------------------------------------------------------------------------------------- extraction


def _move(source: Path, target: Path) -> None:
    """Rename source onto target (atomic on one filesystem); copy-and-delete across filesystems, e.g.
    when <root>/GTSRB is a symlink to another disk."""
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.move(source, target)


def _merge_tree(src: Path, dst: Path) -> None:
    """Move everything under src into dst with renames: new entries move whole, directories merge,
    existing files are atomically replaced by the archive's version."""
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        source, target = Path(entry.path), dst / entry.name
        if entry.is_dir(follow_symlinks=False):
            if target.is_dir():
                _merge_tree(source, target)
            elif target.exists() or target.is_symlink():
                raise DownloadError(f"cannot install directory {target}: a file is in the way; move it aside")
            else:
                _move(source, target)
        else:
            if target.is_dir() and not target.is_symlink():
                raise DownloadError(f"cannot install file {target}: a directory is in the way; move it aside")
            _move(source, target)


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, archive_name: str) -> None:
    """Unpack one file member, stopping as soon as it yields more bytes than it declares."""
    written = 0
    with zf.open(info) as src, open(target, "wb") as out:
        while chunk := src.read(CHUNK_SIZE):
            written += len(chunk)
            if written > info.file_size:
                raise _refuse(
                    archive_name,
                    f"member '{info.filename}' unpacks to more than the {info.file_size:,} bytes it declares "
                    "(a zip bomb or a corrupt archive)",
                    "extraction stopped, nothing was installed",
                )
            out.write(chunk)


def _unpack(
    zf: zipfile.ZipFile, members: list[zipfile.ZipInfo], tmp: Path, base: Parts, name: str
) -> dict[str, list[str]]:
    """Unpack the checked members under tmp/base; return {directory relative to tmp: [file names]}."""
    dest = tmp.joinpath(*base)
    dest.mkdir(parents=True, exist_ok=True)
    installed: dict[str, list[str]] = {}
    for info in members:
        parts = _parts(info.filename)
        if not parts:
            continue
        target = dest.joinpath(*parts)
        if not target.resolve().is_relative_to(tmp.resolve()):  # belt and braces
            raise BadArchiveError(
                f"refusing to extract {name}: member '{info.filename}' resolves outside the extraction directory"
            )
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_member(zf, info, target, name)
        rel = target.relative_to(tmp)
        installed.setdefault(rel.parent.as_posix(), []).append(rel.name)
    return installed


def _os_error(exc: OSError, archive_path: Path, root: Path, merging: bool) -> DownloadError:
    """A one-line DownloadError for a filesystem failure while unpacking (the archive itself is kept)."""
    after = (
        "some of its files may already be in place; rerun once fixed"
        if merging
        else f"the partly unpacked files were removed; the verified archive is kept in {archive_path.parent}"
    )
    if is_no_space(exc):
        return DownloadError(
            f"no space left on device in {root} while unpacking {archive_path.name}; {after}; {NO_SPACE_FIX}"
        )
    return DownloadError(f"could not unpack {archive_path.name} into {root} ({os_error_text(exc)}); {after}")


def extract(archive_path: Path, root: Path, dest: str, max_unpacked: int | None = None) -> dict[str, list[str]]:
    """Unpack the archive under root/dest through a temporary directory under root.

    `max_unpacked` caps the total uncompressed size the members may declare (None: see `unpacked_cap`).

    Returns the installed files, as {directory relative to root: [file names]}, for the marker.
    BadArchiveError (the caller deletes the archive) for a corrupt or hostile archive; DownloadError for
    a root that cannot take it (something in the way, no space left).
    """
    name = archive_path.name
    try:
        zf = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise BadArchiveError(
            f"{name} is not a valid zip archive ({exc}); it was deleted, rerun to download it again"
        ) from exc
    with zf:
        members = checked_members(zf, name, unpacked_cap(archive_path.stat().st_size, max_unpacked))
        base = _parts(dest)
        _check_root(root, base, members, name)
        needed = sum(-(-info.file_size // _BLOCK) * _BLOCK for info in members if not info.is_dir())
        require_free_space(root, needed, f"unpacking {name}", NO_SPACE_FIX, error=DownloadError)
        merging = False
        try:
            tmp = Path(tempfile.mkdtemp(prefix=EXTRACT_PREFIX, dir=root))
        except OSError as exc:
            raise _os_error(exc, archive_path, root, merging) from exc
        try:
            installed = _unpack(zf, members, tmp, base, name)
            merging = True
            _merge_tree(tmp, root)
        except DownloadError:  # already says what happened (and is a RuntimeError, like some of _CORRUPT)
            raise
        except _CORRUPT as exc:  # CRC errors etc. while reading members
            raise BadArchiveError(f"{name} is corrupt ({exc}); it was deleted, rerun to download it again") from exc
        except OSError as exc:
            raise _os_error(exc, archive_path, root, merging) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return installed


def remove_stale_extract_dirs(root: Path, say: Callable[[str], None]) -> None:
    """Delete temporary extraction directories left behind by an interrupted run."""
    for path in root.glob(EXTRACT_PREFIX + "*"):
        if path.is_dir() and not path.is_symlink():
            say(f"removing leftover temporary directory {path}")
            shutil.rmtree(path)


def remove_if_empty(path: Path) -> None:
    """Remove a directory we created, if nothing ended up in it (keeps failed runs trace-free)."""
    with contextlib.suppress(OSError):
        path.rmdir()
