"""Adversarial tests of alexnet_gtsrb.data.download against hostile archives, served by a mirror on 127.0.0.1
(tests/helpers/hostile.py) with a matching md5, as a mirror's user would vouch for them with --md5: a file that
is no zip, a member that inflates past its declared size, a symbolic-link member, a data root or downloads
folder that is a file, and a disk that fills while unpacking (a real tmpfs that runs out of inodes; skipped
where mounting is not permitted). Each test checks that the message is one line naming the archive, what is
left behind, and that nothing appears outside the data root. Zip-bomb and member-conflict checks are gone on
purpose: an archive that matches its md5 is the official one (docs/data.md). Unsafe member paths:
tests/test_download.py. Hostile mirrors: tests/test_adversarial_download.py.
"""

from __future__ import annotations

import os
import stat
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from alexnet_gtsrb.data.download import layout_problems
from tests.helpers.hostile import (
    TRAIN,
    HostileMirror,
    declare_size,
    fails,
    get,
    make_zip,
    running_mirror,
    serve,
    tmpfs,
    train_layout,
    train_spec,
    tree,
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


def _unknown_method(data: bytes) -> bytes:
    """The zip with every member's compression method (local header and central directory) set to 99."""
    buf = bytearray(data)
    for sig, at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        pos = buf.find(sig)
        while pos != -1:
            struct.pack_into("<H", buf, pos + at, 99)
            pos = buf.find(sig, pos + 4)
    return bytes(buf)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"an html error page, not a zip", "File is not a zip file"),
        (_unknown_method(make_zip(train_layout())), "compression method"),
    ],
    ids=["no-zip", "unknown-compression"],
)
def test_an_unreadable_zip_is_one_line_and_deleted(
    tmp_path: Path, mirror: HostileMirror, data: bytes, why: str
) -> None:
    """Bytes that match their md5 but that zipfile cannot read: one line naming the archive; it is deleted."""
    mirror.routes[TRAIN] = serve(data)
    root = tmp_path / "data"
    message = fails(mirror, root, train_spec(data))
    assert message.startswith(f"{TRAIN} is not a readable zip (") and why in message
    assert message.endswith("rerun to download it again")
    assert not (root / ".downloads" / TRAIN).exists()


def test_member_larger_than_declared_is_refused_and_the_unpack_redone(tmp_path: Path, mirror: HostileMirror) -> None:
    """A member declaring 1,000 bytes that inflates to 5 MB: zipfile stops at the declared size and the CRC
    fails; one line, the archive deleted, its marker left so that the next run fetches and unpacks it again
    even though the layout already looks complete."""
    bad = declare_size(make_zip([*train_layout(), ("GTSRB/liar.ppm", bytes(5 * 2**20))]), "GTSRB/liar.ppm", 1000)
    mirror.routes[TRAIN] = serve(bad)
    root = tmp_path / "data"
    message = fails(mirror, root, train_spec(bad))
    assert message.startswith(f"{TRAIN} is not a readable zip (Bad CRC-32 for file 'GTSRB/liar.ppm')")
    assert (root / "GTSRB/liar.ppm").stat().st_size <= 1000
    assert tree(root / ".downloads") == {f"{TRAIN}.unpacking"}
    assert layout_problems(root, ("train",)) == []  # the members before the liar are in place

    good = make_zip(train_layout())
    mirror.routes[TRAIN] = serve(good)
    get(mirror, root, train_spec(good))
    assert [p for p, _ in mirror.requests] == [TRAIN, TRAIN]
    assert tree(root / ".downloads") == {TRAIN}


def test_a_symlink_member_becomes_a_plain_file(tmp_path: Path, mirror: HostileMirror) -> None:
    """zipfile never creates symbolic links: a link member pointing outside the root is written as a small
    regular file holding the link's text, and nothing outside the root is touched."""
    info = zipfile.ZipInfo("GTSRB/Final_Training/Images/00000/link.ppm")
    info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
    path = tmp_path / "served.zip"
    path.write_bytes(make_zip(train_layout()))
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(info, str(tmp_path / "outside"))
    data = path.read_bytes()
    path.unlink()
    mirror.routes[TRAIN] = serve(data)
    root = tmp_path / "data"
    get(mirror, root, train_spec(data))
    link = root / info.filename
    assert not link.is_symlink() and link.read_text() == str(tmp_path / "outside")


@pytest.mark.parametrize("what", ["root", ".downloads"])
def test_root_or_downloads_that_is_a_file(tmp_path: Path, mirror: HostileMirror, what: str) -> None:
    """--root (or its .downloads) being a file: one line naming it, no request, nothing changed."""
    root = tmp_path / "data"
    blocker = root if what == "root" else root / ".downloads"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory")
    before = tree(tmp_path)
    message = fails(mirror, root, train_spec(b"x"))
    assert message.startswith(f"downloading {TRAIN} failed in {root / '.downloads'} (Not a directory: {blocker}")
    assert mirror.requests == [] and tree(tmp_path) == before


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_a_cached_archive_that_is_no_regular_file_is_refused(tmp_path: Path, mirror: HostileMirror, kind: str) -> None:
    """A FIFO, a folder or a link to /dev/zero where the cached archive goes: one line naming it, before it is
    read (hashing a FIFO would block for ever, /dev/zero never ends), no request."""
    cached = tmp_path / "data" / ".downloads" / TRAIN
    cached.parent.mkdir(parents=True)
    {"fifo": os.mkfifo, "folder": os.mkdir, "device": lambda p: os.symlink("/dev/zero", p)}[kind](cached)
    message = fails(mirror, tmp_path / "data", train_spec(b"x"))
    assert message == f"{cached} is not a regular file; move it aside and rerun"
    assert mirror.requests == []


def test_disk_full_during_extraction_keeps_archive_and_marker(tmp_path: Path, mirror: HostileMirror) -> None:
    """A real tmpfs runs out of inodes half-way through unpacking: one line naming the root; the verified
    archive is kept and its marker says that the next run must unpack it again."""
    data = make_zip(train_layout())
    mirror.routes[TRAIN] = serve(data)
    with tmpfs(tmp_path / "small", "size=2m,nr_inodes=40") as small:
        root = small / "data"
        message = fails(mirror, root, train_spec(data))
        assert message == (
            f"no space left on device in {root} while unpacking {TRAIN}; "
            "free some space or choose another --root, then rerun"
        )
        assert {f"data/.downloads/{TRAIN}", f"data/.downloads/{TRAIN}.unpacking"} <= tree(small)
