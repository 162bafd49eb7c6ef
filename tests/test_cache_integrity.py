"""The image cache never serves pixels that differ from its inputs.

Two attacks: images replaced by others of the same byte size with their mtimes restored (what ``cp -p``,
``rsync -a`` or an unzip leave behind), and a cache array overwritten by other content of the same shape.
Expected pixels are decoded here with Pillow, independently of the package's reader.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from alexnet_gtsrb.data.cache import ImageCache, open_or_build
from alexnet_gtsrb.data.dataset import GTSRBDataset
from alexnet_gtsrb.data.gtsrb import Record, index_gtsrb
from alexnet_gtsrb.errors import UserError

SIZE = 32  # small, so the synthetic cache builds in well under a second


def expected_row(path: str) -> np.ndarray:
    """What the cache must hold for a file (no ROI crop): decoded by Pillow, resized as the cache does."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)


def rows(cache: ImageCache) -> np.ndarray:
    """Every row of a cache, read through the reader the datasets use."""
    reader = cache.reader()
    return np.stack([reader.image(i) for i in range(cache.shape[0])])


def train_records(root: Path) -> tuple[Record, ...]:
    return index_gtsrb(root).train


def replace_keeping_size_and_mtime(path: Path, seed: int) -> None:
    """Another image of the same dimensions, header and byte size; the old atime and mtime restored (cp -p)."""
    st = path.stat()
    with Image.open(path) as im:
        width, height = im.size
    data = path.read_bytes()
    header = data[: len(data) - width * height * 3]  # a P6 file ends with its width*height*3 pixel bytes
    pixels = np.random.default_rng(seed).integers(0, 256, width * height * 3, dtype=np.uint8)
    path.write_bytes(header + pixels.tobytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def overwrite_array_keeping_shape_and_mtime(npy: Path) -> None:
    """Other real images of the right shape (the rows reversed) written over the cache array, mtime restored."""
    st = npy.stat()
    other = np.load(npy)[::-1].copy()
    np.save(npy, other)
    os.utime(npy, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert npy.stat().st_size == st.st_size


def test_images_replaced_with_size_and_mtime_kept_are_served_new(synthetic_copy, tmp_path):
    records = train_records(synthetic_copy)
    first = open_or_build(records, SIZE, roi=False, cache_dir=tmp_path / "cache")
    old = rows(first)
    assert first.built and np.array_equal(old, np.stack([expected_row(r.path) for r in records]))

    changed = [0, 5, len(records) - 1]
    for seed, i in enumerate(changed):
        replace_keeping_size_and_mtime(Path(records[i].path), seed)

    again = open_or_build(train_records(synthetic_copy), SIZE, roi=False, cache_dir=tmp_path / "cache")
    new = rows(again)
    for i, r in enumerate(records):
        assert np.array_equal(new[i], expected_row(r.path)), f"row {i} ({r.path}) is not the file's pixels"
    for i in changed:
        assert not np.array_equal(new[i], old[i])  # the stale pixels would have passed a size+mtime key
    assert again.built and again.path != first.path  # the changed content selects another cache


def test_cache_array_overwritten_with_same_shape_is_rebuilt_not_served(synthetic_root, tmp_path, caplog):
    records = train_records(synthetic_root)
    first = open_or_build(records, SIZE, roi=False, cache_dir=tmp_path / "cache")
    truth = rows(first)
    overwrite_array_keeping_shape_and_mtime(first.path)
    assert not np.array_equal(np.load(first.path), truth)

    with caplog.at_level(logging.WARNING, logger="alexnet_gtsrb.data.cache"):
        again = open_or_build(records, SIZE, roi=False, cache_dir=tmp_path / "cache")
    assert np.array_equal(rows(again), truth), "the overwritten array was served"
    warnings = [m for m in caplog.messages if "does not match its sidecar's digest" in m]
    assert len(warnings) == 1 and str(first.path) in warnings[0]
    assert again.built and again.path == first.path
    assert np.array_equal(truth, np.stack([expected_row(r.path) for r in records]))

    caplog.clear()
    third = open_or_build(records, SIZE, roi=False, cache_dir=tmp_path / "cache")  # the rebuilt file checks clean
    assert not third.built and not [m for m in caplog.messages if "digest" in m]


def test_cache_file_replaced_after_the_check_is_refused_by_readers(synthetic_root, tmp_path):
    """Workers map the file later than setup checked it: a file swapped in between is not read."""
    records = train_records(synthetic_root)
    cache = open_or_build(records, SIZE, roi=False, cache_dir=tmp_path / "cache")
    worker_reader = pickle.loads(pickle.dumps(cache.reader()))  # what a DataLoader worker receives
    dataset = GTSRBDataset(records, roi=False, cache=cache)
    overwrite_array_keeping_shape_and_mtime(cache.path)

    with pytest.raises(UserError, match="changed after its digest was checked"):
        worker_reader.image(0)
    with pytest.raises(UserError, match="changed after its digest was checked"):
        dataset[0]
