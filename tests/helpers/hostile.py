"""A hostile GTSRB mirror and hostile archives for the adversarial download tests
(tests/test_adversarial_download.py, tests/test_adversarial_archive.py): zips built in memory (patched
sizes), an HTTP server on 127.0.0.1 whose behaviour per file is a route (honest, endless), a small tmpfs to
fill, and the checks every test repeats (one-line errors)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import struct
import subprocess
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from alexnet_gtsrb.data.download import OFFICIAL_ARCHIVES, Archive, DownloadError, download_gtsrb
from tests.helpers import run_in_process

TRAIN, TEST, GT = (a.filename for a in OFFICIAL_ARCHIVES)
Route = Callable[[BaseHTTPRequestHandler], None]


# ---------------------------------------------------------------------------------------------- archives


def make_zip(entries: list[tuple[str, bytes]]) -> bytes:
    """A deflated zip of the given members, in order; duplicates allowed; names ending in / are directories."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        warnings.simplefilter("ignore")  # "Duplicate name": that is the point
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def train_layout() -> list[tuple[str, bytes]]:
    """A complete (tiny) training layout: one 2x2 PPM in each of the 43 class directories."""
    return [(f"GTSRB/Final_Training/Images/{c:05d}/00000_00000.ppm", b"P6\n2 2\n255\n" + bytes(12)) for c in range(43)]


def train_spec(data: bytes, size: int | None = None) -> tuple[Archive, ...]:
    """The training archive spec for these bytes (its md5; size defaults to the real length)."""
    return (Archive(TRAIN, hashlib.md5(data).hexdigest(), "train", size=len(data) if size is None else size),)


def declare_size(data: bytes, member: str, size: int) -> bytes:
    """Rewrite the uncompressed size that `member`'s local header and central directory entry declare."""
    buf = bytearray(data)
    for sig, size_at, name_len_at, header in ((b"PK\x03\x04", 22, 26, 30), (b"PK\x01\x02", 24, 28, 46)):
        pos = buf.find(sig)
        while pos != -1:
            (n,) = struct.unpack_from("<H", buf, pos + name_len_at)
            if buf[pos + header : pos + header + n] == member.encode():
                struct.pack_into("<I", buf, pos + size_at, size)
            pos = buf.find(sig, pos + 4)
    return bytes(buf)


# ------------------------------------------------------------------------------------------------ server


class HostileMirror(ThreadingHTTPServer):
    """A mirror on 127.0.0.1 whose behaviour per path is a route function; records requests."""

    daemon_threads = True

    def __init__(self) -> None:
        """Listen on an ephemeral port."""
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.stop = threading.Event()

    @property
    def url(self) -> str:
        """Base URL with a trailing slash."""
        return f"http://127.0.0.1:{self.server_address[1]}/"


class _Handler(BaseHTTPRequestHandler):
    """Dispatches GET to the server's routes (404 otherwise); a client hanging up is not an error."""

    server: HostileMirror

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        """Quiet."""

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        """Record the request and run its route."""
        path = unquote(urlsplit(self.path).path).lstrip("/")
        self.server.requests.append((path, self.headers.get("Range")))
        route = self.server.routes.get(path)
        if route is None:
            self.send_error(404)
            return
        with contextlib.suppress(OSError):  # BrokenPipe / ConnectionReset when the client gives up
            route(self)


def serve(data: bytes) -> Route:
    """An honest mirror: the file, with Content-Length, and 206 ranges for a resume."""

    def route(h: BaseHTTPRequestHandler) -> None:
        match = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range") or "")
        start = int(match.group(1)) if match and int(match.group(1)) < len(data) else 0
        h.send_response(206 if start else 200)
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        h.wfile.write(data[start:])

    return route


def endless(content_length: int | None = None) -> Route:
    """Zeros without end (64 MiB at most, as a safety net), with no Content-Length unless one is given."""

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        if content_length is not None:
            h.send_header("Content-Length", str(content_length))
        h.end_headers()
        block = bytes(2**16)
        for _ in range(1024):
            if h.server.stop.is_set():  # type: ignore[attr-defined]
                return
            h.wfile.write(block)

    return route


@contextlib.contextmanager
def running_mirror() -> Iterator[HostileMirror]:
    """Run a hostile mirror in a background thread; stop its handlers and shut it down afterwards."""
    srv = HostileMirror()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


# ------------------------------------------------------------------------------------------------ checks


def tree(path: Path) -> set[str]:
    """Every path under `path` (hidden included), relative to it; empty if absent."""
    if not path.exists():
        return set()
    return {p.relative_to(path).as_posix() for p in path.rglob("*")}


def get(mirror: HostileMirror, root: Path, archives: tuple[Archive, ...], **kwargs: object) -> Path:
    """download_gtsrb of the training part from the hostile mirror, quietly."""
    return download_gtsrb(root, base_url=mirror.url, archives=archives, progress=False, parts=("train",), **kwargs)


def fails(mirror: HostileMirror, root: Path, archives: tuple[Archive, ...], **kwargs: object) -> str:
    """Run get, expecting a DownloadError; return its message after checking it is one line."""
    with pytest.raises(DownloadError) as info:
        get(mirror, root, archives, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


def cli_error(*args: str) -> tuple[int, str]:
    """Run the command line; return (exit code, stderr) after checking stderr is one 'error:' line."""
    result = run_in_process("data.download", [*args, "--no-progress"])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    return result.returncode, lines[0]


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """Mount a small tmpfs at path for the duration (skip the test where mounting is not permitted)."""
    path.mkdir()
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs to fill: {exc}")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root on Linux): {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)
