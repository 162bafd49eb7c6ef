"""The paper's PCA colour statistics: eigenvalues/eigenvectors of the training split's 3x3 RGB pixel covariance.

Krizhevsky et al. (2012), section 4.1: "We perform PCA on the set of RGB pixel values throughout the ImageNet
training set" and add ``[p1 p2 p3][a1 l1, a2 l2, a3 l3]^T`` to every pixel of a training image, ``a_i ~ N(0,
0.1)`` drawn once per image (see :class:`alexnet_gtsrb.data.batch_augment.PCANoise`). Here the pixels are
those the network's crops are cut from (decoded, ROI-cropped if enabled, shorter side resized and centre
cropped), scaled to [0, 1]; the covariance is the population one (divided by N), accumulated in float64 as
running sums of x and x x^T, one image at a time (memory does not grow with the data set).

The result is computed once per data root, split and pipeline, and cached as JSON beside the data
(``<root>/.alexnet_gtsrb/pca/``) or, where the data folder is read-only (no write permission bit, which is
respected even when running as root), under the project cache root (``$ALEXNET_GTSRB_CACHE`` or
``~/.cache/alexnet_gtsrb``, folder ``pca/``; ``<data.cache_dir>/pca`` when that is set).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alexnet_gtsrb.errors import BadFileError
from alexnet_gtsrb.utils.files import atomic_write, cache_root, read_text_file

log = logging.getLogger(__name__)
BESIDE_DATA = Path(".alexnet_gtsrb") / "pca"


@dataclass(frozen=True)
class RGBPCA:
    """``eigenvalues`` (descending, variance of [0, 1] pixel values along each component) and ``eigenvectors``
    (``eigenvectors[i]`` is the unit RGB vector p_i of ``eigenvalues[i]``), with the mean and the counts."""

    eigenvalues: tuple[float, ...]
    eigenvectors: tuple[tuple[float, ...], ...]
    mean: tuple[float, ...]
    num_pixels: int
    num_images: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RGBPCA:
        vecs = tuple(tuple(float(v) for v in row) for row in data["eigenvectors"])
        vals = tuple(float(v) for v in data["eigenvalues"])
        if len(vals) != 3 or len(vecs) != 3 or any(len(r) != 3 for r in vecs):
            raise ValueError("PCA statistics must hold 3 eigenvalues and 3 RGB eigenvectors")
        mean = tuple(float(v) for v in data["mean"])
        return cls(vals, vecs, mean, int(data["num_pixels"]), int(data["num_images"]))


class _Moments:
    """Running float64 sums of x (3,) and x x^T (3, 3) over RGB pixels in [0, 1]."""

    def __init__(self) -> None:
        self.n = 0
        self.images = 0
        self.s = np.zeros(3, dtype=np.float64)
        self.ss = np.zeros((3, 3), dtype=np.float64)

    def add(self, image: np.ndarray) -> None:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
        x = image.reshape(-1, 3).astype(np.float64) / 255.0
        self.n += x.shape[0]
        self.images += 1
        self.s += x.sum(axis=0)
        self.ss += x.T @ x

    def result(self) -> RGBPCA:
        if self.n == 0:
            raise ValueError("no pixels to compute the PCA colour statistics from")
        mean = self.s / self.n
        cov = self.ss / self.n - np.outer(mean, mean)
        vals, vecs = np.linalg.eigh((cov + cov.T) / 2)  # ascending; columns are eigenvectors
        order = np.argsort(vals)[::-1]
        vals, vecs = np.clip(vals[order], 0.0, None), vecs[:, order]
        signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), range(3)])  # largest component positive: deterministic
        vecs = vecs * np.where(signs == 0, 1.0, signs)
        return RGBPCA(
            tuple(float(v) for v in vals),
            tuple(tuple(float(v) for v in vecs[:, i]) for i in range(3)),
            tuple(float(v) for v in mean),
            int(self.n),
            int(self.images),
        )


def rgb_pca(images: Iterable[np.ndarray]) -> RGBPCA:
    """PCA of the RGB pixels of uint8 HxWx3 ``images`` (streamed: one image in memory at a time)."""
    moments = _Moments()
    for image in images:
        moments.add(image)
    return moments.result()


def stats_key(root: str | os.PathLike[str], split: str, settings: Mapping[str, Any], paths: Sequence[str]) -> str:
    """A readable file stem: the split name and a hash of the root, the pipeline settings and the image list."""
    blob = json.dumps(
        {"root": str(Path(root).resolve()), "split": split, "settings": dict(settings), "paths": list(paths)},
        sort_keys=True,
        default=str,
    )
    return f"{split}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _locations(root: str | os.PathLike[str], key: str, cache_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Where the statistics may live, in order of preference: beside the data, then the cache root."""
    fallback = Path(cache_dir) if cache_dir else cache_root() / "pca"
    return [Path(root) / BESIDE_DATA / f"{key}.json", fallback / f"{key}.json"]


def _read_only(folder: Path) -> bool:
    """A data folder marked read-only (no write bit), even for root, who could write there anyway."""
    try:
        marked = not folder.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        return marked or not os.access(folder, os.W_OK)
    except OSError:
        return True


def cached_rgb_pca(
    root: str | os.PathLike[str],
    split: str,
    settings: Mapping[str, Any],
    paths: Sequence[str],
    images: Callable[[], Iterable[np.ndarray]],
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[RGBPCA, Path]:
    """The PCA statistics of a split, read from its cache file or computed from ``images()`` and cached.

    Returns the statistics and the file they are stored in. ``images`` is called only when no cache file
    for this root, split, ``settings`` and image list exists.
    """
    key = stats_key(root, split, settings, paths)
    places = _locations(root, key, cache_dir)
    for place in places:
        if place.is_file():
            try:
                return RGBPCA.from_json(json.loads(read_text_file(place, "PCA statistics file"))), place
            except (ValueError, KeyError, TypeError, BadFileError):
                log.warning("Ignoring unreadable PCA statistics in %s: computing them again.", place)
    stats = rgb_pca(images())
    text = json.dumps({**stats.to_json(), "root": str(Path(root).resolve()), "split": split}, indent=2)
    if _read_only(Path(root)):
        places = places[1:]
    for place in places:
        try:
            place.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(place, "w") as f:
                f.write(text + "\n")
            return stats, place
        except OSError as exc:  # a read-only data folder: fall back to the cache root
            log.info("PCA statistics not written to %s (%s); trying the next location.", place, exc)
    raise OSError(f"could not write the PCA statistics to any of {[str(p) for p in places]}")
