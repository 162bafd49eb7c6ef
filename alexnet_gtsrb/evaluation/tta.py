"""Flip-safe test-time augmentation: five crops, each with a horizontal flip used only through the label mapping
under which it is valid (GTSRB has left/right sign pairs). The crops are cut at the scale the preset trains at
(:func:`tta_transform`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from alexnet_gtsrb.data.classes import FLIP_INVARIANT, MIRROR_PAIRS
from alexnet_gtsrb.data.transforms import Pipeline, view_source

TTA_CROPS = 5


def _flip_source_index(num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(source class per class for a flipped view, mask of classes that may use the flipped view).

    ``src[c]`` is the class whose flipped-view probability stands for class ``c``: its mirror twin for the
    mirror pairs, itself for flip-invariant classes; ``mask[c]`` is False for every other class.
    """
    src = torch.arange(num_classes)
    mask = torch.zeros(num_classes, dtype=torch.bool)
    for a, b in MIRROR_PAIRS:
        if a < num_classes and b < num_classes:
            src[a], src[b] = b, a
            mask[a] = mask[b] = True
    for c in FLIP_INVARIANT:
        if c < num_classes:
            mask[c] = True
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
        raise ValueError(f"TTA: images of {h}x{w} are smaller than the crop size {size}")
    top, left = (h - size) // 2, (w - size) // 2
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size)]
    return [images.narrow(hd, y, size).narrow(wd, x, size) for y, x in [(top, left), *corners]]


@torch.inference_mode()
def tta_probabilities(model: Any, images: torch.Tensor, size: int) -> torch.Tensor:
    """Flip-safe TTA: softmax averaged over 5 crops, each with a label-mapped horizontal flip.

    The paper averages 10 views (5 crops and their flips); on GTSRB a flip changes the meaning of some
    signs, and at test time the class is unknown, so a flipped view is used only through the label mapping
    under which it is valid. Per crop, with ``p`` the softmax of the crop and ``p'`` that of its mirror image:

    * mirror-pair classes (19/20, 33/34, 36/37, 38/39): ``q[c] = p'[twin(c)]`` (a flipped "curve left" is a
      "curve right");
    * flip-invariant classes (11, 12, 13, 15, 17, 18, 22, 26, 30, 35): ``q[c] = p'[c]``;
    * every other class (digits, one-sided signs without a twin): ``q[c] = p[c]``; the flipped view says
      nothing valid about them;
    * ``q`` is renormalised to sum to 1, and the crop's distribution is ``(p + q) / 2``.

    The result is the mean over the 5 crops: ``(B, num_classes)`` probabilities. For a model and an image
    where only the un-flipped view counts this reduces to the paper's 5-crop average. ``model`` is a
    ``GTSRBClassifier`` (``hparams.num_classes``; it accepts uint8 and normalised float batches alike).
    """
    crops = five_crops(images, size)
    num_classes = int(model.hparams.num_classes)
    src, mask = _flip_source_index(num_classes)
    src, mask = src.to(images.device), mask.to(images.device)
    total = torch.zeros(images.shape[0], num_classes, device=images.device)
    for crop in crops:
        both = torch.cat([crop, crop.flip(_hw_dims(images)[1])])  # (2B, ...): the crop and its mirror image
        probs = model(both.contiguous()).float().softmax(dim=-1)
        p, p_flip = probs.chunk(2)
        q = torch.where(mask, p_flip[:, src], p)
        q = q / q.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        view = (p + q) / 2
        total = total + view
    return total / len(crops)


def tta_transform(image_size: int, augment: Mapping[str, Any]) -> Pipeline:
    """The image the 5 crops of ``image_size`` are cut from, with the sign at the size the preset trains on.

    * ``paper``: the paper preset's evaluation pipeline without its final centre crop (CLAHE if set, shorter
      side to 256/227 of the size, centre square): it trains on random crops of that same image, so every view
      shows the sign at the training scale (Krizhevsky et al. 2012, section 4.1).
    * ``gtsrb`` and ``none`` train on the whole (ROI) image resized to ``image_size``: the views come from that
      evaluation image, padded with replicated borders to 256/227 of the size. The centre view is then exactly
      the one-view evaluation image and each corner view is it shifted by half the padding (4-5 px at 67 px,
      14-15 px at 227 px: 6-7.5% of the side), the sign keeping its training size; the ``gtsrb`` preset
      trains with shifts of up to 10% and the same replicated borders (``none`` trains without shifts).

    ``augment`` is ``data.augment`` as the per-item pipelines see it (without CLAHE where the image cache has
    already applied it).
    """
    return view_source(image_size, augment)
