"""Download, md5-check and unpack the official GTSRB archives into a data root, which then holds::

    <root>/GTSRB/Final_Training/Images/000NN/*.ppm (+ GT-000NN.csv)   43 class directories   part "train"
    <root>/GTSRB/Final_Test/Images/*.ppm + GT-final_test.csv                                  part "test"

The md5 of each archive, checked before anything is unpacked, is the trust boundary: an archive that matches it
is the official one (or the one the user vouched for with ``--md5``), so its members need no zip-bomb caps. pooch
downloads into a temporary file under ``<root>/.downloads`` that takes the archive's name only once its md5
matches, retries network errors, and reuses a cached archive only if its md5 matches. Added here: a size cap on
what a mirror may send before the md5 can be checked, the refusal of member paths that leave the root, the
layout check, one-line errors. The command line is :mod:`.__main__`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import sys
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pooch

from alexnet_gtsrb.data.classes import NUM_CLASSES
from alexnet_gtsrb.errors import UserError

DEFAULT_BASE_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
MIRROR_ENV_VAR = "GTSRB_MIRROR"
ROOT_ENV_VAR = "GTSRB_ROOT"
DOWNLOADS_DIR = ".downloads"
#: The parts of the dataset an archive can belong to, in download order.
PARTS: tuple[str, ...] = ("train", "test")
#: Network retries after the first try (pooch waits 1 s, then 2 s); a 4xx answer or a wrong md5 is not retried.
RETRIES = 2
#: A member name that would leave the folder it is unpacked into: absolute, a drive letter, or a '..' part.
_UNSAFE_MEMBER = re.compile(r"^[\\/]|^[A-Za-z]:|(^|[\\/])\.\.([\\/]|$)")


class DownloadError(UserError, RuntimeError):
    """GTSRB cannot be fetched, verified or unpacked; the one-line message says what to do next (a UserError:
    the training entry point reports it without a traceback)."""


@dataclass(frozen=True)
class Archive:
    """One zip on the mirror: its file name, md5, the part of the dataset it carries ("train" or "test"), its
    size in bytes, and the sub-path of the data root where its members land ("" = the root)."""

    filename: str
    md5: str
    part: str
    size: int
    dest: str = ""

    @property
    def cap(self) -> int:
        """Bytes a mirror may send for this archive before the transfer is stopped: twice its size plus 1 MiB,
        room for a mirror that repackages the same files uncompressed (the images are ~1.7x their zips)."""
        return 2 * self.size + 2**20


# Checksums. No md5 published by the dataset's authors was found (their download page,
# https://benchmark.ini.rub.de/gtsrb_dataset.html, could not be checked directly), so each value below is the
# one that established dataset loaders pin for the same file at the same sid.erda.dk URL, with its source
# named beside it; two independent loaders agree on each of the test md5s. Not 513f3c79a4c5141765e10e952eaa2478:
# that is the md5 of GTSRB-Training_fixed.zip, a different archive (the one torchvision fetches), so no
# download of GTSRB_Final_Training_Images.zip could ever match it.
#
# Sizes: the Content-Length the sid.erda.dk server sends for each file, as recorded in public wget logs of these
# exact URLs ("Length: 276294756 (263M) [application/zip]", "Length: 88978620 (85M)", "Length: 99620 (97K)",
# each followed by "saved [N/N]"); an independent public table of GTSRB file sizes lists the same two test
# sizes. They only cap downloads (Archive.cap); the md5 is what checks the content.
OFFICIAL_ARCHIVES: tuple[Archive, ...] = (
    # md5: github.com/google-deepmind/dm_nevis, dm_nevis/datasets_storage/handlers/german_tsr.py
    # (german_tsr_dataset.download_urls). torchvision pins no md5 for this file.
    Archive("GTSRB_Final_Training_Images.zip", "f33fd80ac59bff73c82d25ab499e03a3", "train", 276_294_756),
    # md5 of this and the next: github.com/pytorch/vision, torchvision/datasets/gtsrb.py (GTSRB.download,
    # split="test"); dm_nevis german_tsr.py (above) pins the same values.
    Archive("GTSRB_Final_Test_Images.zip", "c7e4e6327067d32654124b0fe9e82185", "test", 88_978_620),
    # GT-final_test.csv sits at the top level of this zip; it belongs next to the test images.
    Archive("GTSRB_Final_Test_GT.zip", "fe31e9c9270bbcd7b84b7f21a9d9d9e5", "test", 99_620, "GTSRB/Final_Test/Images"),
)


def check_parts(parts: Sequence[str]) -> tuple[str, ...]:
    """The requested parts in canonical order; ValueError for an empty selection or an unknown part."""
    parts = (parts,) if isinstance(parts, str) else tuple(parts)
    if not parts or any(p not in PARTS for p in parts):
        raise ValueError(f"parts must be a non-empty selection of {', '.join(PARTS)}, got {parts!r}")
    return tuple(p for p in PARTS if p in parts)


def layout_problems(root: str | os.PathLike[str], parts: Sequence[str] = PARTS) -> list[str]:
    """What is missing from the official GTSRB layout under root for the given parts ("train", "test";
    default both). An empty list means those parts are complete."""
    parts = check_parts(parts)
    base, problems = Path(root) / "GTSRB", []
    has_ppm = lambda folder: folder.is_dir() and any(p.suffix.lower() == ".ppm" for p in folder.iterdir())
    if "train" in parts:
        train = base / "Final_Training" / "Images"
        missing = [f"{c:05d}" for c in range(NUM_CLASSES) if not has_ppm(train / f"{c:05d}")]
        problems += [f"{train} lacks images of {len(missing)} classes ({', '.join(missing)})"] if missing else []
    if "test" in parts:
        test = base / "Final_Test" / "Images"
        if not has_ppm(test):
            problems.append(f"no .ppm test images in {test}")
        if not (test / "GT-final_test.csv").is_file():
            problems.append(f"missing {test / 'GT-final_test.csv'} (from GTSRB_Final_Test_GT.zip)")
    return problems


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[gtsrb] {message}", file=sys.stderr, flush=True)


def _network_error(url: str, exc: Exception, downloads: Path) -> DownloadError:
    response = getattr(exc, "response", None)
    what = f"HTTP {response.status_code} {response.reason}" if response is not None else type(exc).__name__
    return DownloadError(
        f"could not fetch {url} ({what}). Check the network, try another --mirror URL (or ${MIRROR_ENV_VAR}), "
        f"or put the file into {downloads}/ yourself and rerun"
    )


def _os_error(exc: OSError, doing: str, where: Path) -> DownloadError:
    """A filesystem failure as one line (a full disk gets its own wording)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DownloadError(
            f"no space left on device in {where} while {doing}; free some space or choose another --root, then rerun"
        )
    reason = (exc.strerror or type(exc).__name__) + (f": {exc.filename}" if exc.filename else "")
    return DownloadError(f"{doing} failed in {where} ({reason}); move what is in the way or fix its permissions, rerun")


class _CappedFile(io.FileIO):
    """The file pooch's HTTPDownloader streams into, refusing to grow past the archive's cap."""

    def __init__(self, path: str, archive: Archive, url: str) -> None:
        super().__init__(path, "wb")
        self.archive, self.url = archive, url

    def write(self, chunk: Any) -> int:
        if self.tell() + len(chunk) > self.archive.cap:
            raise DownloadError(
                f"{self.url} sent more than {self.archive.cap:,} bytes, twice the {self.archive.size:,} of "
                f"{self.archive.filename} plus 1 MiB; the transfer was stopped and nothing kept. Try another --mirror"
            )
        return super().write(chunk)


def _downloader(archive: Archive, progress: bool, timeout: float) -> Callable[[str, str, Any], None]:
    """A pooch downloader: HTTP(S) through pooch.HTTPDownloader with the size cap, then the md5 check, so that
    a wrong archive is refused (and pooch deletes its temporary file) with expected and actual md5 named."""

    def download(url: str, output_file: str, fetcher: Any) -> None:
        import requests  # pooch imports it lazily too

        _say(progress, f"downloading {url}")
        http = pooch.HTTPDownloader(progressbar=progress, timeout=timeout, chunk_size=2**16)
        try:
            with _CappedFile(output_file, archive, url) as fh:
                http(url, fh, fetcher)
        except requests.HTTPError as exc:  # a 4xx will not change on a retry; 5xx and network errors are retried
            if exc.response is not None and exc.response.status_code < 500:
                raise _network_error(url, exc, Path(output_file).parent) from exc
            raise
        got, expected = pooch.file_hash(output_file, alg="md5"), archive.md5.lower()
        if got != expected:
            name = archive.filename
            raise DownloadError(
                f"checksum mismatch for {name} from {url}: expected md5 {expected}, got {got}; the download was "
                f"deleted. Rerun, try another --mirror, or give a mirror's own archive its md5 with --md5 {name}=HASH"
            )

    return download


def _install(archive: Archive, fetcher: pooch.Pooch, root: Path, progress: bool, timeout: float) -> None:
    """Fetch one archive (a cached copy is reused when its md5 matches) and unpack it, after refusing any member
    whose path would leave its folder. A marker stands while it unpacks, so that the next run redoes a cut-off
    unpack; an archive refused or found corrupt is deleted, so that the next run downloads it again."""
    import requests

    downloads, name = fetcher.abspath, archive.filename
    if os.path.lexists(downloads / name) and not (downloads / name).is_file():  # pooch would hash a FIFO forever
        raise DownloadError(f"{downloads / name} is not a regular file; move it aside and rerun")
    try:
        path = Path(fetcher.fetch(name, downloader=_downloader(archive, progress, timeout)))
    except requests.RequestException as exc:
        raise _network_error(fetcher.get_url(name), exc, downloads) from exc
    except OSError as exc:
        raise _os_error(exc, f"downloading {name}", downloads) from exc
    _say(progress, f"{name}: md5 ok, unpacking")
    unfinished = downloads / f"{name}.unpacking"
    try:
        with zipfile.ZipFile(path) as zf:
            bad = next((m for m in zf.namelist() if _UNSAFE_MEMBER.search(m)), None)
            if bad is None:
                unfinished.touch()
                zf.extractall(root / archive.dest)
                unfinished.unlink()
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:  # corrupt, encrypted
        path.unlink()
        raise DownloadError(
            f"{name} is not a readable zip ({exc}); it was deleted, rerun to download it again"
        ) from exc
    except OSError as exc:
        raise _os_error(exc, f"unpacking {name}", root) from exc
    if bad is not None:
        path.unlink()
        raise DownloadError(
            f"refusing to unpack {name}: member '{bad}' has an unsafe path (absolute, drive letter or '..'); "
            "nothing was unpacked and the archive was deleted. Check where it came from (--mirror, --md5)"
        )


def download_gtsrb(
    root: str | os.PathLike[str],
    base_url: str | None = None,
    archives: Sequence[Archive] = OFFICIAL_ARCHIVES,
    progress: bool = True,
    timeout: float = 60,
    parts: Sequence[str] = PARTS,
    retries: int = RETRIES,
) -> Path:
    """Download, verify and unpack the archives of `parts` ("train", "test") into root; return the absolute root.

    A part already complete (unpacked earlier, or by hand) is left alone. `base_url` defaults to $GTSRB_MIRROR,
    then the official server; `timeout` is the network timeout in seconds; status lines and progress bars go to
    stderr when `progress` is true. A failure is a one-line DownloadError that leaves no unverified archive and
    removes the folders the run created if they stayed empty."""
    parts = check_parts(parts)
    root_path = Path(root).expanduser().resolve()
    base = (base_url or os.environ.get(MIRROR_ENV_VAR, "") or DEFAULT_BASE_URL).strip()
    if not base.startswith(("http://", "https://")):
        raise DownloadError(
            f"--mirror must be an http:// or https:// URL, got {base!r}; for local copies of the zips, put them "
            f"into <root>/{DOWNLOADS_DIR}/ and leave --mirror out"
        )
    base, downloads = base if base.endswith("/") else base + "/", root_path / DOWNLOADS_DIR
    created = [d for d in (root_path, downloads) if not os.path.lexists(d)]
    pooch.get_logger().setLevel(logging.WARNING)  # our own status lines instead of pooch's
    try:
        # the archives of the parts that need work: not those of a complete part, unless one was cut off unpacking
        cut_off = {a.part for a in archives if (downloads / f"{a.filename}.unpacking").exists()}
        todo = [a for a in archives if a.part in parts and (a.part in cut_off or layout_problems(root_path, (a.part,)))]
        if not todo:
            _say(progress, f"the GTSRB {' and '.join(parts)} layout is already complete in {root_path}")
        registry = {a.filename: f"md5:{a.md5}" for a in todo}
        fetcher = pooch.Pooch(path=downloads, base_url=base, registry=registry, retry_if_failed=retries)
        for stale in downloads.glob("tmp*"):  # pooch's temporary file of a killed run
            stale.unlink()
        for archive in todo:
            _install(archive, fetcher, root_path, progress, timeout)
        problems = layout_problems(root_path, parts)
    except OSError as exc:  # anything the steps above did not already turn into a message
        raise _os_error(exc, "installing GTSRB", root_path) from exc
    finally:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if it stayed empty
    if problems:
        raise DownloadError(
            f"archives unpacked into {root_path} but the GTSRB layout is incomplete: {'; '.join(problems)}. "
            f"Delete {downloads} and {root_path / 'GTSRB'} and rerun"
        )
    return root_path
