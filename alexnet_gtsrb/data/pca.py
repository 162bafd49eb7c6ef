"""The paper's PCA colour statistics: eigenvalues/eigenvectors of the training split's 3x3 RGB pixel covariance.

Krizhevsky et al. (2012), section 4.1: "We perform PCA on the set of RGB pixel values throughout the ImageNet
training set" and add ``[p1 p2 p3][a1 l1, a2 l2, a3 l3]^T`` to every pixel of a training image, ``a_i ~ N(0,
0.1)`` drawn once per image (:class:`alexnet_gtsrb.data.batch_augment.PCANoise`). Here the pixels are those the
network's crops are cut from, scaled to [0, 1]; the covariance is the population one (divided by N), from float64
running sums (memory does not grow with the data set).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
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

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RGBPCA:
        vecs = tuple(tuple(float(v) for v in row) for row in data["eigenvectors"])
        vals = tuple(float(v) for v in data["eigenvalues"])
        if len(vals) != 3 or len(vecs) != 3 or any(len(r) != 3 for r in vecs):
            raise ValueError("PCA statistics must hold 3 eigenvalues and 3 RGB eigenvectors")
        mean = tuple(float(v) for v in data["mean"])
        return cls(vals, vecs, mean, int(data["num_pixels"]), int(data["num_images"]))


def rgb_pca(images: Iterable[np.ndarray]) -> RGBPCA:
    """PCA of the RGB pixels of uint8 HxWx3 ``images``, streamed as running float64 sums of x and x x^T."""
    n, count, sums, squares = 0, 0, np.zeros(3, dtype=np.float64), np.zeros((3, 3), dtype=np.float64)
    for image in images:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
        x = image.reshape(-1, 3).astype(np.float64) / 255.0
        n, count = n + x.shape[0], count + 1
        sums += x.sum(axis=0)
        squares += x.T @ x
    if n == 0:
        raise ValueError("no pixels to compute the PCA colour statistics from")
    mean = sums / n
    cov = squares / n - np.outer(mean, mean)
    vals, vecs = np.linalg.eigh((cov + cov.T) / 2)  # ascending; columns are eigenvectors
    order = np.argsort(vals)[::-1]
    vals, vecs = np.clip(vals[order], 0.0, None), vecs[:, order]
    signs = np.sign(vecs[np.abs(vecs).argmax(axis=0), range(3)])  # largest component positive: deterministic
    vecs = vecs * np.where(signs == 0, 1.0, signs)
    return RGBPCA(tuple(vals.tolist()), tuple(map(tuple, vecs.T.tolist())), tuple(mean.tolist()), n, count)


def cached_rgb_pca(
    root: str | os.PathLike[str],
    split: str,
    settings: Mapping[str, Any],
    paths: Sequence[str],
    images: Callable[[], Iterable[np.ndarray]],
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[RGBPCA, Path]:
    """(statistics, their file): read from the cache file for this root, split, ``settings`` and image list, or
    computed from ``images()`` and stored as JSON beside the data (``<root>/.alexnet_gtsrb/pca/``) or, where that
    folder is read-only, under ``cache_dir`` (default ``<cache root>/pca``)."""
    where = str(Path(root).resolve())
    blob = json.dumps(
        {"root": where, "split": split, "settings": dict(settings), "paths": list(paths)}, sort_keys=True, default=str
    )
    key = f"{split}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"  # the split and a hash of everything
    fallback = Path(cache_dir) if cache_dir else cache_root() / "pca"
    places = [Path(root) / BESIDE_DATA / f"{key}.json", fallback / f"{key}.json"]
    for place in places:
        if place.is_file():
            try:
                return RGBPCA.from_json(json.loads(read_text_file(place, "PCA statistics file"))), place
            except (ValueError, KeyError, TypeError, BadFileError):
                log.warning("Ignoring unreadable PCA statistics in %s: computing them again.", place)
    stats = rgb_pca(images())
    text = json.dumps({**asdict(stats), "root": where, "split": split}, indent=2)
    if not os.stat(root).st_mode & 0o222:  # a folder marked read-only is respected even by root, who could write
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
