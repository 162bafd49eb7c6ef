"""Adversarial tests of alexnet_gtsrb.data.download against hostile archives, served by a mirror on
127.0.0.1 (tests/helpers/hostile.py): members that conflict with each other or with what is already in
the root, zip bombs (200 MB of zeros, patched declared sizes, a member that inflates past its declared
size, too many members), and a disk that fills while unpacking (a real tmpfs that runs out of inodes;
skipped where mounting is not permitted). Each test checks the error (exception or exit code), that its
message is one line naming the archive and the member, and that nothing is left behind: no temporary
extraction directory, the root unchanged, nothing outside it. Hostile mirrors: test_adversarial_download.py.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from alexnet_gtsrb.data.download import layout_problems
from alexnet_gtsrb.data.download import unpack as unpack_module
from tests.helpers.hostile import (
    TEST,
    TRAIN,
    HostileMirror,
    cli_error,
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


@pytest.fixture(scope="module")
def zeros_bomb() -> bytes:
    """200 MB of zeros deflated into a ~200 KB zip (built once: it takes a second or two)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("GTSRB/zeros.ppm", "w") as out:
        block = bytes(2**20)
        for _ in range(200):
            out.write(block)
    return buf.getvalue()


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


# ----------------------------------------------------------------------------------- conflicting members

CONFLICTS = {
    "file-then-dir": [("GTSRB", b"a file"), ("GTSRB/x.ppm", b"P6")],
    "dir-then-file": [("GTSRB/x.ppm", b"P6"), ("GTSRB", b"a file")],
    "same-member-twice": [("GTSRB/x.ppm", b"one"), ("GTSRB/x.ppm", b"two")],
    "same-path-spelled-twice": [("GTSRB/x.ppm", b"one"), ("GTSRB//./x.ppm", b"two")],
    "dir-entry-and-file": [("GTSRB/x/", b""), ("GTSRB/x", b"a file")],
    "file-and-dir-entry": [("GTSRB/x", b"a file"), ("GTSRB/x/", b"")],
}


@pytest.mark.parametrize("case", sorted(CONFLICTS))
def test_conflicting_members_are_refused_before_extraction(tmp_path: Path, mirror: HostileMirror, case: str) -> None:
    """Members that cannot all be unpacked: one line naming the archive and both members; archive deleted,
    no temp dir, the root (created by the run) gone again, nothing written outside it."""
    entries = CONFLICTS[case] + train_layout()
    data = make_zip(entries)
    mirror.routes[TRAIN] = serve(data)
    root = tmp_path / "data"
    outside = tree(tmp_path)
    message = fails(mirror, root, train_spec(data))
    first, second = (name for name, _ in CONFLICTS[case])
    assert message.startswith(f"refusing to extract {TRAIN}: member '{second}'")
    assert ("appears twice" in message) if first == second else (f"conflicts with member '{first}'" in message)
    assert "Errno" not in message
    assert not root.exists()
    assert tree(tmp_path) == outside


def test_conflict_with_existing_file_leaves_root_unchanged(tmp_path: Path, mirror: HostileMirror) -> None:
    """A file of the root where the archive needs a directory: refused before anything is moved in (an
    earlier-sorting member must not land either); the verified archive is kept for a rerun."""
    data = make_zip([("AAA/first.txt", b"would be merged first"), *train_layout()])
    mirror.routes[TRAIN] = serve(data)
    root = tmp_path / "data"
    (root / "GTSRB").mkdir(parents=True)
    (root / "GTSRB" / "Final_Training").write_text("a user file")
    before = tree(root)
    message = fails(mirror, root, train_spec(data))
    assert TRAIN in message and "member 'GTSRB/Final_Training/Images/00000/00000_00000.ppm'" in message
    assert f"{root / 'GTSRB' / 'Final_Training'} is in the way" in message
    assert tree(root) == before | {".downloads", f".downloads/{TRAIN}"}
    assert (root / "GTSRB" / "Final_Training").read_text() == "a user file"

    (root / "GTSRB" / "Final_Training").unlink()  # moved aside: the kept archive is reused, not fetched again
    get(mirror, root, train_spec(data))
    assert [p for p, _ in mirror.requests] == [TRAIN]
    assert layout_problems(root, ("train",)) == [] and (root / "AAA" / "first.txt").is_file()


@pytest.mark.parametrize("what", ["root", ".downloads"])
def test_root_or_downloads_that_is_a_file(tmp_path: Path, mirror: HostileMirror, what: str) -> None:
    """--root (or its .downloads) being a file: one line naming it, no request, nothing changed."""
    root = tmp_path / "data"
    blocker = root if what == "root" else root / ".downloads"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory")
    before = tree(tmp_path)
    message = fails(mirror, root, train_spec(b"x"))
    assert message.startswith(f"{blocker} exists but is not a directory")
    assert mirror.requests == [] and tree(tmp_path) == before


def test_cli_conflicting_members(tmp_path: Path, mirror: HostileMirror) -> None:
    """The command line: exit 1, one 'error:' line naming the archive and the member, nothing left."""
    data = make_zip([("GTSRB/Final_Test/Images", b"a file"), ("GTSRB/Final_Test/Images/00000.ppm", b"P6")])
    mirror.routes[TEST] = serve(data)
    root = tmp_path / "data"
    code, line = cli_error("--root", str(root), "--mirror", mirror.url, "--only", "test", "--md5", f"{TEST}=none")
    assert code == 1
    assert TEST in line and "member 'GTSRB/Final_Test/Images/00000.ppm'" in line
    assert not root.exists()


# ------------------------------------------------------------------------------------------- zip bombs


def test_zeros_bomb_is_refused_before_extraction(tmp_path: Path, mirror: HostileMirror, zeros_bomb: bytes) -> None:
    """200 MB of zeros in a ~200 KB zip: over the default 20x-the-archive cap, refused before anything
    is unpacked; the archive is deleted and the root gone again."""
    mirror.routes[TRAIN] = serve(zeros_bomb)
    root = tmp_path / "data"
    message = fails(mirror, root, train_spec(zeros_bomb))
    assert message.startswith(f"refusing to extract {TRAIN}: its members declare 209,715,200 bytes uncompressed")
    assert f"20x the archive's {len(zeros_bomb):,} bytes" in message and "--max-unpacked" in message
    assert not root.exists()


def test_huge_declared_sizes_are_refused(tmp_path: Path, mirror: HostileMirror) -> None:
    """Members declaring 4 GiB in all (sizes patched into the headers, data tiny): refused by the default
    cap; max_unpacked= (CLI --max-unpacked) sets a fixed cap instead, here still too small."""
    data = make_zip([*train_layout(), ("GTSRB/a.ppm", b"a"), ("GTSRB/b.ppm", b"b")])
    for name in ("GTSRB/a.ppm", "GTSRB/b.ppm"):
        data = declare_size(data, name, 2**31 - 1)
    mirror.routes[TRAIN] = serve(data)
    root = tmp_path / "data"
    message = fails(mirror, root, train_spec(data))
    assert re.search(r"declare 4,294,96\d,\d{3} bytes uncompressed, more than the cap of 16,777,216 bytes", message)
    message = fails(mirror, root, train_spec(data), max_unpacked=3 * 2**30)
    assert "cap of 3,221,225,472 bytes (set with --max-unpacked)" in message
    assert not root.exists()


def test_member_larger_than_declared_is_refused(tmp_path: Path, mirror: HostileMirror) -> None:
    """A member declaring 1,000 bytes that inflates to 5 MB: never unpacked past what it declares
    (zipfile stops at the declared size and the CRC fails); temp dir removed, archive deleted."""
    data = declare_size(make_zip([*train_layout(), ("GTSRB/liar.ppm", bytes(5 * 2**20))]), "GTSRB/liar.ppm", 1000)
    mirror.routes[TRAIN] = serve(data)
    root = tmp_path / "data"
    message = fails(mirror, root, train_spec(data))
    assert message.startswith(f"{TRAIN} is corrupt (Bad CRC-32 for file 'GTSRB/liar.ppm')")
    assert not root.exists()


def test_bytes_past_the_declared_size_stop_extraction(
    tmp_path: Path, mirror: HostileMirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our own guard, for a zip reader that would not stop at the declared size: a member stream yielding
    more than it declares is cut off as soon as it passes, not after."""
    data = make_zip([*train_layout(), ("GTSRB/liar.ppm", b"x" * 1000)])
    mirror.routes[TRAIN] = serve(data)
    read = []
    real_open = zipfile.ZipFile.open

    def lying_open(self: zipfile.ZipFile, name: zipfile.ZipInfo, *args: object, **kwargs: object) -> object:
        if isinstance(name, zipfile.ZipInfo) and name.filename == "GTSRB/liar.ppm":

            class Endless(io.RawIOBase):
                def readable(self) -> bool:
                    return True

                def readinto(self, b: bytearray) -> int:
                    b[:] = b"\0" * len(b)
                    read.append(len(b))
                    return len(b)

            return io.BufferedReader(Endless())
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", lying_open)
    root = tmp_path / "data"
    message = fails(mirror, root, train_spec(data))
    assert "member 'GTSRB/liar.ppm' unpacks to more than the 1,000 bytes it declares" in message
    assert "extraction stopped, nothing was installed and the archive was deleted" in message
    assert sum(read) <= 2 * 2**20  # stopped at the first chunk past the declared size
    assert not root.exists()


def test_too_many_members_are_refused(tmp_path: Path, mirror: HostileMirror, monkeypatch: pytest.MonkeyPatch) -> None:
    """More members than a GTSRB archive could hold (an inode bomb): refused before extraction."""
    monkeypatch.setattr(unpack_module, "MAX_MEMBERS", 50)
    data = make_zip(train_layout() + [(f"GTSRB/empty/{i}", b"") for i in range(10)])
    mirror.routes[TRAIN] = serve(data)
    root = tmp_path / "data"
    message = fails(mirror, root, train_spec(data))
    assert "it holds 53 members, more than the 50 allowed" in message
    assert not root.exists()


def test_cli_max_unpacked(tmp_path: Path, mirror: HostileMirror) -> None:
    """--max-unpacked BYTES on the command line: exit 1, one line, root gone."""
    data = make_zip([("GTSRB/Final_Test/Images/00000.ppm", bytes(100_000))])
    mirror.routes[TEST] = serve(data)
    root = tmp_path / "data"
    args = ("--root", str(root), "--mirror", mirror.url, "--only", "test", "--md5", f"{TEST}=none")
    code, line = cli_error(*args, "--max-unpacked", "50000")
    assert code == 1
    assert "declare 100,000 bytes uncompressed, more than the cap of 50,000 bytes" in line
    assert not root.exists()


# ------------------------------------------------------------------------------------------- full disk


def test_disk_full_during_extraction_removes_the_temp_dir(tmp_path: Path, mirror: HostileMirror) -> None:
    """A real tmpfs runs out of inodes half-way through unpacking (the byte check up front passes): the
    temporary directory is removed, the verified archive kept, one line names the root."""
    data = make_zip(train_layout())
    mirror.routes[TRAIN] = serve(data)
    with tmpfs(tmp_path / "small", "size=2m,nr_inodes=40") as small:
        root = small / "data"
        message = fails(mirror, root, train_spec(data))
        assert message.startswith(f"no space left on device in {root} while unpacking {TRAIN}")
        assert "the partly unpacked files were removed" in message
        assert tree(small) == {"data", "data/.downloads", f"data/.downloads/{TRAIN}"}
