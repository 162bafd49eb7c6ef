"""The paper's 10 test views (``test_views=10``), flip-safe: five crops, each with a horizontal flip used only
through the label mapping under which it is valid (GTSRB has left/right sign pairs). The crops are cut from the
image :func:`alexnet_gtsrb.data.transforms.view_source` gives, at the scale the preset trains at."""

from __future__ import annotations

from typing import Any

import torch

from alexnet_gtsrb.data.classes import FLIP_INVARIANT, MIRROR_PAIRS
from alexnet_gtsrb.errors import ConfigError

CROPS = 5


def check_test_views(views: Any) -> int:
    """``test_views``: 1 (the centre view) or 10 (5 crops and their label-mapped flips); else a ConfigError."""
    if views not in (1, 2 * CROPS) or isinstance(views, bool):
        raise ConfigError(f"test_views={views!r}; allowed: 1 (one centre view), 10 (5 crops + label-mapped flips).")
    return int(views)


def _flip_source_index(num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(``src``, ``mask``): ``src[c]`` is the class whose flipped-view probability stands for class ``c`` (its
    mirror twin, or itself for a flip-invariant class); ``mask[c]`` is False for every other class."""
    src = torch.arange(num_classes)
    mask = torch.zeros(num_classes, dtype=torch.bool)
    for a, b in MIRROR_PAIRS:
        if a < num_classes and b < num_classes:
            src[a], src[b] = b, a
            mask[a] = mask[b] = True
    mask[[c for c in FLIP_INVARIANT if c < num_classes]] = True
    return src, mask


def _hw_dims(images: torch.Tensor) -> tuple[int, int]:
    """(H, W) dims: a uint8 batch is (B, H, W, 3); a normalised float batch is (B, 3, H, W)."""
    return (1, 2) if images.dtype == torch.uint8 else (2, 3)


def five_crops(images: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Centre and four corner ``size``x``size`` crops (Krizhevsky et al. 2012) of a uint8 (B, H, W, 3) or a
    normalised float (B, 3, H, W) batch."""
    hd, wd = _hw_dims(images)
    h, w = images.shape[hd], images.shape[wd]
    if h < size or w < size:
        raise ValueError(f"test views: images of {h}x{w} are smaller than the crop size {size}")
    corners = [((h - size) // 2, (w - size) // 2), (0, 0), (0, w - size), (h - size, 0), (h - size, w - size)]
    return [images.narrow(hd, y, size).narrow(wd, x, size) for y, x in corners]


@torch.inference_mode()
def ten_view_probabilities(model: Any, images: torch.Tensor, size: int) -> torch.Tensor:
    """The 10 views' softmax averaged over 5 crops, each with a label-mapped horizontal flip.

    The paper averages 10 views (5 crops and their flips); on GTSRB a flip changes the meaning of some
    signs, and at test time the class is unknown, so a flipped view is used only through the label mapping
    under which it is valid. Per crop, with ``p`` the softmax of the crop and ``p'`` that of its mirror image:

    * mirror-pair classes (19/20, 33/34, 36/37, 38/39): ``q[c] = p'[twin(c)]`` (a flipped "curve left" is a
      "curve right");
    * flip-invariant classes (11, 12, 13, 15, 17, 18, 22, 26, 30, 35): ``q[c] = p'[c]``;
    * every other class (digits, one-sided signs without a twin): ``q[c] = p[c]``;
    * ``q`` is renormalised to sum to 1, and the crop's distribution is ``(p + q) / 2``.

    The result is the mean over the 5 crops: ``(B, num_classes)`` probabilities. ``model`` is a
    ``GTSRBClassifier`` (``hparams.num_classes``; it accepts uint8 and normalised float batches alike).
    """
    num_classes = int(model.hparams.num_classes)
    src, mask = (t.to(images.device) for t in _flip_source_index(num_classes))
    total = torch.zeros(images.shape[0], num_classes, device=images.device)
    for crop in five_crops(images, size):
        both = torch.cat([crop, crop.flip(_hw_dims(images)[1])])  # (2B, ...): the crop and its mirror image
        p, p_flip = model(both.contiguous()).float().softmax(dim=-1).chunk(2)
        q = torch.where(mask, p_flip[:, src], p)
        total = total + (p + q / q.sum(dim=-1, keepdim=True).clamp_min(1e-12)) / 2
    return total / CROPS
