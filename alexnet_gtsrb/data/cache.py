"""Optional uint8 image cache (``data.cache=true``): decode + ROI crop (+ CLAHE) + resize once, then read a memmap.

Why: GTSRB files are tiny, but at 227 px decoding, cropping and up-scaling every image every epoch can
become the data-loading bottleneck. The cache holds the ROI-cropped image already resized to the size the
augmentation pipeline starts from (the preset's ``cache_side``), so the pipeline's first resize is a no-op and
the dataset only copies one ``(H, W, 3)`` slice per item. When ``data.augment.clahe`` is on, the cached pixels
are already CLAHE-equalised (at the image's own size, before the resize, as uncached) and the datasets built
on the cache leave that step out: it was the dearest per-item step left.

Layout: ONE ``.npy`` file of shape ``(N, S, S, 3)`` uint8 per (record list, ROI flag, size), row ``i`` holding
record ``i`` of the list it was built from, next to a JSON sidecar ``<name>.json``. The name carries a hash of
the settings and of the record list (paths, annotations, file sizes, mtimes and SHA-256 digests: a copy can
keep a replaced file's size and mtime, not its digest), so editing an image, the image size or
``data.roi_crop`` selects a new file. The folder is ``data.cache_dir``; by default
``$ALEXNET_GTSRB_CACHE/images``, else ``~/.cache/alexnet_gtsrb/images`` (the synthetic demo data lives next
to it). Old files are never deleted automatically: remove the folder to reclaim the space.

Crash safety: the array is written to a temporary file beside it and renamed into place, then the sidecar
is written (also via a temporary file); a cache counts as complete only when both exist and agree, so an interrupted
build is simply rebuilt. Builds run in ``setup`` on every rank under an exclusive file lock: the first rank
builds, the others wait and then open the finished file read-only.

Integrity: the sidecar holds a SHA-256 of the array (over digests of blocks of rows, which threads hash in
parallel), made while building and checked on every open (one read of the file, a fraction of a build): a
changed file logs one warning and is rebuilt, never served. Workers map the file later; they refuse one whose
device, inode, size, mtime or ctime differ from the checked file's. The sidecar is not signed.

Memory: workers receive only the file path and shape; each opens the memmap lazily on first use, so pages
come from the shared page cache and nothing large is pickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alexnet_gtsrb.data.gtsrb import Record, load_cropped
from alexnet_gtsrb.data.io import file_sha256
from alexnet_gtsrb.data.transforms import cache_pipeline
from alexnet_gtsrb.errors import BadDataError, BadFileError, ConfigError, UserError
from alexnet_gtsrb.utils import files
from alexnet_gtsrb.utils.files import atomic_path, atomic_write, cache_root, require_free_space

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the cached pixels change for the same settings (it is part of the key)
_PROGRESS_EVERY_S = 10.0
_DIGEST_BLOCK_BYTES = 64 * 1024**2  # the array is hashed in blocks of rows, which threads hash in parallel
_DIGEST_THREADS = 8  # at most; hashlib releases the GIL, so blocks of a warm file hash on separate cores
Stamp = tuple[int, ...]  # (device, inode, size, mtime_ns, ctime_ns) of the checked cache file


def default_cache_dir() -> Path:
    """``<cache root>/images``: ``$ALEXNET_GTSRB_CACHE/images``, else ``~/.cache/alexnet_gtsrb/images``."""
    return cache_root() / "images"


def cache_key(
    records: Sequence[Record],
    size: int,
    roi: bool,
    fit: str = "square",
    clahe: tuple[float, int] | None = None,
) -> str:
    """File stem for a cache: readable settings plus a hash of the settings and the record list.

    Each record contributes its path, annotation (ROI and declared size, which decide the crop), the file's
    size and mtime, and a SHA-256 of its bytes, so a replaced image invalidates the cache even when the copy
    kept its size and mtime. A missing file stamps as (-1, -1), a file the decoder would refuse (missing,
    not a regular file, too large) is not read; the build then reports it.
    """
    h = hashlib.sha256()
    settings: dict[str, Any] = {"version": CACHE_VERSION, "size": int(size), "roi": bool(roi)}
    if fit != "square":  # keys of square caches leave fit out, as before it was a setting
        settings["fit"] = fit
    if clahe is not None:  # likewise for caches without CLAHE
        settings["clahe"] = [float(clahe[0]), int(clahe[1])]
    h.update(json.dumps(settings).encode())
    for r in records:
        try:
            st = os.stat(r.path)
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = (-1, -1)
        try:
            content = file_sha256(r.path)
        except BadDataError:  # the build refuses it too, naming it
            content = "unusable"
        h.update(repr((r.path, r.roi, r.width, r.height, stamp, content)).encode())
        h.update(b"\0")
    tag = "-clahe" if clahe is not None else ""
    return f"{int(size)}px-{'roi' if roi else 'full'}{tag}-{len(records)}-{h.hexdigest()[:20]}"


def _stamp(path: Path) -> Stamp:
    """What identifies one version of a file without reading it; ctime changes on any write or rename."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class CacheReader:
    """Read-only access to one cache file; opens the memmap lazily so it pickles as a path and a shape. A file
    unlike ``stamp`` (the one whose digest was checked) is refused with a UserError."""

    def __init__(self, path: Path, shape: tuple[int, int, int, int], stamp: Stamp | None = None) -> None:
        self.path = Path(path)
        self.shape = tuple(shape)
        self.stamp = stamp
        self._array: np.ndarray | None = None

    def image(self, row: int) -> np.ndarray:
        """A writable copy of cached image ``row`` (the memmap view itself is read-only)."""
        if self._array is None:
            array = np.load(files.check_regular_file(self.path, "image cache file", None), mmap_mode="r")
            if self.stamp is not None and _stamp(self.path) != self.stamp:
                raise UserError(
                    f"{self.path}: the image cache file changed after its digest was checked; "
                    "not reading it. Run again to check it and rebuild it."
                )
            self._array = array
        return np.array(self._array[row], copy=True)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_array"] = None  # each worker maps the file itself
        return state


@dataclass
class ImageCache:
    """A complete cache: its file, the row of each record it serves and how it came to be."""

    path: Path
    shape: tuple[int, int, int, int]
    built: bool = False  # True when this call built the file, False when it reused it
    build_s: float = 0.0
    _rows: dict[str, int] = field(default_factory=dict, repr=False)
    stamp: Stamp | None = None  # the file whose digest was checked (see CacheReader)

    def row(self, path: str) -> int:
        """Row of the image of ``path``; KeyError for a record the cache was not built from."""
        return self._rows[path]

    def reader(self) -> CacheReader:
        """A lightweight, picklable reader for datasets and DataLoader workers."""
        return CacheReader(self.path, self.shape, self.stamp)

    @property
    def nbytes(self) -> int:
        """Size of the cache file on disk, in bytes."""
        return self.path.stat().st_size


def _paths(stem: Path) -> tuple[Path, Path]:
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".json")


def _block_rows(shape: tuple[int, ...]) -> int:
    """Rows per digest block: about ``_DIGEST_BLOCK_BYTES`` of uint8 pixels."""
    return max(1, _DIGEST_BLOCK_BYTES // max(1, int(np.prod(shape[1:], dtype=np.int64))))


def _block_sha256(block: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(block).data).digest()


def _combined(block_digests: Sequence[bytes]) -> str:
    """The array's digest: SHA-256 over its blocks' SHA-256 digests, in row order."""
    return hashlib.sha256(b"".join(block_digests)).hexdigest()


def _array_sha256(array: np.ndarray, block_rows: int) -> str:
    """The digest :func:`build_cache` stores, recomputed from the file, its blocks hashed in parallel."""
    blocks = [array[i : i + block_rows] for i in range(0, len(array), block_rows)]
    with ThreadPoolExecutor(max(1, min(_DIGEST_THREADS, os.cpu_count() or 1, len(blocks)))) as pool:
        return _combined(list(pool.map(_block_sha256, blocks)))


def _load_complete(
    stem: Path, key: str, shape: tuple[int, int, int, int], warn: bool = True
) -> tuple[dict, Stamp] | None:
    """The sidecar of a complete cache and the stamp of its checked array, or None if either file is missing,
    unreadable or disagrees, including an array whose bytes no longer match the sidecar's digest (``warn``:
    say so in one line, as that means the file was changed after it was built)."""
    npy, meta_path = _paths(stem)
    try:
        meta = json.loads(files.read_text_file(meta_path, "image cache sidecar"))
        if meta.get("key") != key or meta.get("version") != CACHE_VERSION or tuple(meta.get("shape", ())) != shape:
            return None
        if meta.get("skipped"):  # zero rows for bad images, from builds that skipped them: rebuilt, which names them
            return None
        before = _stamp(npy)
        array = np.load(files.check_regular_file(npy, "image cache file", None), mmap_mode="r")  # raises if truncated
        if array.shape != shape or array.dtype != np.uint8:
            return None
        same = meta.get("sha256") == _array_sha256(array, int(meta.get("sha256_block_rows", 0)))
        del array
        if not same or _stamp(npy) != before:  # a change during the check leaves it unproven too
            if warn:
                log.warning("Image cache %s does not match its sidecar's digest: rebuilding it", npy)
            return None
        return meta, before
    except (OSError, ValueError, TypeError, BadFileError):  # a pipe or folder in its place: rebuilt
        return None


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Exclusive advisory lock (POSIX ``flock``); without fcntl, atomic renames alone keep builds correct."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with files.open_lock_file(lock_path, "the image cache's lock file", "Remove it.") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _fill(array: np.ndarray, records: Sequence[Record], load: Any, block_rows: int) -> str:
    """Write ``load(record)`` into each row of ``array``; returns the SHA-256 of the array. Finished blocks of rows
    are hashed in a second thread while the next ones decode."""
    n, blocks = len(records), list[Future[bytes]]()
    t0 = last = time.perf_counter()
    with ThreadPoolExecutor(1) as hasher:
        for i, r in enumerate(records):
            try:
                array[i] = load(r)
            except BadDataError as e:  # the records were verified: this file changed since
                raise BadDataError(f"{e} (found while building the image cache)") from None
            if (i + 1) % block_rows == 0 or i + 1 == n:
                blocks.append(hasher.submit(_block_sha256, array[i - i % block_rows : i + 1]))
            now = time.perf_counter()
            if now - last >= _PROGRESS_EVERY_S:
                last = now
                log.info("  image cache: %d/%d images (%.0f img/s)", i + 1, n, (i + 1) / (now - t0))
        return _combined([b.result() for b in blocks])


def build_cache(
    records: Sequence[Record],
    size: int,
    roi: bool,
    stem: Path,
    key: str,
    fit: str = "square",
    clahe: tuple[float, int] | None = None,
) -> dict:
    """Decode, crop, (with ``clahe``) equalise and resize every record into ``<stem>.npy``; write ``<stem>.json``
    last. Returns the sidecar. CLAHE runs before the resize, at the image's own size, as in the uncached pipeline.

    Call under the cache's lock. A bad image raises BadDataError naming the file. Any failure removes the temp file.
    """
    npy, meta_path = _paths(stem)
    n, s = len(records), int(size)
    shape = (n, s, s, 3)
    need = n * s * s * 3
    for stale in stem.parent.glob(f".{npy.name}.*.tmp"):  # leftovers of killed builds (we hold the lock)
        stale.unlink(missing_ok=True)
    what = f"the image cache of {n} images at {s} px (data.cache=true)"
    require_free_space(stem.parent, need, what, "point data.cache_dir elsewhere or set data.cache=false", ConfigError)
    resize = cache_pipeline(clahe, fit, s)
    log.info("Building image cache: %d images at %dx%d px (%.2f GB) -> %s", n, s, s, need / 1e9, npy)
    t0 = time.perf_counter()
    block_rows = _block_rows(shape)
    meta_path.unlink(missing_ok=True)  # a stale sidecar must never vouch for the new file
    with atomic_path(npy) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        digest = _fill(array, records, lambda r: resize(image=load_cropped(r, roi))["image"], block_rows)
        array.flush()
        del array
    build_s = time.perf_counter() - t0
    meta = {
        "version": CACHE_VERSION,
        "key": key,
        "shape": list(shape),
        "roi": bool(roi),
        "clahe": list(clahe) if clahe is not None else None,
        "sha256": digest,  # of the array's bytes, checked whenever the cache is opened
        "sha256_block_rows": block_rows,
        "build_s": round(build_s, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with atomic_write(meta_path, "w") as f:
        f.write(json.dumps(meta, indent=1))
    size_gb = npy.stat().st_size / 1e9
    log.info("Built image cache in %.1f s (%.0f img/s, %.2f GB): %s", build_s, n / max(build_s, 1e-9), size_gb, npy)
    return meta


def open_or_build(
    records: Sequence[Record],
    size: int,
    roi: bool = True,
    cache_dir: str | os.PathLike | None = None,
    fit: str = "square",
    clahe: tuple[float, int] | None = None,
) -> ImageCache:
    """The complete cache for ``records`` (verified: see :func:`~alexnet_gtsrb.data.gtsrb.verify_records`) at
    ``size`` px, building it first if needed (once, under a lock).

    ``clahe``: ``(clip, tile)`` to store CLAHE-equalised pixels (the datasets then skip their CLAHE step)."""
    folder = files.cache_folder(cache_dir, default_cache_dir())  # created; one line naming it if it cannot be
    records = tuple(records)
    key = cache_key(records, size, roi, fit, clahe)
    stem = folder / key
    npy, shape = _paths(stem)[0], (len(records), int(size), int(size), 3)
    t0 = time.perf_counter()
    found, built = _load_complete(stem, key, shape), False
    if found is None:
        files.cache_folder(cache_dir, default_cache_dir(), write=True)  # building writes: refuse a read-only folder
        with _locked(folder / f"{key}.lock"):
            found = _load_complete(stem, key, shape, warn=False)  # another rank may have built it meanwhile
            if found is None:
                meta = build_cache(records, size, roi, stem, key, fit, clahe)
                found, built = (meta, _stamp(npy)), True
    meta, stamp = found
    if not built:
        checked_s = time.perf_counter() - t0
        log.info("Using image cache %s (%d images at %d px, digest checked in %.1f s)", npy, *shape[:2], checked_s)
    rows = {r.path: i for i, r in enumerate(records)}
    return ImageCache(npy, shape, built, float(meta.get("build_s", 0.0)), rows, stamp)
