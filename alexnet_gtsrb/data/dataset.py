"""A map-style Dataset that decodes one GTSRB image per item (in DataLoader workers), uint8 throughout."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from alexnet_gtsrb.data.gtsrb import Record
from alexnet_gtsrb.data.io import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS, decode_rgb, roi_crop
from alexnet_gtsrb.data.transforms import flip_remap
from alexnet_gtsrb.errors import BadDataError

if TYPE_CHECKING:
    from alexnet_gtsrb.data.cache import ImageCache

ON_BAD_IMAGE = ("error", "skip")


class GTSRBDataset(Dataset):
    """Records -> (uint8 HxWx3 tensor, label). ``records`` stays public so a split can be audited.

    With an ``ImageCache`` (``data.cache=true``) an item starts from the cached, already ROI-cropped and
    resized image instead of decode + crop; the flip and the transform are the same. Only the cache's path
    and one row index per record are kept, so the dataset pickles small into DataLoader workers.
    """

    def __init__(
        self,
        records: Sequence[Record],
        transform: Callable | None = None,
        roi: bool = True,
        flip: bool = False,
        on_bad_image: str = "error",
        cache: ImageCache | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        max_file_bytes: int | None = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        self.records = tuple(records)
        self.cache = cache.reader() if cache is not None else None
        self._rows = tuple(cache.row(r.path) for r in self.records) if cache is not None else ()
        self.transform = transform
        self.roi = roi
        self.flip = flip
        self.on_bad_image = on_bad_image
        self.max_pixels = max_pixels  # caps of decode_rgb: plain ints, so the dataset still pickles into workers
        self.max_file_bytes = max_file_bytes
        self._rng: np.random.Generator | None = None
        self._transform_seeded = False

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[np.ndarray, int]:
        """Decode, ROI-crop, augment; returns the uint8 image and the (possibly remapped) label."""
        r = self.records[index]
        if self.cache is not None:
            image = self.cache.image(self._rows[index])  # already cropped (if roi) and resized
        else:
            image = decode_rgb(r.path, self.max_pixels, self.max_file_bytes)
            if self.roi and r.roi is not None:
                image = roi_crop(image, r.roi, (r.width, r.height))
        label = r.label
        if self.flip:
            if self._rng is None:  # seeded per worker from torch's seed, which Lightning seeds
                self._rng = np.random.default_rng(torch.initial_seed() % 2**32)
            image, label = flip_remap(image, label, self._rng)
        if self.transform is not None:
            if not self._transform_seeded and hasattr(self.transform, "set_random_seed"):
                # albumentations keeps its own generator (OS entropy by default): seed it per process from
                # torch's seed, so seed_everything(workers=True) makes augmentation reproducible too
                self.transform.set_random_seed(torch.initial_seed() % 2**32)
                self._transform_seeded = True
            image = self.transform(image=image)["image"]
        return image, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        try:
            image, label = self.load(index)
        except BadDataError:
            if self.on_bad_image == "skip":
                return None
            raise
        return torch.from_numpy(np.ascontiguousarray(image)), label


def collate_skipping_bad(batch: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack (image, label) pairs; ``None`` items (bad images under on_bad_image=skip) are dropped and counted."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([g[0] for g in good])
    labels = torch.tensor([g[1] for g in good], dtype=torch.long)
    return images, labels, skipped
