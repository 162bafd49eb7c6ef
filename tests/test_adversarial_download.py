"""Adversarial tests of alexnet_gtsrb.data.download against a hostile mirror on 127.0.0.1
(tests/helpers/hostile.py): a body that never ends or announces too much (size cap), bytes trickled one
at a time (deadline), a disk that fills while downloading (a real 2 MiB tmpfs; skipped where mounting is
not permitted). Each test checks the error (exception or exit code), that its message is one line naming
what matters, and what is left: no ``.part`` unless a rerun can resume it, nothing outside the data root.
Hostile archives: tests/test_adversarial_archive.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from alexnet_gtsrb.data.download import OFFICIAL_ARCHIVES, Archive, layout_problems
from alexnet_gtsrb.data.download.archive import DEFAULT_MAX_DOWNLOAD, download_cap
from tests.helpers import run_in_process
from tests.helpers.hostile import (
    GT,
    TEST,
    TRAIN,
    HostileMirror,
    assert_no_leftovers,
    cli_error,
    endless,
    fails,
    get,
    make_zip,
    running_mirror,
    serve,
    tmpfs,
    train_layout,
    train_spec,
    tree,
    trickle,
    trickle_headers,
)


@pytest.fixture
def mirror() -> Iterator[HostileMirror]:
    """A hostile mirror on 127.0.0.1, with no routes yet."""
    with running_mirror() as srv:
        yield srv


@pytest.fixture(autouse=True)
def _nothing_outside_root(tmp_path: Path) -> Iterator[None]:
    """Every test works in tmp_path/data (or a tmpfs at tmp_path/small): nothing else may appear."""
    yield
    assert {p.name for p in tmp_path.iterdir()} <= {"data", "small"}


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No mirror/root from the caller's environment, and never a proxy for 127.0.0.1."""
    monkeypatch.delenv("GTSRB_MIRROR", raising=False)
    monkeypatch.delenv("GTSRB_ROOT", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


# -------------------------------------------------------------------------------------------- size cap


def test_endless_stream_without_length_is_cut_at_the_cap(tmp_path: Path, mirror: HostileMirror) -> None:
    """No Content-Length and no end: stopped once past size x 1.25, the .part deleted, within seconds."""
    mirror.routes[TRAIN] = endless()
    archives = train_spec(b"", size=2**20)  # cap 1.25 MiB
    root = tmp_path / "data"
    start = time.monotonic()
    message = fails(mirror, root, archives)
    assert time.monotonic() - start < 10
    assert message.startswith(f"{mirror.url}{TRAIN} sent at least ")
    assert f"more than the cap of {download_cap(archives[0]):,} bytes for {TRAIN}" in message
    assert "1.25x its expected size of 1,048,576 bytes" in message and f"--size {TRAIN}=BYTES" in message
    assert not root.exists()


def test_announced_length_over_the_cap_is_refused_before_writing(tmp_path: Path, mirror: HostileMirror) -> None:
    """A Content-Length above the cap: refused at once, no .part ever written."""
    mirror.routes[TRAIN] = endless(content_length=10 * 2**20)
    root = tmp_path / "data"
    message = fails(mirror, root, train_spec(b"", size=2**20))
    assert "announces 10,485,760 bytes" in message and "cap of 1,310,720 bytes" in message
    assert not root.exists()


def test_default_caps_follow_the_official_sizes() -> None:
    """The official archives' caps are 1.25x their published sizes; an unknown size is capped at 2 GiB."""
    sizes = {a.filename: a.size for a in OFFICIAL_ARCHIVES}
    assert sizes == {TRAIN: 276_294_756, TEST: 88_978_620, GT: 99_620}
    assert [download_cap(a) for a in OFFICIAL_ARCHIVES] == [345_368_445, 111_223_275, 124_525]
    assert download_cap(Archive("x.zip", None, "test")) == DEFAULT_MAX_DOWNLOAD == 2 * 2**30


def test_cli_size_override_caps_an_endless_mirror(tmp_path: Path, mirror: HostileMirror) -> None:
    """--size FILE=BYTES (for mirrors that repackage) sets the cap: exit 1, one line, no .part."""
    mirror.routes[TEST] = endless()
    root = tmp_path / "data"
    code, line = cli_error("--root", str(root), "--mirror", mirror.url, "--only", "test", "--size", f"{TEST}=100000")
    assert code == 1
    assert "more than the cap of 125,000 bytes" in line and mirror.url + TEST in line
    assert not root.exists()


# -------------------------------------------------------------------------------------------- deadline


def test_trickling_mirror_hits_the_deadline_and_a_rerun_resumes(tmp_path: Path, mirror: HostileMirror) -> None:
    """One byte every 50 ms never trips the 5 s read timeout; the 1 s deadline stops it, keeps the .part,
    and a rerun against an honest mirror resumes from it with a Range request."""
    data = make_zip(train_layout())
    mirror.routes[TRAIN] = trickle(data, 0.05)
    root = tmp_path / "data"
    start = time.monotonic()
    message = fails(mirror, root, train_spec(data), timeout=5, deadline=1)
    assert time.monotonic() - start < 4
    part = root / ".downloads" / f"{TRAIN}.part"
    kept = part.stat().st_size
    assert 0 < kept < len(data) and part.read_bytes() == data[:kept]
    assert message.startswith(f"download of {mirror.url}{TRAIN} did not finish within the deadline of 1 s")
    assert f"the partial file {part} ({kept:,} bytes) was kept: rerun to resume" in message
    assert not list(root.glob(".extract-*"))

    mirror.routes[TRAIN] = serve(data)
    get(mirror, root, train_spec(data))
    assert mirror.requests[-1] == (TRAIN, f"bytes={kept}-")
    assert layout_problems(root, ("train",)) == []
    assert_no_leftovers(root)


def test_trickled_headers_hit_the_deadline(tmp_path: Path, mirror: HostileMirror) -> None:
    """Headers that never end: the deadline still applies; nothing was received, so no .part is left."""
    mirror.routes[TRAIN] = trickle_headers(0.05)
    root = tmp_path / "data"
    start = time.monotonic()
    message = fails(mirror, root, train_spec(b"x"), timeout=5, deadline=1)
    assert time.monotonic() - start < 4
    assert "did not finish within the deadline of 1 s; nothing was received" in message
    assert not root.exists()


def test_cli_deadline(tmp_path: Path, mirror: HostileMirror) -> None:
    """--deadline SECONDS on the command line: exit 1, one line naming the URL and the deadline."""
    mirror.routes[TEST] = trickle(bytes(1000), 0.05)
    root = tmp_path / "data"
    args = ("--root", str(root), "--mirror", mirror.url, "--only", "test", "--deadline", "1", "--timeout", "5")
    code, line = cli_error(*args)
    assert code == 1
    assert f"download of {mirror.url}{TEST} did not finish within the deadline of 1 s" in line
    assert "rerun to resume" in line and (root / ".downloads" / f"{TEST}.part").is_file()


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_cli_rejects_bad_deadline(tmp_path: Path, value: str) -> None:
    """A deadline must be a positive number: usage error (exit 2) before any network access."""
    result = run_in_process("data.download", ["--root", str(tmp_path / "data"), "--deadline", value])
    assert result.returncode == 2 and "--deadline" in result.stderr
    assert not (tmp_path / "data").exists()


# ------------------------------------------------------------------------------------------- full disk


def test_disk_full_during_download_deletes_the_part(tmp_path: Path, mirror: HostileMirror) -> None:
    """A real 2 MiB filesystem fills while the download streams (no Content-Length, so no free-space check
    up front): the .part is deleted, one line names the folder."""
    mirror.routes[TRAIN] = endless()
    with tmpfs(tmp_path / "small", "size=2m") as small:
        root = small / "data"
        message = fails(mirror, root, train_spec(b"", size=8 * 2**20))
        assert message.startswith(f"no space left on device in {root / '.downloads'} while downloading")
        assert "the partial file was deleted" in message
        assert tree(small) == set()


def test_cli_disk_full(tmp_path: Path, mirror: HostileMirror) -> None:
    """The command line on a full disk: exit 1, one 'error: no space left on device' line, no .part."""
    mirror.routes[TEST] = endless()
    with tmpfs(tmp_path / "small", "size=2m") as small:
        root = small / "data"
        code, line = cli_error(
            "--root", str(root), "--mirror", mirror.url, "--only", "test", "--size", f"{TEST}=9000000"
        )
        assert code == 1 and line.startswith(f"error: no space left on device in {root / '.downloads'}")
        assert tree(small) == set()
