"""Optional uint8 image cache (``data.cache=true``): decode + ROI crop (+ CLAHE) + resize once, then read a memmap.

Why: at 227 px, decoding, cropping and up-scaling GTSRB's tiny files every epoch can bottleneck data loading.
Each crop is stored at the side the preset's pipeline starts from (``cache_side``: its first resize is then a
no-op), with ``data.augment.clahe`` CLAHE-equalised at its own size (the dearest per-item step). One
``(N, S, S, 3)`` ``.npy`` and a JSON sidecar per key (:func:`cache_key`) in ``data.cache_dir`` (default
``<cache root>/images``), never deleted automatically. The array is renamed into place before the sidecar is
written, under an exclusive file lock (every rank builds in ``setup``: the first builds, the others reuse). The
sidecar (not signed) holds the array's SHA-256, checked on every open (a changed file is rebuilt, never served);
workers map the file lazily and refuse one whose device, inode, size, mtime or ctime changed since the check.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from alexnet_gtsrb.data.gtsrb import Record, load_cropped
from alexnet_gtsrb.data.io import file_sha256
from alexnet_gtsrb.data.transforms import Clahe, cache_pipeline
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


def cache_key(records: Sequence[Record], size: int, roi: bool, fit: str = "square", clahe: Clahe | None = None) -> str:
    """File stem for a cache: readable settings plus a hash of the settings and of each record's path, annotation,
    file size, mtime and SHA-256 (a copy can keep a replaced file's size and mtime, not its digest)."""
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


@dataclass
class ImageCache:
    """A complete cache: its file, the row of each record it serves and how it came to be. It maps the file lazily
    and refuses one unlike ``stamp`` (the file whose digest was checked) with a UserError."""

    path: Path
    shape: tuple[int, int, int, int]
    built: bool  # True when this call built the file, False when it reused it
    _rows: dict[str, int] = field(repr=False)
    stamp: Stamp
    _array: np.ndarray | None = field(default=None, repr=False, compare=False)

    def row(self, path: str) -> int:
        """Row of the image of ``path``; KeyError for a record the cache was not built from."""
        return self._rows[path]

    def reader(self) -> ImageCache:
        """A copy without the rows, small to pickle into DataLoader workers (each maps the file itself)."""
        return replace(self, _rows={}, _array=None)

    def image(self, row: int) -> np.ndarray:
        """A writable copy of cached image ``row`` (the memmap view itself is read-only)."""
        if self._array is None:
            array = np.load(files.check_regular_file(self.path, "image cache file", None), mmap_mode="r")
            if _stamp(self.path) != self.stamp:
                raise UserError(
                    f"{self.path}: the image cache file changed after its digest was checked; "
                    "not reading it. Run again to check it and rebuild it."
                )
            self._array = array
        return np.array(self._array[row], copy=True)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}


def _paths(stem: Path) -> tuple[Path, Path]:
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".json")


def _array_sha256(array: np.ndarray, block_rows: int) -> str:
    """SHA-256 over the SHA-256 digests of blocks of ``block_rows`` rows, in row order (hashed in parallel)."""

    def digest(block: np.ndarray) -> bytes:
        return hashlib.sha256(np.ascontiguousarray(block).data).digest()

    blocks = [array[i : i + block_rows] for i in range(0, len(array), block_rows)]
    with ThreadPoolExecutor(max(1, min(_DIGEST_THREADS, os.cpu_count() or 1, len(blocks)))) as pool:
        return hashlib.sha256(b"".join(pool.map(digest, blocks))).hexdigest()


def _load_complete(stem: Path, key: str, shape: tuple[int, int, int, int], warn: bool = True) -> Stamp | None:
    """The stamp of a complete cache's checked array, or None if the array or its sidecar is missing, unreadable
    or disagrees (``warn``: say so in one line when the array no longer matches its digest)."""
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
        return before
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
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when the file is closed
        yield


def build_cache(
    records: Sequence[Record], size: int, roi: bool, stem: Path, fit: str = "square", clahe: Clahe | None = None
) -> Stamp:
    """Decode, crop, (with ``clahe``) equalise and resize every record into ``<stem>.npy``, then write the sidecar
    ``<stem>.json`` (its key: ``stem.name``); returns the array's stamp. Call under the lock; a bad image raises
    BadDataError naming it."""
    npy, meta_path = _paths(stem)
    n, s = len(records), int(size)
    shape, need = (n, s, s, 3), n * s * s * 3
    for stale in stem.parent.glob(f".{npy.name}.*.tmp"):  # leftovers of killed builds (we hold the lock)
        stale.unlink(missing_ok=True)
    what = f"the image cache of {n} images at {s} px (data.cache=true)"
    require_free_space(stem.parent, need, what, "point data.cache_dir elsewhere or set data.cache=false", ConfigError)
    resize = cache_pipeline(clahe, fit, s)
    log.info("Building image cache: %d images at %dx%d px (%.2f GB) -> %s", n, s, s, need / 1e9, npy)
    t0 = last = time.perf_counter()
    block_rows = max(1, _DIGEST_BLOCK_BYTES // (s * s * 3))  # rows per digest block
    meta_path.unlink(missing_ok=True)  # a stale sidecar must never vouch for the new file
    with atomic_path(npy) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        for i, r in enumerate(records):
            try:
                array[i] = resize(image=load_cropped(r, roi))["image"]
            except BadDataError as e:  # the records were verified: this file changed since
                raise BadDataError(f"{e} (found while building the image cache)") from None
            if time.perf_counter() - last >= _PROGRESS_EVERY_S:
                last = time.perf_counter()
                log.info("  image cache: %d/%d images (%.0f img/s)", i + 1, n, (i + 1) / (last - t0))
        digest = _array_sha256(array, block_rows)
        array.flush()
        del array
    build_s = time.perf_counter() - t0
    meta = {
        "version": CACHE_VERSION,
        "key": stem.name,
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
    log.info("Built image cache in %.1f s (%.0f img/s, %.2f GB): %s", build_s, n / max(build_s, 1e-9), need / 1e9, npy)
    return _stamp(npy)


def open_or_build(
    records: Sequence[Record],
    size: int,
    roi: bool = True,
    cache_dir: str | os.PathLike | None = None,
    fit: str = "square",
    clahe: Clahe | None = None,
) -> ImageCache:
    """The complete cache for verified ``records`` at ``size`` px, built first if needed (once, under a lock);
    ``clahe``: ``(clip, tile)`` to store CLAHE-equalised pixels."""
    folder = files.cache_folder(cache_dir, default_cache_dir())  # created; one line naming it if it cannot be
    records = tuple(records)
    key = cache_key(records, size, roi, fit, clahe)
    stem = folder / key
    npy, shape = _paths(stem)[0], (len(records), int(size), int(size), 3)
    t0 = time.perf_counter()
    stamp, built = _load_complete(stem, key, shape), False
    if stamp is None:
        files.cache_folder(cache_dir, default_cache_dir(), write=True)  # building writes: refuse a read-only folder
        with _locked(folder / f"{key}.lock"):
            stamp = _load_complete(stem, key, shape, warn=False)  # another rank may have built it meanwhile
            if stamp is None:
                stamp, built = build_cache(records, size, roi, stem, fit, clahe), True
    if not built:
        checked_s = time.perf_counter() - t0
        log.info("Using image cache %s (%d images at %d px, digest checked in %.1f s)", npy, *shape[:2], checked_s)
    rows = {r.path: i for i, r in enumerate(records)}
    return ImageCache(npy, shape, built, rows, stamp)
