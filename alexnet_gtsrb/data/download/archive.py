"""The GTSRB archives: which zips exist, which part of the dataset each one carries, their official sizes
and the caps derived from them, the errors, the ``.extracted`` markers and the final layout check.
Unpacking lives in :mod:`.unpack`."""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from alexnet_gtsrb.data.classes import NUM_CLASSES
from alexnet_gtsrb.errors import BadFileError, UserError
from alexnet_gtsrb.utils.files import atomic_write, read_text_file

DOWNLOADS_DIR = ".downloads"
EXTRACT_PREFIX = ".extract-"
CHUNK_SIZE = 1 << 20
#: The parts of the dataset an archive can belong to, in download order.
PARTS: tuple[str, ...] = ("train", "test")
NO_SPACE_FIX = "free some space or choose another --root"
MD5_RE = re.compile(r"[0-9a-fA-F]{32}")
SEPARATORS = re.compile(r"[\\/]+")

#: A download may exceed its archive's official size by this factor before it is cut off (a mirror that
#: repackages the archive declares its own size with --size; see `download_cap`).
SIZE_MARGIN = 1.25
#: The download cap of an archive whose size is not known (``size=None``).
DEFAULT_MAX_DOWNLOAD = 2 * 2**30
#: Zip-bomb caps on the total uncompressed size an archive's members declare. By default: MAX_RATIO times the
#: archive's own size (at least RATIO_FLOOR, at most DEFAULT_MAX_UNPACKED); --max-unpacked BYTES sets a fixed
#: cap instead. The official archives come nowhere near: estimated from the Width/Height columns of the
#: ground-truth CSVs (a PPM is 3 bytes a pixel plus a short header), the 25,087 later (larger) training frames
#: of a real subset sum to 273 MB, so all 39,209 training images come to at most ~430 MB (1.6x the 276 MB
#: zip); 430 test images average 11.9 KB, so the 12,630 test images come to ~150 MB (1.7x the 89 MB zip);
#: GT-final_test.csv is 377,382 bytes (3.8x its 99,620-byte zip). A zip of zeros unpacks to ~1000x its size.
MAX_RATIO = 20
RATIO_FLOOR = 16 * 2**20
DEFAULT_MAX_UNPACKED = 2 * 2**30
#: At most this many members per archive (the training zip has about 39,300: 39,209 images, 43 CSVs, dirs):
#: a zip of millions of empty files would exhaust inodes without tripping any byte cap.
MAX_MEMBERS = 200_000


class DownloadError(UserError, RuntimeError):
    """Raised when GTSRB cannot be fetched, verified or unpacked; the message says what to do next.

    Also a UserError, so the training entry point reports it in one line, without a traceback.
    """


class BadArchiveError(DownloadError):
    """The archive itself is unusable (corrupt zip or unsafe member): it gets deleted."""


def is_no_space(exc: BaseException) -> bool:
    """True for 'no space left on device' (and 'disk quota exceeded') errors."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def os_error_text(exc: OSError) -> str:
    """An OSError as 'reason: path' (no '[Errno N]' prefix), for one-line messages."""
    reason = exc.strerror or type(exc).__name__
    return f"{reason}: {exc.filename}" if exc.filename else reason


@dataclass(frozen=True)
class Archive:
    """One zip on the mirror: file name, expected md5 (None = not checked), the part of the dataset it
    carries ("train" or "test"), the sub-path of the data root where its members land ("" = the root), and
    its size in bytes (None = unknown), which only caps the download (see `download_cap`)."""

    filename: str
    md5: str | None
    part: str
    dest: str = ""
    size: int | None = None


def download_cap(archive: Archive) -> int:
    """Bytes a download of this archive may reach before it is cut off: its size times SIZE_MARGIN, or
    DEFAULT_MAX_DOWNLOAD when its size is unknown."""
    if archive.size is None:
        return DEFAULT_MAX_DOWNLOAD
    return int(archive.size * SIZE_MARGIN)


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
# sizes. The server itself could not be checked from here. They only cap downloads, generously (SIZE_MARGIN,
# 1.25x), so that a hostile or broken mirror cannot fill the disk; the md5 is what checks the content. A
# mirror that repackages the archives needs --md5 FILE=HASH and --size FILE=BYTES together.
OFFICIAL_ARCHIVES: tuple[Archive, ...] = (
    # md5: github.com/google-deepmind/dm_nevis, dm_nevis/datasets_storage/handlers/german_tsr.py
    # (german_tsr_dataset.download_urls). torchvision pins no md5 for this file.
    Archive("GTSRB_Final_Training_Images.zip", "f33fd80ac59bff73c82d25ab499e03a3", "train", size=276_294_756),
    # md5: github.com/pytorch/vision, torchvision/datasets/gtsrb.py (GTSRB.download, split="test");
    # dm_nevis german_tsr.py (above) pins the same value.
    Archive("GTSRB_Final_Test_Images.zip", "c7e4e6327067d32654124b0fe9e82185", "test", size=88_978_620),
    # md5: github.com/pytorch/vision, torchvision/datasets/gtsrb.py (GTSRB.download, split="test");
    # dm_nevis german_tsr.py (above) pins the same value.
    # GT-final_test.csv sits at the top level of this zip; it belongs next to the test images.
    Archive(
        "GTSRB_Final_Test_GT.zip", "fe31e9c9270bbcd7b84b7f21a9d9d9e5", "test", "GTSRB/Final_Test/Images", size=99_620
    ),
)


# ------------------------------------------------------------------------------------------- validation


def unsafe_reason(name: str) -> str | None:
    """Say why a zip member / destination path could escape its directory, or None when it is safe."""
    if "\x00" in name:
        return "NUL byte in name"
    if name.startswith(("/", "\\")):
        return "absolute path"
    if re.match(r"[A-Za-z]:", name):
        return "drive letter"
    if ".." in SEPARATORS.split(name):
        return "'..' component"
    return None


def validate_archives(archives: Sequence[Archive]) -> None:
    """Reject archive specs that could write outside the root, cannot be checked, or name no known part."""
    for archive in archives:
        name = archive.filename
        if not name or SEPARATORS.search(name) or name in (".", "..") or unsafe_reason(name):
            raise ValueError(f"archive filename must be a plain file name, got {name!r}")
        if archive.md5 is not None and not MD5_RE.fullmatch(archive.md5):
            raise ValueError(f"md5 for {name} must be 32 hex digits or None, got {archive.md5!r}")
        if archive.part not in PARTS:
            raise ValueError(f"part for {name} must be one of {', '.join(PARTS)}, got {archive.part!r}")
        if unsafe_reason(archive.dest):
            raise ValueError(f"dest for {name} must be a relative path inside the root, got {archive.dest!r}")
        if archive.size is not None and (
            isinstance(archive.size, bool) or not isinstance(archive.size, int) or archive.size <= 0
        ):
            raise ValueError(f"size for {name} must be a positive number of bytes or None, got {archive.size!r}")


# ------------------------------------------------------------------------------------------------ markers


def marker_path(downloads: Path, archive: Archive) -> Path:
    """Where the marker saying that this archive was fully unpacked lives."""
    return downloads / f"{archive.filename}.extracted"


def marker_complete(marker: Path, root: Path, archive: Archive) -> bool:
    """True if the marker exists, matches this archive's md5, and every file it lists is still there."""
    try:
        data = json.loads(read_text_file(marker, "extraction marker"))
        files: dict[str, list[str]] = data["files"]
        if data.get("md5") != archive.md5:
            return False
        for rel_dir, names in files.items():
            present = set(os.listdir(root.joinpath(*PurePosixPath(rel_dir).parts)))
            if not set(names) <= present:
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError, BadFileError):  # a pipe: not complete
        return False
    return True


def write_marker(marker: Path, archive: Archive, installed: dict[str, list[str]]) -> None:
    """Atomically record that an archive was fully unpacked (and which files it installed)."""
    payload = {"archive": archive.filename, "md5": archive.md5, "files": installed}
    with atomic_write(marker, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, sort_keys=True)


# ------------------------------------------------------------------------------------------------- layout


def _has_ppm(directory: Path) -> bool:
    """True if the directory holds at least one .ppm image (stops at the first one)."""
    with os.scandir(directory) as it:
        return any(entry.name.lower().endswith(".ppm") for entry in it)


def _train_problems(base: Path) -> list[str]:
    """What is missing from Final_Training/Images: the 43 class directories, each with images."""
    train = base / "Final_Training" / "Images"
    if not train.is_dir():
        return [f"missing directory {train}"]
    missing = [
        f"{c:05d}" for c in range(NUM_CLASSES) if not (train / f"{c:05d}").is_dir() or not _has_ppm(train / f"{c:05d}")
    ]
    if not missing:
        return []
    shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
    return [
        f"{train} has {NUM_CLASSES - len(missing)} of {NUM_CLASSES} class directories "
        f"with images (missing or empty: {shown})"
    ]


def _test_problems(base: Path) -> list[str]:
    """What is missing from Final_Test/Images: test images and the ground-truth CSV."""
    test = base / "Final_Test" / "Images"
    if not test.is_dir():
        return [f"missing directory {test}"]
    problems = []
    if not _has_ppm(test):
        problems.append(f"no .ppm test images in {test}")
    if not (test / "GT-final_test.csv").is_file():
        problems.append(f"missing {test / 'GT-final_test.csv'} (from GTSRB_Final_Test_GT.zip)")
    return problems


def layout_problems(root: str | os.PathLike[str], parts: Sequence[str] = PARTS) -> list[str]:
    """List what is missing from the expected GTSRB layout under root for the given parts of the dataset
    ("train", "test"; default both). An empty list means those parts are complete."""
    parts = check_parts(parts)
    base = Path(root) / "GTSRB"
    checks = {"train": _train_problems, "test": _test_problems}
    return [problem for part in PARTS if part in parts for problem in checks[part](base)]


def check_parts(parts: Sequence[str]) -> tuple[str, ...]:
    """The requested parts in canonical order; ValueError for an empty selection or an unknown part."""
    if isinstance(parts, str):
        parts = (parts,)
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"parts must be a non-empty selection of {', '.join(PARTS)}, got {tuple(parts)!r}")
    return tuple(p for p in PARTS if p in parts)
