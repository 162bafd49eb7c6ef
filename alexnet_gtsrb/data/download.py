"""Download and unpack the official GTSRB archives into a data root, safely and resumably.

After a successful run the root holds the layout the rest of the package expects::

    <root>/GTSRB/Final_Training/Images/000NN/*.ppm (+ GT-000NN.csv)   43 class directories
    <root>/GTSRB/Final_Test/Images/*.ppm + GT-final_test.csv

Why the care: the archives are large (~300 MB) and come from a single academic server, so runs get
interrupted, mirrors get used, and a half-written or tampered archive must never turn into a silently
broken dataset. Hence: streamed downloads into ``.part`` files (resumed with HTTP Range when possible),
md5 verification, path-traversal/symlink checks on every zip member, extraction into a temporary
directory followed by renames into place, and per-archive ``.extracted`` markers so reruns are cheap.

Command line::

    python -m alexnet_gtsrb.data.download --root DIR [--mirror URL] [--no-progress] [--md5 FILE=HASH]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import http.client
import json
import os
import re
import shlex
import shutil
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any

from alexnet_gtsrb.errors import UserError

__all__ = [
    "DEFAULT_BASE_URL",
    "MIRROR_ENV_VAR",
    "OFFICIAL_ARCHIVES",
    "ROOT_ENV_VAR",
    "Archive",
    "DownloadError",
    "download_gtsrb",
    "layout_problems",
    "main",
    "resolve_base_url",
]

DEFAULT_BASE_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
MIRROR_ENV_VAR = "GTSRB_MIRROR"
ROOT_ENV_VAR = "GTSRB_ROOT"
DOWNLOADS_DIR = ".downloads"
EXTRACT_PREFIX = ".extract-"
NUM_CLASSES = 43
CHUNK_SIZE = 1 << 20
_USER_AGENT = "alexnet_gtsrb-downloader/1.0 (Python urllib)"
_MD5_RE = re.compile(r"[0-9a-fA-F]{32}")
_SEPARATORS = re.compile(r"[\\/]+")


@dataclass(frozen=True)
class Archive:
    """One zip on the mirror: file name, expected md5 (None = not checked), and the sub-path of the
    data root where its members land ("" = the root itself)."""

    filename: str
    md5: str | None
    dest: str = ""


OFFICIAL_ARCHIVES: tuple[Archive, ...] = (
    Archive("GTSRB_Final_Training_Images.zip", "513f3c79a4c5141765e10e952eaa2478", ""),
    Archive("GTSRB_Final_Test_Images.zip", "c7e4e6327067d32654124b0fe9e82185", ""),
    # GT-final_test.csv sits at the top level of this zip; it belongs next to the test images.
    Archive("GTSRB_Final_Test_GT.zip", "fe31e9c9270bbcd7b84b7f21a9d9d9e5", "GTSRB/Final_Test/Images"),
)


class DownloadError(UserError, RuntimeError):
    """Raised when GTSRB cannot be fetched, verified or unpacked; the message says what to do next.

    Also a UserError, so the training entry point reports it in one line, without a traceback.
    """


class _BadArchiveError(DownloadError):
    """The archive itself is unusable (corrupt zip or unsafe member): it gets deleted."""


# --------------------------------------------------------------------------------------------- helpers


def resolve_base_url(base_url: str | None = None) -> str:
    """Pick the mirror (argument, else $GTSRB_MIRROR, else the official server), with a trailing slash."""
    url = (base_url or os.environ.get(MIRROR_ENV_VAR, "") or DEFAULT_BASE_URL).strip()
    return url if url.endswith("/") else url + "/"


def _archive_url(base: str, filename: str) -> str:
    """Join the mirror base URL and an archive file name (URL-quoted)."""
    return base + urllib.parse.quote(filename)


def _unsafe_reason(name: str) -> str | None:
    """Say why a zip member / destination path could escape its directory, or None when it is safe."""
    if "\x00" in name:
        return "NUL byte in name"
    if name.startswith(("/", "\\")):
        return "absolute path"
    if re.match(r"[A-Za-z]:", name):
        return "drive letter"
    if ".." in _SEPARATORS.split(name):
        return "'..' component"
    return None


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    """True when the member's Unix mode bits (zip external attributes) mark it as a symbolic link."""
    return stat.S_ISLNK(info.external_attr >> 16)


def _parts(name: str) -> tuple[str, ...]:
    """Split a (checked) member name on / or \\ into path components, dropping empty and '.' parts."""
    return tuple(p for p in _SEPARATORS.split(name) if p not in ("", "."))


def _file_md5(path: Path) -> str:
    """md5 of a file, read in chunks (used to vet archives already on disk)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_free_space(where: Path, needed: int, what: str) -> None:
    """Fail early, with a clear message, when the disk obviously cannot hold what comes next."""
    free = shutil.disk_usage(where).free
    if needed > free:
        raise DownloadError(
            f"not enough disk space in {where} for {what}: need ~{needed / 2**20:.0f} MiB, "
            f"{free / 2**20:.0f} MiB free; free some space or choose another --root"
        )


def _remove_if_empty(path: Path) -> None:
    """Remove a directory we created, if nothing ended up in it (keeps failed runs trace-free)."""
    with contextlib.suppress(OSError):
        path.rmdir()


def _network_error(url: str, exc: BaseException, downloads: Path) -> DownloadError:
    """Turn a urllib/socket failure into a DownloadError that names the URL and the ways out."""
    if isinstance(exc, urllib.error.HTTPError):
        what = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        what = str(exc.reason)
    else:
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return DownloadError(
        f"could not fetch {url} ({what}). Check the network, use another mirror with --mirror URL "
        f"(or ${MIRROR_ENV_VAR}), or download the file manually into {downloads}/ and rerun"
    )


class _TextBar:
    """Minimal stderr progress bar for when tqdm is not installed."""

    def __init__(self, desc: str, total: int | None, initial: int, stream: IO[str]) -> None:
        """Remember what to draw; nothing is printed until the first update."""
        self.desc, self.total, self.n, self.stream = desc, total, initial, stream
        self._last = 0.0

    def update(self, n: int) -> None:
        """Advance by n bytes and redraw at most ~10 times a second."""
        self.n += n
        now = time.monotonic()
        if now - self._last >= 0.1:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        """Write one carriage-return line: bar, percentage and MiB counts."""
        mib = self.n / 2**20
        if self.total:
            frac = min(self.n / self.total, 1.0)
            bar = "#" * int(30 * frac)
            line = f"\r{self.desc} [{bar:<30}] {100 * frac:5.1f}% {mib:.1f}/{self.total / 2**20:.1f} MiB"
        else:
            line = f"\r{self.desc} {mib:.1f} MiB"
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        self._draw()
        self.stream.write("\n")
        self.stream.flush()


class _NullBar:
    """Progress bar that shows nothing (progress=False)."""

    def update(self, n: int) -> None:
        """Ignore progress."""

    def close(self) -> None:
        """Nothing to close."""


def _make_bar(desc: str, total: int | None, initial: int, enabled: bool) -> Any:
    """Return a progress bar on stderr: tqdm when available, a plain text bar otherwise."""
    if not enabled:
        return _NullBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _TextBar(desc, total, initial, sys.stderr)
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=True,
        dynamic_ncols=True,
    )


# -------------------------------------------------------------------------------------------- download


def _content_range_start(value: str | None) -> int | None:
    """First byte position of a 'Content-Range: bytes START-END/TOTAL' header, or None."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    return int(match.group(1)) if match else None


def _stream_to_part(
    url: str, part: Path, offset: int, downloads: Path, progress: bool, timeout: float
) -> tuple[str, bool]:
    """Stream url into part, resuming at byte `offset` if the server honours Range.

    Returns (md5 hex of the whole .part, whether it was a resumed transfer). Network failures raise
    DownloadError and keep the .part so that the next run can resume; HTTP errors leave no file.
    """
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if offset and exc.code == 416:  # our .part is not a prefix the server recognises: start over
            part.unlink(missing_ok=True)
            return _stream_to_part(url, part, 0, downloads, progress, timeout)
        raise _network_error(url, exc, downloads) from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise _network_error(url, exc, downloads) from exc

    with response:
        status = getattr(response, "status", None) or 200
        resumed = bool(offset) and status == 206
        if resumed and _content_range_start(response.headers.get("Content-Range")) != offset:
            response.close()  # a range we did not ask for: do not trust it, start over
            part.unlink(missing_ok=True)
            return _stream_to_part(url, part, 0, downloads, progress, timeout)
        if status == 206 and not resumed:
            raise DownloadError(f"unexpected partial content (HTTP 206) from {url}; try another --mirror")
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None

        digest = hashlib.md5(usedforsecurity=False)
        if resumed:
            with open(part, "rb") as fh:
                for chunk in iter(lambda: fh.read(CHUNK_SIZE), b""):
                    digest.update(chunk)
        else:
            offset = 0
        if length is not None:
            _check_free_space(downloads, length, url)

        received = 0
        bar = _make_bar(part.name.removesuffix(".part"), None if length is None else offset + length, offset, progress)
        try:
            with open(part, "ab" if resumed else "wb") as fh:
                while True:
                    try:
                        chunk = response.read(CHUNK_SIZE)
                    except (http.client.HTTPException, OSError) as exc:
                        raise _network_error(url, exc, downloads) from exc
                    if not chunk:
                        break
                    fh.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
    if length is not None and received < length:
        raise DownloadError(
            f"connection to {url} closed after {offset + received} of {offset + length} bytes; "
            f"rerun to resume (partial file kept as {part})"
        )
    return digest.hexdigest(), resumed


def _download(
    url: str,
    archive: Archive,
    part: Path,
    final: Path,
    progress: bool,
    timeout: float,
    say: Callable[[str], None],
) -> None:
    """Fetch one archive into `final` via `part`, verifying its md5; a bad download leaves no file."""
    downloads = part.parent
    offset = part.stat().st_size if part.is_file() else 0
    if offset and archive.md5 is None:
        say(f"{archive.filename}: discarding partial download (no checksum to validate a resume)")
        part.unlink()
        offset = 0
    elif offset:
        say(f"{archive.filename}: found partial download ({offset} bytes), trying to resume")
    say(f"downloading {url}")
    actual, resumed = _stream_to_part(url, part, offset, downloads, progress, timeout)
    expected = archive.md5.lower() if archive.md5 else None
    if expected and actual != expected and resumed:
        say(f"{archive.filename}: resumed download failed its checksum; downloading from scratch")
        part.unlink(missing_ok=True)
        actual, _ = _stream_to_part(url, part, 0, downloads, progress, timeout)
    if expected and actual != expected:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"checksum mismatch for {archive.filename} from {url}: expected md5 {expected}, got {actual}. "
            "The corrupt file was deleted; rerun, or try another --mirror"
        )
    os.replace(part, final)


def _cached_archive_ok(final: Path, archive: Archive, say: Callable[[str], None]) -> bool:
    """True if a complete archive from an earlier run can be reused; a corrupt one is deleted."""
    if not final.is_file():
        return False
    if archive.md5 is None:
        return True
    actual = _file_md5(final)
    if actual == archive.md5.lower():
        return True
    say(f"{archive.filename}: cached copy is corrupt (md5 {actual}, expected {archive.md5}); re-downloading")
    final.unlink()
    return False


# ------------------------------------------------------------------------------------------- extraction


def _checked_members(zf: zipfile.ZipFile, archive_name: str) -> list[zipfile.ZipInfo]:
    """All members of the zip, after refusing the whole archive if any member is unsafe."""
    members = zf.infolist()
    for info in members:
        reason = _unsafe_reason(info.filename)
        if reason is None and _is_symlink(info):
            reason = "symbolic link"
        if reason is not None:
            raise _BadArchiveError(
                f"refusing to extract {archive_name}: member '{info.filename}' is unsafe ({reason}); "
                "nothing was extracted and the archive was deleted. Check where it came from (--mirror)"
            )
    return members


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


def _extract(archive_path: Path, root: Path, dest: str) -> dict[str, list[str]]:
    """Unpack the archive under root/dest through a temporary directory under root.

    Returns the installed files, as {directory relative to root: [file names]}, for the marker.
    """
    try:
        zf = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise _BadArchiveError(
            f"{archive_path.name} is not a valid zip archive ({exc}); it was deleted, rerun to download it again"
        ) from exc
    with zf:
        members = _checked_members(zf, archive_path.name)
        _check_free_space(root, sum(info.file_size for info in members), f"unpacking {archive_path.name}")
        tmp = Path(tempfile.mkdtemp(prefix=EXTRACT_PREFIX, dir=root))
        try:
            base = tmp.joinpath(*_parts(dest))
            base.mkdir(parents=True, exist_ok=True)
            installed: dict[str, list[str]] = {}
            for info in members:
                parts = _parts(info.filename)
                if not parts:
                    continue
                target = base.joinpath(*parts)
                if not target.resolve().is_relative_to(tmp.resolve()):  # belt and braces
                    raise _BadArchiveError(
                        f"refusing to extract {archive_path.name}: member '{info.filename}' "
                        "resolves outside the extraction directory"
                    )
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK_SIZE)
                rel = target.relative_to(tmp)
                installed.setdefault(rel.parent.as_posix(), []).append(rel.name)
            _merge_tree(tmp, root)
        except (zipfile.BadZipFile, EOFError) as exc:  # CRC errors etc. while reading members
            raise _BadArchiveError(
                f"{archive_path.name} is corrupt ({exc}); it was deleted, rerun to download it again"
            ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return installed


def _marker_complete(marker: Path, root: Path, archive: Archive) -> bool:
    """True if the marker exists, matches this archive's md5, and every file it lists is still there."""
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        files: dict[str, list[str]] = data["files"]
        if data.get("md5") != archive.md5:
            return False
        for rel_dir, names in files.items():
            present = set(os.listdir(root.joinpath(*PurePosixPath(rel_dir).parts)))
            if not set(names) <= present:
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def _write_marker(marker: Path, archive: Archive, installed: dict[str, list[str]]) -> None:
    """Atomically record that an archive was fully unpacked (and which files it installed)."""
    tmp = marker.with_name(marker.name + ".tmp")
    payload = {"archive": archive.filename, "md5": archive.md5, "files": installed}
    tmp.write_text(json.dumps(payload, sort_keys=True), encoding="utf-8")
    os.replace(tmp, marker)


def _remove_stale_extract_dirs(root: Path, say: Callable[[str], None]) -> None:
    """Delete temporary extraction directories left behind by an interrupted run."""
    for path in root.glob(EXTRACT_PREFIX + "*"):
        if path.is_dir() and not path.is_symlink():
            say(f"removing leftover temporary directory {path}")
            shutil.rmtree(path)


# ----------------------------------------------------------------------------------------------- layout


def _has_ppm(directory: Path) -> bool:
    """True if the directory holds at least one .ppm image (stops at the first one)."""
    with os.scandir(directory) as it:
        return any(entry.name.lower().endswith(".ppm") for entry in it)


def layout_problems(root: str | os.PathLike[str]) -> list[str]:
    """List what is missing from the expected GTSRB layout under root (empty list = complete)."""
    base = Path(root) / "GTSRB"
    problems: list[str] = []
    train = base / "Final_Training" / "Images"
    if not train.is_dir():
        problems.append(f"missing directory {train}")
    else:
        missing = [
            f"{c:05d}"
            for c in range(NUM_CLASSES)
            if not (train / f"{c:05d}").is_dir() or not _has_ppm(train / f"{c:05d}")
        ]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            problems.append(
                f"{train} has {NUM_CLASSES - len(missing)} of {NUM_CLASSES} class directories "
                f"with images (missing or empty: {shown})"
            )
    test = base / "Final_Test" / "Images"
    if not test.is_dir():
        problems.append(f"missing directory {test}")
    else:
        if not _has_ppm(test):
            problems.append(f"no .ppm test images in {test}")
        if not (test / "GT-final_test.csv").is_file():
            problems.append(f"missing {test / 'GT-final_test.csv'} (from GTSRB_Final_Test_GT.zip)")
    return problems


# ---------------------------------------------------------------------------------------------- public


def _validate_archives(archives: Sequence[Archive]) -> None:
    """Reject archive specs that could write outside the root or cannot be checked."""
    for archive in archives:
        name = archive.filename
        if not name or _SEPARATORS.search(name) or name in (".", "..") or _unsafe_reason(name):
            raise ValueError(f"archive filename must be a plain file name, got {name!r}")
        if archive.md5 is not None and not _MD5_RE.fullmatch(archive.md5):
            raise ValueError(f"md5 for {name} must be 32 hex digits or None, got {archive.md5!r}")
        if _unsafe_reason(archive.dest):
            raise ValueError(f"dest for {name} must be a relative path inside the root, got {archive.dest!r}")


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
    marker = downloads / f"{archive.filename}.extracted"
    if marker.is_file():
        if _marker_complete(marker, root, archive):
            say(f"{archive.filename}: already unpacked, skipping")
            return
        say(f"{archive.filename}: earlier extraction is incomplete or outdated; unpacking again")
        marker.unlink()
    final = downloads / archive.filename
    part = downloads / f"{archive.filename}.part"
    if _cached_archive_ok(final, archive, say):
        say(f"{archive.filename}: reusing verified archive {final}")
        part.unlink(missing_ok=True)
    else:
        _download(_archive_url(base_url, archive.filename), archive, part, final, progress, timeout, say)
    say(f"{archive.filename}: unpacking")
    try:
        installed = _extract(final, root, archive.dest)
    except _BadArchiveError:
        final.unlink(missing_ok=True)
        raise
    _write_marker(marker, archive, installed)


def download_gtsrb(
    root: str | os.PathLike[str],
    base_url: str | None = None,
    archives: Sequence[Archive] = OFFICIAL_ARCHIVES,
    progress: bool = True,
    timeout: float = 60,
) -> Path:
    """Download, verify and unpack the GTSRB archives into root; return the absolute root.

    Idempotent: archives already unpacked (per their marker) are skipped, cached archives are reused
    after an md5 check, and a root that already holds the complete layout without any marker (unpacked
    by hand) is left alone. `base_url` defaults to $GTSRB_MIRROR, then to the official server.
    Status messages and progress bars go to stderr when `progress` is true.
    """
    _validate_archives(archives)
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
        _remove_stale_extract_dirs(root_path, say)
        markers = [downloads / f"{a.filename}.extracted" for a in archives]
        if not any(m.exists() for m in markers) and not layout_problems(root_path):
            say(f"complete GTSRB layout already present in {root_path}; nothing to download")
            return root_path
        downloads.mkdir(exist_ok=True)
        for archive in archives:
            _install_archive(archive, root_path, downloads, base, progress, timeout, say)
        problems = layout_problems(root_path)
        if problems:
            raise DownloadError(
                f"archives unpacked into {root_path} but the GTSRB layout is incomplete: "
                f"{'; '.join(problems)}. "
                f"Delete {downloads} and {root_path / 'GTSRB'} and rerun"
            )
    except BaseException:
        if downloads_created:
            _remove_if_empty(downloads)
        if root_created:
            _remove_if_empty(root_path)
        raise
    return root_path


# ------------------------------------------------------------------------------------------------- CLI


def _apply_md5_overrides(archives: Sequence[Archive], overrides: Sequence[str]) -> tuple[Archive, ...]:
    """Apply FILENAME=HASH overrides (HASH 'none' disables the check) to a set of archives."""
    by_name = {a.filename: a for a in archives}
    for item in overrides:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or name not in by_name:
            raise ValueError(f"--md5 expects FILENAME=HASH with FILENAME one of {', '.join(by_name)}; got {item!r}")
        if value.lower() == "none":
            md5 = None
        elif _MD5_RE.fullmatch(value):
            md5 = value.lower()
        else:
            raise ValueError(f"--md5 {name}: HASH must be 32 hex digits or 'none', got {value!r}")
        by_name[name] = replace(by_name[name], md5=md5)
    return tuple(by_name[a.filename] for a in archives)


def _one_line(exc: BaseException) -> str:
    """Collapse an exception message onto a single line for the CLI."""
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: download GTSRB into --root and print the GTSRB_ROOT export line."""
    parser = argparse.ArgumentParser(
        prog="python -m alexnet_gtsrb.data.download",
        description="Download, verify and unpack the official GTSRB archives (resumable, idempotent).",
    )
    parser.add_argument(
        "--root", default=os.environ.get(ROOT_ENV_VAR) or None, help=f"data root to fill (default: ${ROOT_ENV_VAR})"
    )
    parser.add_argument(
        "--mirror",
        default=None,
        help=f"base URL holding the zip files (default: ${MIRROR_ENV_VAR}, else {DEFAULT_BASE_URL})",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or status lines")
    parser.add_argument(
        "--md5",
        action="append",
        default=[],
        metavar="FILENAME=HASH",
        help="override an archive's expected md5 (repeatable; HASH 'none' skips the check)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default 60)")
    args = parser.parse_args(argv)
    if not args.root:
        parser.error(f"--root is required (or set ${ROOT_ENV_VAR})")
    try:
        archives = _apply_md5_overrides(OFFICIAL_ARCHIVES, args.md5)
    except ValueError as exc:
        parser.error(str(exc))

    try:
        root = download_gtsrb(
            args.root, base_url=args.mirror, archives=archives, progress=not args.no_progress, timeout=args.timeout
        )
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (DownloadError, OSError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    print(f"GTSRB is ready in {root / 'GTSRB'}")
    print("Point the training code at it with:")
    print(f"export {ROOT_ENV_VAR}={shlex.quote(str(root))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
