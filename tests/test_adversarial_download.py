"""Adversarial tests of alexnet_gtsrb.data.download against a hostile mirror on 127.0.0.1
(tests/helpers/hostile.py): a body that never ends, with or without an announced length (the size cap, the one
guard the md5 cannot give, since the md5 is checked only once the transfer ends), and a disk that fills while
downloading (a real 2 MiB tmpfs; skipped where mounting is not permitted). Each test checks the error (exception
or exit code), that its message is one line naming what matters, and that nothing is left: no temporary file,
nothing outside the data root. Hostile archives: tests/test_adversarial_archive.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.hostile import (
    TEST,
    TRAIN,
    HostileMirror,
    cli_error,
    endless,
    fails,
    running_mirror,
    tmpfs,
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


# -------------------------------------------------------------------------------------------- size cap


@pytest.mark.parametrize("announced", [None, 10 * 2**20])
def test_endless_stream_is_cut_at_the_cap(tmp_path: Path, mirror: HostileMirror, announced: int | None) -> None:
    """Zeros without end (announced as 10 MiB, or with no Content-Length): stopped once past twice the size plus
    1 MiB, within seconds, not retried; the temporary file deleted and the root gone again."""
    mirror.routes[TRAIN] = endless(announced)
    archives = train_spec(b"", size=2**20)  # cap 3 MiB
    root = tmp_path / "data"
    start = time.monotonic()
    message = fails(mirror, root, archives, retries=2)
    assert time.monotonic() - start < 10
    assert message.startswith(f"{mirror.url}{TRAIN} sent more than 3,145,728 bytes, twice the 1,048,576 of {TRAIN}")
    assert "the transfer was stopped and nothing kept" in message and "--mirror" in message
    assert [p for p, _ in mirror.requests] == [TRAIN]
    assert not root.exists()


# ------------------------------------------------------------------------------------------- full disk


def test_disk_full_during_download_deletes_the_temporary_file(tmp_path: Path, mirror: HostileMirror) -> None:
    """A real 2 MiB filesystem fills while the download streams: pooch's temporary file is deleted, one line
    names the folder, nothing is retried."""
    mirror.routes[TRAIN] = endless()
    with tmpfs(tmp_path / "small", "size=2m") as small:
        root = small / "data"
        message = fails(mirror, root, train_spec(b"", size=8 * 2**20), retries=2)
        assert message == (
            f"no space left on device in {root / '.downloads'} while downloading {TRAIN}; "
            "free some space or choose another --root, then rerun"
        )
        assert [p for p, _ in mirror.requests] == [TRAIN]
        assert tree(small) == set()


def test_cli_disk_full(tmp_path: Path, mirror: HostileMirror) -> None:
    """The command line on a full disk: exit 1, one 'error: no space left on device' line, no file left."""
    mirror.routes[TEST] = endless()
    with tmpfs(tmp_path / "small", "size=2m") as small:
        root = small / "data"
        code, line = cli_error("--root", str(root), "--mirror", mirror.url, "--only", "test")
        assert code == 1 and line.startswith(f"error: no space left on device in {root / '.downloads'}")
        assert tree(small) == set()
