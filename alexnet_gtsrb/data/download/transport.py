"""Getting the archives over HTTP: the mirror URL, streaming into ``.part`` files with HTTP Range resume,
md5 verification of what arrived (and of archives cached by an earlier run), network-error messages that
say what to do, and the progress bars on stderr.

A mirror cannot hold a download hostage: each archive has a size cap (its official size times SIZE_MARGIN;
passing it stops the transfer and deletes the ``.part``) and an overall deadline (see :mod:`.deadline`;
passing it keeps the ``.part`` for a resume). A full disk deletes the ``.part``."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from alexnet_gtsrb.data.download.archive import (
    CHUNK_SIZE,
    NO_SPACE_FIX,
    SIZE_MARGIN,
    Archive,
    DownloadError,
    download_cap,
    is_no_space,
    os_error_text,
)
from alexnet_gtsrb.data.download.deadline import DEFAULT_DEADLINE, Deadline
from alexnet_gtsrb.utils.files import require_free_space

DEFAULT_BASE_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
MIRROR_ENV_VAR = "GTSRB_MIRROR"
_USER_AGENT = "alexnet_gtsrb-downloader/1.0 (Python urllib)"


def resolve_base_url(base_url: str | None = None) -> str:
    """Pick the mirror (argument, else $GTSRB_MIRROR, else the official server), with a trailing slash."""
    url = (base_url or os.environ.get(MIRROR_ENV_VAR, "") or DEFAULT_BASE_URL).strip()
    return url if url.endswith("/") else url + "/"


def archive_url(base: str, filename: str) -> str:
    """Join the mirror base URL and an archive file name (URL-quoted)."""
    return base + urllib.parse.quote(filename)


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


def _hash_file(path: Path, digest: Any) -> Any:
    """Feed a file into a hashlib digest in chunks and return the digest."""
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest


def _new_md5() -> Any:
    """An md5 digest marked as not used for security (it only detects corrupt transfers)."""
    return hashlib.md5(usedforsecurity=False)


# ------------------------------------------------------------------------------------------ progress bars


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


# -------------------------------------------------------------------------------------------- streaming


def _content_range_start(value: str | None) -> int | None:
    """First byte position of a 'Content-Range: bytes START-END/TOTAL' header, or None."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class _Job:
    """One archive's transfer: where from, where to, and its limits."""

    url: str
    archive: Archive
    part: Path
    progress: bool
    timeout: float
    deadline: Deadline

    @property
    def downloads(self) -> Path:
        """The folder of the .part file."""
        return self.part.parent

    @property
    def cap(self) -> int:
        """Bytes the archive may reach before the transfer is cut off."""
        return download_cap(self.archive)


def _seconds(value: float) -> str:
    """A duration for messages: '90 s', '21600 s (6 h)'."""
    text = f"{value:g} s"
    return f"{text} ({value / 3600:g} h)" if value >= 3600 else text


def _deadline_error(job: _Job) -> DownloadError:
    """The deadline passed: keep a non-empty .part for a resume, say so."""
    size = job.part.stat().st_size if job.part.is_file() else 0
    if size:
        again = "rerun to resume" if job.archive.md5 else "rerun to try again"
        kept = f"the partial file {job.part} ({size:,} bytes) was kept: {again}"
    else:
        job.part.unlink(missing_ok=True)
        kept = "nothing was received: rerun to try again"
    return DownloadError(
        f"download of {job.url} did not finish within the deadline of {_seconds(job.deadline.seconds)}; "
        f"{kept}, allow more time with --deadline SECONDS, or try another --mirror"
    )


def _cap_error(job: _Job, what: str) -> DownloadError:
    """The mirror sends (or announces) more than the archive's cap: delete the .part, say why."""
    job.part.unlink(missing_ok=True)
    name, size = job.archive.filename, job.archive.size
    basis = f"{SIZE_MARGIN:g}x its expected size of {size:,} bytes" if size else "an archive of unknown size"
    return DownloadError(
        f"{job.url} {what}, more than the cap of {job.cap:,} bytes for {name} ({basis}); the transfer was stopped "
        f"and the partial file deleted. Try another --mirror; if it repackages the archive, give its size and "
        f"md5 with --size {name}=BYTES --md5 {name}=HASH"
    )


def _write_error(job: _Job, exc: OSError) -> DownloadError:
    """Writing the .part failed: on a full disk delete it (one line naming the folder)."""
    if is_no_space(exc):
        job.part.unlink(missing_ok=True)
        return DownloadError(
            f"no space left on device in {job.downloads} while downloading {job.url}; "
            f"the partial file was deleted; {NO_SPACE_FIX}"
        )
    return DownloadError(f"could not write {job.part} while downloading {job.url} ({os_error_text(exc)})")


def _open(job: _Job, offset: int) -> Any:
    """Send the request (a Range request when resuming); failures raise DownloadError."""
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(job.url, headers=headers)
    try:
        return job.deadline.opener().open(request, timeout=min(job.timeout, job.deadline.remaining()))
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        if job.deadline.expired():
            raise _deadline_error(job) from exc
        raise _network_error(job.url, exc, job.downloads) from exc


def _copy_body(response: Any, fh: IO[bytes], digest: Any, bar: Any, job: _Job, total: int) -> tuple[int, str]:
    """Copy the response body into fh until it ends, the deadline passes or the cap would be passed;
    return (bytes in the .part, "done" / "deadline" / "cap"). Network errors raise DownloadError."""
    while True:
        try:
            chunk = response.read(CHUNK_SIZE)
        except (http.client.HTTPException, OSError) as exc:
            if job.deadline.expired():
                return total, "deadline"
            raise _network_error(job.url, exc, job.downloads) from exc
        if job.deadline.expired():  # a read cut short by the deadline looks like the end of the body
            fh.write(chunk)
            return total + len(chunk), "deadline"
        if not chunk:
            return total, "done"
        if total + len(chunk) > job.cap:
            return total + len(chunk), "cap"
        fh.write(chunk)
        digest.update(chunk)
        total += len(chunk)
        bar.update(len(chunk))


def _stream_to_part(job: _Job, offset: int) -> tuple[str, bool]:
    """Stream job.url into job.part, resuming at byte `offset` if the server honours Range.

    Returns (md5 hex of the whole .part, whether it was a resumed transfer). Network failures and a
    passed deadline raise DownloadError and keep the .part so that the next run can resume; HTTP errors,
    a passed size cap and a full disk leave no file.
    """
    url, part = job.url, job.part
    try:
        response = _open(job, offset)
    except urllib.error.HTTPError as exc:
        exc.close()
        if offset and exc.code == 416:  # our .part is not a prefix the server recognises: start over
            part.unlink(missing_ok=True)
            return _stream_to_part(job, 0)
        raise _network_error(url, exc, job.downloads) from exc

    with response:
        status = getattr(response, "status", None) or 200
        resumed = bool(offset) and status == 206
        if resumed and _content_range_start(response.headers.get("Content-Range")) != offset:
            response.close()  # a range we did not ask for: do not trust it, start over
            part.unlink(missing_ok=True)
            return _stream_to_part(job, 0)
        if status == 206 and not resumed:
            raise DownloadError(f"unexpected partial content (HTTP 206) from {url}; try another --mirror")
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        if not resumed:
            offset = 0
        if length is not None and offset + length > job.cap:
            raise _cap_error(job, f"announces {offset + length:,} bytes")
        digest = _hash_file(part, _new_md5()) if resumed else _new_md5()
        if length is not None:
            require_free_space(job.downloads, length, url, NO_SPACE_FIX, error=DownloadError)

        total_size = None if length is None else offset + length
        bar = _make_bar(part.name.removesuffix(".part"), total_size, offset, job.progress)
        try:
            with open(part, "ab" if resumed else "wb") as fh:
                total, outcome = _copy_body(response, fh, digest, bar, job, offset)
        except OSError as exc:  # network errors are DownloadErrors by now: this is the disk
            raise _write_error(job, exc) from exc
        finally:
            bar.close()
    if outcome == "deadline":
        raise _deadline_error(job)
    if outcome == "cap":
        raise _cap_error(job, f"sent at least {total:,} bytes")
    if length is not None and total < offset + length:
        raise DownloadError(
            f"connection to {url} closed after {total} of {offset + length} bytes; "
            f"rerun to resume (partial file kept as {part})"
        )
    return digest.hexdigest(), resumed


def download(
    url: str,
    archive: Archive,
    part: Path,
    final: Path,
    progress: bool,
    timeout: float,
    say: Callable[[str], None],
    deadline: float = DEFAULT_DEADLINE,
) -> None:
    """Fetch one archive into `final` via `part`, verifying its md5; a bad download leaves no file.

    The whole transfer (a resume, and a restart after a failed resume, included) must end within
    `deadline` seconds, and no more than the archive's download cap is accepted.
    """
    offset = part.stat().st_size if part.is_file() else 0
    if offset and archive.md5 is None:
        say(f"{archive.filename}: discarding partial download (no checksum to validate a resume)")
        part.unlink()
        offset = 0
    elif offset > download_cap(archive):
        say(f"{archive.filename}: discarding partial download (larger than the archive can be)")
        part.unlink()
        offset = 0
    elif offset:
        say(f"{archive.filename}: found partial download ({offset} bytes), trying to resume")
    say(f"downloading {url}")
    expected = archive.md5.lower() if archive.md5 else None
    with Deadline(deadline) as limit:
        job = _Job(url, archive, part, progress, timeout, limit)
        actual, resumed = _stream_to_part(job, offset)
        if expected and actual != expected and resumed:
            say(f"{archive.filename}: resumed download failed its checksum; downloading from scratch")
            part.unlink(missing_ok=True)
            actual, _ = _stream_to_part(job, 0)
    if expected and actual != expected:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"checksum mismatch for {archive.filename} from {url}: expected md5 {expected}, got {actual}. "
            "The corrupt file was deleted; rerun, or try another --mirror"
        )
    os.replace(part, final)


def cached_archive_ok(final: Path, archive: Archive, say: Callable[[str], None]) -> bool:
    """True if a complete archive from an earlier run can be reused; a corrupt one is deleted."""
    if not final.is_file():
        return False
    if archive.md5 is None:
        return True
    actual = _hash_file(final, _new_md5()).hexdigest()
    if actual == archive.md5.lower():
        return True
    say(f"{archive.filename}: cached copy is corrupt (md5 {actual}, expected {archive.md5}); re-downloading")
    final.unlink()
    return False
