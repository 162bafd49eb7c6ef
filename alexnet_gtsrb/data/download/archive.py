"""The GTSRB archives and how they are unpacked: which zips exist, which part of the dataset each one
carries, member safety checks, extraction through a temporary directory, the ``.extracted`` markers and
the final layout check."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from alexnet_gtsrb.data.classes import NUM_CLASSES
from alexnet_gtsrb.errors import UserError
from alexnet_gtsrb.utils.files import atomic_write, require_free_space

DOWNLOADS_DIR = ".downloads"
EXTRACT_PREFIX = ".extract-"
CHUNK_SIZE = 1 << 20
#: The parts of the dataset an archive can belong to, in download order.
PARTS: tuple[str, ...] = ("train", "test")
NO_SPACE_FIX = "free some space or choose another --root"
MD5_RE = re.compile(r"[0-9a-fA-F]{32}")
SEPARATORS = re.compile(r"[\\/]+")


class DownloadError(UserError, RuntimeError):
    """Raised when GTSRB cannot be fetched, verified or unpacked; the message says what to do next.

    Also a UserError, so the training entry point reports it in one line, without a traceback.
    """


class BadArchiveError(DownloadError):
    """The archive itself is unusable (corrupt zip or unsafe member): it gets deleted."""


@dataclass(frozen=True)
class Archive:
    """One zip on the mirror: file name, expected md5 (None = not checked), the part of the dataset it
    carries ("train" or "test"), and the sub-path of the data root where its members land ("" = the root)."""

    filename: str
    md5: str | None
    part: str
    dest: str = ""


# Checksums. No md5 published by the dataset's authors was found (their download page,
# https://benchmark.ini.rub.de/gtsrb_dataset.html, could not be checked directly), so each value below is the
# one that established dataset loaders pin for the same file at the same sid.erda.dk URL, with its source
# named beside it; two independent loaders agree on each of the test md5s. Not 513f3c79a4c5141765e10e952eaa2478:
# that is the md5 of GTSRB-Training_fixed.zip, a different archive (the one torchvision fetches), so no
# download of GTSRB_Final_Training_Images.zip could ever match it.
OFFICIAL_ARCHIVES: tuple[Archive, ...] = (
    # md5: github.com/google-deepmind/dm_nevis, dm_nevis/datasets_storage/handlers/german_tsr.py
    # (german_tsr_dataset.download_urls). torchvision pins no md5 for this file.
    Archive("GTSRB_Final_Training_Images.zip", "f33fd80ac59bff73c82d25ab499e03a3", "train"),
    # md5: github.com/pytorch/vision, torchvision/datasets/gtsrb.py (GTSRB.download, split="test");
    # dm_nevis german_tsr.py (above) pins the same value.
    Archive("GTSRB_Final_Test_Images.zip", "c7e4e6327067d32654124b0fe9e82185", "test"),
    # md5: github.com/pytorch/vision, torchvision/datasets/gtsrb.py (GTSRB.download, split="test");
    # dm_nevis german_tsr.py (above) pins the same value.
    # GT-final_test.csv sits at the top level of this zip; it belongs next to the test images.
    Archive("GTSRB_Final_Test_GT.zip", "fe31e9c9270bbcd7b84b7f21a9d9d9e5", "test", "GTSRB/Final_Test/Images"),
)


# ------------------------------------------------------------------------------------------ safety checks


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


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    """True when the member's Unix mode bits (zip external attributes) mark it as a symbolic link."""
    return stat.S_ISLNK(info.external_attr >> 16)


def _parts(name: str) -> tuple[str, ...]:
    """Split a (checked) member name on / or \\ into path components, dropping empty and '.' parts."""
    return tuple(p for p in SEPARATORS.split(name) if p not in ("", "."))


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


def _checked_members(zf: zipfile.ZipFile, archive_name: str) -> list[zipfile.ZipInfo]:
    """All members of the zip, after refusing the whole archive if any member is unsafe."""
    members = zf.infolist()
    for info in members:
        reason = unsafe_reason(info.filename)
        if reason is None and _is_symlink(info):
            reason = "symbolic link"
        if reason is not None:
            raise BadArchiveError(
                f"refusing to extract {archive_name}: member '{info.filename}' is unsafe ({reason}); "
                "nothing was extracted and the archive was deleted. Check where it came from (--mirror)"
            )
    return members


# --------------------------------------------------------------------------------------------- extraction


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


def extract(archive_path: Path, root: Path, dest: str) -> dict[str, list[str]]:
    """Unpack the archive under root/dest through a temporary directory under root.

    Returns the installed files, as {directory relative to root: [file names]}, for the marker.
    """
    try:
        zf = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise BadArchiveError(
            f"{archive_path.name} is not a valid zip archive ({exc}); it was deleted, rerun to download it again"
        ) from exc
    with zf:
        members = _checked_members(zf, archive_path.name)
        needed = sum(info.file_size for info in members)
        require_free_space(root, needed, f"unpacking {archive_path.name}", NO_SPACE_FIX, error=DownloadError)
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
                    raise BadArchiveError(
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
            raise BadArchiveError(
                f"{archive_path.name} is corrupt ({exc}); it was deleted, rerun to download it again"
            ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return installed


def remove_stale_extract_dirs(root: Path, say: Callable[[str], None]) -> None:
    """Delete temporary extraction directories left behind by an interrupted run."""
    for path in root.glob(EXTRACT_PREFIX + "*"):
        if path.is_dir() and not path.is_symlink():
            say(f"removing leftover temporary directory {path}")
            shutil.rmtree(path)


def remove_if_empty(path: Path) -> None:
    """Remove a directory we created, if nothing ended up in it (keeps failed runs trace-free)."""
    with contextlib.suppress(OSError):
        path.rmdir()


# ------------------------------------------------------------------------------------------------ markers


def marker_path(downloads: Path, archive: Archive) -> Path:
    """Where the marker saying that this archive was fully unpacked lives."""
    return downloads / f"{archive.filename}.extracted"


def marker_complete(marker: Path, root: Path, archive: Archive) -> bool:
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
