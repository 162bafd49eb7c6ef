"""Tests for the alexnet_gtsrb.data.download package against tiny fake GTSRB zips served on 127.0.0.1."""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from alexnet_gtsrb.data.download import (
    OFFICIAL_ARCHIVES,
    Archive,
    DownloadError,
    download_gtsrb,
    layout_problems,
)
from alexnet_gtsrb.data.download.__main__ import main
from tests.helpers import run_in_process

TRAIN, TEST, GT = (a.filename for a in OFFICIAL_ARCHIVES)
GT_CSV = "GTSRB/Final_Test/Images/GT-final_test.csv"


# ------------------------------------------------------------------------------------------ fake data


def _ppm(seed: int) -> bytes:
    """A valid 2x2 binary PPM whose pixels depend on seed."""
    return b"P6\n2 2\n255\n" + bytes((seed * 7 + i) % 256 for i in range(12))


def _md5(path: Path) -> str:
    """md5 hex digest of a file."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_zip(path: Path, entries: dict[str, bytes]) -> None:
    """Write a zip with the given member names and contents (names ending in / become directories)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)


def _train_entries(classes: range = range(43)) -> dict[str, bytes]:
    """Members of a fake training zip in the official layout: one image per class (few files: slow disks)."""
    entries = dict.fromkeys(["GTSRB/", "GTSRB/Final_Training/", "GTSRB/Final_Training/Images/"], b"")
    for c in classes:
        entries[f"GTSRB/Final_Training/Images/{c:05d}/00000_00000.ppm"] = _ppm(c)
    entries["GTSRB/Final_Training/Images/00000/GT-00000.csv"] = b"Filename;ClassId\n00000_00000.ppm;0\n"
    entries["GTSRB/Readme-Images.txt"] = b"fake training readme\n"
    return entries


def _test_entries() -> dict[str, bytes]:
    """Members of a fake test-images zip (images plus the label-less CSV)."""
    return {
        "GTSRB/Final_Test/Images/00000.ppm": _ppm(100),
        "GTSRB/Final_Test/Images/00001.ppm": _ppm(101),
        "GTSRB/Final_Test/Images/GT-final_test.test.csv": b"Filename;Width;Height\n00000.ppm;2;2\n",
    }


GT_BYTES = b"Filename;Width;Height;ClassId\n00000.ppm;2;2;16\n00001.ppm;2;2;1\n"


@dataclass
class FakeGTSRB:
    """Served directory, matching archive specs, and the files a correct install must produce."""

    served: Path
    archives: tuple[Archive, ...]
    expected: dict[str, bytes]  # path relative to root -> bytes

    def refresh_md5s(self) -> None:
        """Recompute the archive specs' md5s from the served files."""
        served = self.served
        self.archives = tuple(replace(a, md5=_md5(served / a.filename)) for a in self.archives)

    def rebuild(self, filename: str, entries: dict[str, bytes]) -> None:
        """Replace one served zip and update its md5 in the archive specs."""
        _write_zip(self.served / filename, entries)
        self.refresh_md5s()


@pytest.fixture
def fake(tmp_path: Path) -> FakeGTSRB:
    """Build the three fake archives under their official names."""
    served = tmp_path / "served"
    served.mkdir()
    train, test = _train_entries(), _test_entries()
    _write_zip(served / TRAIN, train)
    _write_zip(served / TEST, test)
    _write_zip(served / GT, {"GT-final_test.csv": GT_BYTES})
    expected = {k: v for k, v in {**train, **test}.items() if not k.endswith("/")}
    expected[GT_CSV] = GT_BYTES
    archives = tuple(replace(a, md5=_md5(served / a.filename)) for a in OFFICIAL_ARCHIVES)
    return FakeGTSRB(served, archives, expected)


# -------------------------------------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    """Test HTTP server that records requests and can honour Range or drop a transfer half-way."""

    daemon_threads = True

    def __init__(self, directory: Path) -> None:
        """Serve files from directory on an ephemeral 127.0.0.1 port."""
        super().__init__(("127.0.0.1", 0), _Handler)
        self.directory = directory
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.support_range = False
        self.truncate_once: set[str] = set()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        """Base URL with a trailing slash."""
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def paths(self) -> list[str]:
        """Paths requested so far."""
        with self.lock:
            return [p for p, _ in self.requests]


class _Handler(BaseHTTPRequestHandler):
    """GET-only handler over _Server.directory (HTTP/1.0: one request per connection)."""

    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        """Keep test output quiet."""

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        """Serve a file, a 206 range of it, or a 404; optionally cut the body short once."""
        srv = self.server
        path = unquote(urlsplit(self.path).path)
        rng = self.headers.get("Range")
        with srv.lock:
            srv.requests.append((path, rng))
        file = srv.directory / path.lstrip("/")
        if not file.is_file():
            self.send_error(404, "Not Found")
            return
        data = file.read_bytes()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match and srv.support_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with srv.lock:
            cut = path in srv.truncate_once
            srv.truncate_once.discard(path)
        self.wfile.write(body[: len(body) // 2] if cut else body)


@pytest.fixture
def server(fake: FakeGTSRB) -> Iterator[_Server]:
    """Run the test server in a background thread; shut it down afterwards."""
    srv = _Server(fake.served)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No mirror/root from the caller's environment, and never a proxy for 127.0.0.1."""
    monkeypatch.delenv("GTSRB_MIRROR", raising=False)
    monkeypatch.delenv("GTSRB_ROOT", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


# ------------------------------------------------------------------------------------------- helpers


def _snapshot(path: Path) -> set[str]:
    """Every path (files and dirs, hidden included) under path, relative to it; empty if absent."""
    if not path.exists():
        return set()
    return {p.relative_to(path).as_posix() for p in path.rglob("*")}


def _assert_installed(root: Path, fake: FakeGTSRB) -> None:
    """Every expected file is present and byte-identical, and the layout check is clean."""
    for rel, data in fake.expected.items():
        assert (root / rel).read_bytes() == data, rel
    assert layout_problems(root) == []


def _assert_no_leftovers(root: Path) -> None:
    """The downloads folder holds verified archives only: no temporary file of pooch, no unpacking marker."""
    assert {p.name for p in (root / ".downloads").iterdir()} <= {TRAIN, TEST, GT}


def _get(fake: FakeGTSRB, server: _Server, root: Path, **kwargs: object) -> Path:
    """download_gtsrb against the test server with the fake archives, quietly, without retry pauses."""
    kwargs.setdefault("retries", 0)
    return download_gtsrb(root, base_url=server.url, archives=fake.archives, progress=False, **kwargs)


# --------------------------------------------------------------------------------------------- tests


def test_download_installs_layout_and_rerun_fetches_nothing(tmp_path: Path, fake: FakeGTSRB, server: _Server) -> None:
    """(a) Good archives: official layout, identical bytes, verified zips kept; a rerun is offline."""
    root = tmp_path / "data"
    assert _get(fake, server, root) == root.resolve()
    _assert_installed(root, fake)
    _assert_no_leftovers(root)
    for archive in fake.archives:
        assert _md5(root / ".downloads" / archive.filename) == archive.md5
    assert sorted(server.paths()) == sorted(f"/{a.filename}" for a in fake.archives)

    _get(fake, server, root)
    assert len(server.requests) == 3  # nothing fetched again
    _assert_installed(root, fake)


def test_incomplete_part_is_unpacked_again_from_the_cached_archives(
    tmp_path: Path, fake: FakeGTSRB, server: _Server
) -> None:
    """A part whose layout lost a file is unpacked again from the verified archives, without any download."""
    root = tmp_path / "data"
    _get(fake, server, root)
    (root / GT_CSV).unlink()
    _get(fake, server, root)
    assert len(server.requests) == 3
    _assert_installed(root, fake)


def test_cached_archives_are_verified_before_reuse(tmp_path: Path, fake: FakeGTSRB, server: _Server) -> None:
    """Valid cached zips are reused; a corrupt cached zip (its md5 differs) is fetched again."""
    root = tmp_path / "data"
    _get(fake, server, root)
    (root / ".downloads" / TEST).write_bytes(b"garbage")
    (root / GT_CSV).unlink()
    _get(fake, server, root)
    assert server.paths()[3:] == [f"/{TEST}"]
    _assert_installed(root, fake)
    _assert_no_leftovers(root)


def test_complete_hand_unpacked_layout_is_left_alone(tmp_path: Path, fake: FakeGTSRB, server: _Server) -> None:
    """A root already holding the full layout (no downloads folder) triggers no download at all."""
    root = tmp_path / "data"
    for rel, data in fake.expected.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    before = _snapshot(root)
    _get(fake, server, root)
    assert server.requests == []
    assert _snapshot(root) == before


@pytest.mark.parametrize("root_exists", [True, False])
def test_checksum_mismatch_leaves_nothing_behind(
    tmp_path: Path, fake: FakeGTSRB, server: _Server, root_exists: bool
) -> None:
    """(b) Wrong md5: one line naming file, expected and actual md5 and the fix; not retried; root unchanged."""
    root = tmp_path / "data"
    if root_exists:
        root.mkdir()
        (root / "keep.txt").write_text("user file")
    before = _snapshot(root)
    wrong = "0" * 32
    archives = (replace(fake.archives[0], md5=wrong), *fake.archives[1:])
    with pytest.raises(DownloadError) as info:
        download_gtsrb(root, base_url=server.url, archives=archives, progress=False)  # default retries
    message = str(info.value)
    assert message.startswith(f"checksum mismatch for {TRAIN} from {server.url}{TRAIN}: ")
    assert f"expected md5 {wrong}, got {fake.archives[0].md5}" in message and f"--md5 {TRAIN}=HASH" in message
    assert "\n" not in message
    assert server.paths() == [f"/{TRAIN}"]  # a wrong md5 is not retried
    assert _snapshot(root) == before
    assert root.exists() == root_exists


@pytest.mark.parametrize(
    "member", ["../evil.txt", "ABSOLUTE", "/tmp/evil.txt", "GTSRB/../../evil.txt", "..\\evil.txt", "C:/evil.txt"]
)
def test_unsafe_members_are_rejected_before_extraction(
    tmp_path: Path, fake: FakeGTSRB, server: _Server, member: str
) -> None:
    """(c) Traversal, absolute and drive-letter members: the error names the member, nothing is written, the
    archive is deleted."""
    root = tmp_path / "data"
    outside = tmp_path / "outside" / "evil.txt"
    outside.parent.mkdir()
    tmp_evil = Path("/tmp/evil.txt")
    tmp_evil_before = tmp_evil.exists() and tmp_evil.read_bytes()
    if member == "ABSOLUTE":
        member = outside.as_posix()
    fake.rebuild(TRAIN, {**_train_entries(), member: b"pwned"})  # malicious member last
    assert member in zipfile.ZipFile(fake.served / TRAIN).namelist()

    with pytest.raises(DownloadError) as info_exc:
        _get(fake, server, root)
    assert f"member '{member}' has an unsafe path" in str(info_exc.value)
    assert _snapshot(root) == set()  # no archive, no marker, no extracted files
    assert not (tmp_path / "evil.txt").exists()
    assert not outside.exists()
    assert (tmp_evil.exists() and tmp_evil.read_bytes()) == tmp_evil_before


def test_a_cut_off_unpack_is_redone_and_stale_temporary_files_go(
    tmp_path: Path, fake: FakeGTSRB, server: _Server
) -> None:
    """(d) A run killed while unpacking leaves its marker (the layout may look complete): the rerun unpacks that
    archive again from the cache, and removes the temporary file pooch left when killed mid-download."""
    root = tmp_path / "data"
    _get(fake, server, root)
    damaged = root / "GTSRB/Final_Training/Images/00007/00000_00000.ppm"
    damaged.write_bytes(b"P6")  # half-written
    (root / ".downloads" / f"{TRAIN}.unpacking").touch()
    (root / ".downloads" / "tmpk1ll3d").write_bytes(b"half a download")
    _get(fake, server, root)
    assert len(server.requests) == 3
    _assert_installed(root, fake)
    _assert_no_leftovers(root)


def test_a_dropped_connection_is_retried(tmp_path: Path, fake: FakeGTSRB, server: _Server) -> None:
    """A transfer cut half-way is retried (pooch's retry_if_failed); without retries it is one line naming the
    URL, and nothing is left behind."""
    root = tmp_path / "data"
    server.truncate_once = {f"/{TRAIN}"}
    with pytest.raises(DownloadError, match=re.escape(f"could not fetch {server.url}{TRAIN} (")):
        _get(fake, server, root, retries=0)
    assert not root.exists()

    server.truncate_once = {f"/{TRAIN}"}
    _get(fake, server, root, retries=1)
    assert server.paths().count(f"/{TRAIN}") == 3
    _assert_installed(root, fake)
    _assert_no_leftovers(root)


def test_http_404_names_the_url_and_is_not_retried(tmp_path: Path, fake: FakeGTSRB, server: _Server) -> None:
    """(e) A missing file on the mirror: one line with the URL and the status; no retry, nothing left behind."""
    root = tmp_path / "data"
    with pytest.raises(DownloadError) as info:
        download_gtsrb(root, base_url=server.url + "missing/", archives=fake.archives, progress=False)
    message = str(info.value)
    assert f"{server.url}missing/{TRAIN}" in message and "HTTP 404" in message and "--mirror" in message
    assert len(server.requests) == 1
    assert not root.exists()


def test_unreachable_server_names_the_url(tmp_path: Path, fake: FakeGTSRB) -> None:
    """Connection refused is one line mentioning the URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(DownloadError, match=re.escape(f"could not fetch {url}{TRAIN} (ConnectionError)")):
        download_gtsrb(tmp_path / "data", base_url=url, archives=fake.archives, progress=False, timeout=5, retries=0)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("mirror", ["file:///srv/gtsrb/", "ftp://example.org/gtsrb/", "/srv/gtsrb"])
def test_a_mirror_must_be_http(tmp_path: Path, fake: FakeGTSRB, mirror: str) -> None:
    """Only http(s) mirrors: anything else is one line pointing at the downloads folder, before any work."""
    with pytest.raises(DownloadError, match=r"--mirror must be an http:// or https:// URL.*\.downloads/"):
        download_gtsrb(tmp_path / "data", base_url=mirror, archives=fake.archives, progress=False)
    assert not (tmp_path / "data").exists()


def test_mirror_from_environment(
    tmp_path: Path, fake: FakeGTSRB, server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$GTSRB_MIRROR is used when no base_url is given (a missing trailing slash is fine)."""
    monkeypatch.setenv("GTSRB_MIRROR", server.url.rstrip("/"))
    download_gtsrb(tmp_path / "data", archives=fake.archives, progress=False)
    assert len(server.requests) == 3
    _assert_installed(tmp_path / "data", fake)


def test_incomplete_layout_is_reported(tmp_path: Path, fake: FakeGTSRB, server: _Server) -> None:
    """Archives that unpack fine but lack a class directory fail the final layout check."""
    fake.rebuild(TRAIN, _train_entries(range(42)))
    with pytest.raises(DownloadError, match="00042"):
        _get(fake, server, tmp_path / "data")


def test_progress_output_goes_to_stderr(
    tmp_path: Path, fake: FakeGTSRB, server: _Server, capsys: pytest.CaptureFixture[str]
) -> None:
    """With progress on, status lines and pooch's bars go to stderr and stdout stays clean."""
    download_gtsrb(tmp_path / "data", base_url=server.url, archives=fake.archives, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"downloading {server.url}{TRAIN}" in captured.err and "100%" in captured.err


def test_file_in_the_way_keeps_archive_and_rerun_reuses_it(tmp_path: Path, fake: FakeGTSRB, server: _Server) -> None:
    """A file where a directory must go: one line naming it, the verified archive kept; once the file is moved
    aside, the rerun unpacks the cached archive without downloading it again."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "GTSRB").write_text("not a directory")
    with pytest.raises(DownloadError) as info:
        _get(fake, server, root)
    message = str(info.value)
    assert message.startswith(f"unpacking {TRAIN} failed in {root.resolve()} (")
    assert str(root.resolve() / "GTSRB") in message
    assert _md5(root / ".downloads" / TRAIN) == fake.archives[0].md5
    (root / "GTSRB").unlink()
    _get(fake, server, root)
    assert server.paths().count(f"/{TRAIN}") == 1
    _assert_installed(root, fake)
    _assert_no_leftovers(root)


def test_official_archive_list_pins_the_published_md5s_and_sizes() -> None:
    """The training zip carries its own md5 (not GTSRB-Training_fixed.zip's 513f3c79...), each archive its part
    and its official size, which caps a download at twice the size plus 1 MiB."""
    md5s = {a.filename: a.md5 for a in OFFICIAL_ARCHIVES}
    assert md5s == {
        "GTSRB_Final_Training_Images.zip": "f33fd80ac59bff73c82d25ab499e03a3",
        "GTSRB_Final_Test_Images.zip": "c7e4e6327067d32654124b0fe9e82185",
        "GTSRB_Final_Test_GT.zip": "fe31e9c9270bbcd7b84b7f21a9d9d9e5",
    }
    assert "513f3c79a4c5141765e10e952eaa2478" not in md5s.values()
    assert {a.filename: a.part for a in OFFICIAL_ARCHIVES} == {TRAIN: "train", TEST: "test", GT: "test"}
    assert {a.filename: a.size for a in OFFICIAL_ARCHIVES} == {TRAIN: 276_294_756, TEST: 88_978_620, GT: 99_620}
    assert [a.cap for a in OFFICIAL_ARCHIVES] == [553_638_088, 179_005_816, 1_247_816]


def _test_part(fake: FakeGTSRB) -> dict[str, bytes]:
    """The expected files of the test part only (images, the label-less CSV, GT-final_test.csv)."""
    return {rel: data for rel, data in fake.expected.items() if rel.startswith("GTSRB/Final_Test/")}


def test_test_only_download_skips_training_archive_and_rerun_fetches_nothing(
    tmp_path: Path, fake: FakeGTSRB, server: _Server
) -> None:
    """parts=("test",): test images + GT-final_test.csv installed, the training zip never requested."""
    root = tmp_path / "data"
    assert _get(fake, server, root, parts=("test",)) == root.resolve()
    for rel, data in _test_part(fake).items():
        assert (root / rel).read_bytes() == data, rel
    assert (root / GT_CSV).read_bytes() == GT_BYTES
    assert sorted(server.paths()) == sorted([f"/{TEST}", f"/{GT}"])
    assert not (root / "GTSRB" / "Final_Training").exists()
    assert not (root / ".downloads" / TRAIN).exists()
    assert layout_problems(root, ("test",)) == []
    assert any("Final_Training" in p for p in layout_problems(root))  # the full layout still lacks training
    _assert_no_leftovers(root)

    _get(fake, server, root, parts=("test",))
    assert len(server.requests) == 2  # nothing fetched again
    assert f"/{TRAIN}" not in server.paths()

    _get(fake, server, root)  # later asking for everything fetches only the training zip
    assert server.paths()[2:] == [f"/{TRAIN}"]
    _assert_installed(root, fake)


def test_already_complete_check_works_per_part(tmp_path: Path, fake: FakeGTSRB, server: _Server) -> None:
    """A hand-unpacked test part is left alone; only the missing training part is fetched."""
    root = tmp_path / "data"
    for rel, data in _test_part(fake).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    before = _snapshot(root)
    _get(fake, server, root, parts=("test",))
    assert server.requests == []
    assert _snapshot(root) == before

    _get(fake, server, root)
    assert server.paths() == [f"/{TRAIN}"]
    _assert_installed(root, fake)


@pytest.mark.parametrize("parts", [(), ("validation",), ("test", "bogus")])
def test_unknown_parts_are_rejected(tmp_path: Path, fake: FakeGTSRB, parts: tuple[str, ...]) -> None:
    """An empty or unknown selection of parts is a ValueError, before anything is created."""
    with pytest.raises(ValueError, match="parts"):
        download_gtsrb(tmp_path / "data", base_url="http://127.0.0.1:9/", archives=fake.archives, parts=parts)
    with pytest.raises(ValueError, match="parts"):
        layout_problems(tmp_path, parts)
    assert not (tmp_path / "data").exists()


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The command line's main, in-process (the fixture cleared GTSRB_MIRROR/ROOT)."""
    return run_in_process("data.download", list(args))


def test_cli_with_md5_overrides(tmp_path: Path, fake: FakeGTSRB, server: _Server) -> None:
    """(f) `python -m ... --mirror URL --md5 F=H ...` (a mirror with its own md5s) exits 0, prints the export line."""
    root = tmp_path / "data"
    overrides = [arg for a in fake.archives for arg in ("--md5", f"{a.filename}={a.md5.upper()}")]
    result = _run_cli("--root", str(root), "--mirror", server.url, *overrides)
    assert result.returncode == 0, result.stderr
    assert f"export GTSRB_ROOT={root.resolve()}" in result.stdout.splitlines()
    assert "Traceback" not in result.stderr
    _assert_installed(root, fake)


def test_cli_without_overrides_reports_checksum_error(tmp_path: Path, fake: FakeGTSRB, server: _Server) -> None:
    """Without --md5 the official checksums reject the fake archives: exit 1, one-line error."""
    result = _run_cli("--root", str(tmp_path / "data"), "--mirror", server.url, "--no-progress")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: checksum mismatch")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()


def test_cli_404_is_one_line_without_traceback(tmp_path: Path, fake: FakeGTSRB, server: _Server) -> None:
    """(f) A mirror without the files: non-zero exit, a single 'error:' line naming the URL."""
    mirror = server.url + "missing/"
    result = _run_cli("--root", str(tmp_path / "data"), "--mirror", mirror, "--no-progress")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert mirror + TRAIN in lines[0]
    assert result.stdout == ""


def test_cli_only_test_fetches_only_the_test_archives(tmp_path: Path, fake: FakeGTSRB, server: _Server) -> None:
    """`--only test`: exit 0, test images + GT-final_test.csv installed, the training zip never requested."""
    root = tmp_path / "data"
    overrides = [arg for a in fake.archives[1:] for arg in ("--md5", f"{a.filename}={a.md5}")]
    result = _run_cli("--root", str(root), "--mirror", server.url, "--only", "test", "--no-progress", *overrides)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert f"export GTSRB_ROOT={root.resolve()}" in result.stdout.splitlines()
    assert "test set is ready" in result.stdout
    assert sorted(server.paths()) == sorted([f"/{TEST}", f"/{GT}"])
    for rel, data in _test_part(fake).items():
        assert (root / rel).read_bytes() == data, rel
    assert not (root / "GTSRB" / "Final_Training").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--only", "train"],
        ["--md5", "nope"],
        ["--md5", "unknown.zip=" + "0" * 32],
        ["--md5", f"{TRAIN}=xyz"],
        ["--md5", f"{TRAIN}=none"],  # every archive is checked: there is no way to turn the md5 off
        ["--timeout", "0"],
        ["--timeout", "soon"],
    ],
)
def test_cli_usage_errors(tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Bad --only, --md5 or --timeout values are a usage error (exit 2) naming the flag, before any network access."""
    with pytest.raises(SystemExit) as info:
        main(["--root", str(tmp_path / "data"), *args, "--mirror", "http://127.0.0.1:9/"])
    assert info.value.code == 2
    assert args[0] in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_datamodule_prepare_data_downloads_when_asked(
    tmp_path: Path, fake: FakeGTSRB, server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """data.download=true: prepare_data fetches into data.data_dir (from $GTSRB_MIRROR), once."""
    import functools

    import alexnet_gtsrb.data.download as download_module
    from alexnet_gtsrb.data.datamodule import GTSRBDataModule
    from alexnet_gtsrb.data.gtsrb import detect_layout

    monkeypatch.setenv("GTSRB_MIRROR", server.url)
    real = download_module.download_gtsrb
    monkeypatch.setattr(download_module, "download_gtsrb", functools.partial(real, archives=fake.archives))
    root = tmp_path / "data"
    dm = GTSRBDataModule(data_dir=str(root), download=True, image_size=67)
    dm.prepare_data()
    assert detect_layout(root) == (root.resolve(), "official")
    _assert_installed(root, fake)
    n = len(server.requests)
    dm.prepare_data()  # data present: nothing fetched again
    assert len(server.requests) == n
