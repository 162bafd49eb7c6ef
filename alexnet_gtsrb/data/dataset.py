"""A map-style Dataset that decodes one GTSRB image per item (in DataLoader workers), uint8 throughout."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from alexnet_gtsrb.data.gtsrb import Record, load_cropped
from alexnet_gtsrb.data.transforms import flip_remap

if TYPE_CHECKING:
    from alexnet_gtsrb.data.cache import ImageCache


class GTSRBDataset(Dataset):
    """Records -> (uint8 HxWx3 tensor, label); ``records`` stays public so a split can be audited. With an
    ``ImageCache`` an item starts from its cached (cropped, resized) row; only the cache's path and one row index
    per record are kept, so the dataset pickles small into DataLoader workers."""

    def __init__(
        self,
        records: Sequence[Record],
        transform: Callable | None = None,
        roi: bool = True,
        flip: bool = False,
        cache: ImageCache | None = None,
    ) -> None:
        self.records = tuple(records)
        self.cache = cache.reader() if cache is not None else None
        self._rows = tuple(cache.row(r.path) for r in self.records) if cache is not None else ()
        self.transform = transform
        self.roi = roi
        self.flip = flip
        self._rng: np.random.Generator | None = None
        self._py_random: random.Random | None = None
        self._seeded_transform: Callable | None = None

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[np.ndarray, int]:
        """Decode, ROI-crop, augment; returns the uint8 image and the (possibly remapped) label."""
        r = self.records[index]
        # the cache's rows are already cropped (if roi) and resized
        image = self.cache.image(self._rows[index]) if self.cache is not None else load_cropped(r, self.roi)
        label = r.label
        if self.flip:
            image, label = flip_remap(image, label, self._generators()[0])
        if self.transform is not None:
            self._generators()
            image = self.transform(image=image)["image"]
        return image, label

    def _generators(self) -> tuple[np.random.Generator, random.Random]:
        """One numpy and one Python generator per process, shared by the flip and every albumentations op (which
        otherwise seed their own from OS entropy); seeded from torch's per-worker seed, reseeded per item by
        :meth:`__getitem__` when the sampler sends a seed."""
        if self._rng is None or self._py_random is None:
            seed = torch.initial_seed() % 2**32
            self._rng, self._py_random = np.random.Generator(np.random.PCG64(seed)), random.Random(seed)
        if self.transform is not self._seeded_transform:  # set once per transform (the test views swap it)
            share = getattr(self.transform, "set_random_state", None)
            if share is not None:
                share(self._rng, self._py_random)
            self._seeded_transform = self.transform
        return self._rng, self._py_random

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """``item`` is an index, or (index, seed) from :class:`~alexnet_gtsrb.data.sampling.RunSampler`: then the
        item's augmentation depends on that seed only, not on the worker or what it drew before."""
        if isinstance(item, tuple):
            index, seed = item
            rng, py_random = self._generators()
            rng.bit_generator.state = np.random.PCG64(seed).state
            py_random.seed(seed)
        else:
            index = item
        image, label = self.load(index)
        return torch.from_numpy(np.ascontiguousarray(image)), label
