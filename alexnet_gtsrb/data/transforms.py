"""Image pipelines: albumentations presets, the label-aware flip and normalisation, uint8 until the last step.

Normalisation (uint8 -> float, mean/std) is the last step and runs on the batch after it reaches the
device (:func:`normalize_uint8`), so workers, pinned memory and the host-to-device copy move 4x fewer bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from alexnet_gtsrb.data.classes import FLIP_INVARIANT, MIRROR_PAIRS
from alexnet_gtsrb.errors import ConfigError

PRESETS = ("none", "gtsrb", "paper")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MIRROR = {a: b for a, b in MIRROR_PAIRS} | {b: a for a, b in MIRROR_PAIRS}


def _clahe(params: Mapping[str, Any]) -> list[A.BasicTransform]:
    if not params.get("clahe", False):
        return []
    clip = float(params.get("clahe_clip", 2.0))
    tile = int(params.get("clahe_tile", 4))
    return [A.CLAHE(clip_limit=(clip, clip), tile_grid_size=(tile, tile), p=1.0)]


def build_transform(preset: str, image_size: int, train: bool, params: Mapping[str, Any] | None = None) -> A.Compose:
    """An albumentations pipeline for a preset; uint8 RGB HxWx3 in, uint8 ``image_size``^2 out.

    ``none``: resize. ``gtsrb``: optional CLAHE, small affine, brightness/contrast, blur or noise, then
    one resize (augmenting at the small native size is cheaper than at 227 px). ``paper``: resize to
    256/227 of the size, random crop and PCA colour noise (sigma 0.1) for training, centre crop otherwise.
    No preset flips blindly: see ``flip_remap`` for the label-aware flip.
    """
    p = dict(params or {})
    s = int(image_size)
    resize = A.Resize(s, s, interpolation=cv2.INTER_LINEAR)
    if preset == "none":
        ops: list[A.BasicTransform] = [resize]
    elif preset == "gtsrb":
        ops = _clahe(p)
        if train:
            ops += [
                A.Affine(
                    scale=(1 - p.get("scale", 0.1), 1 + p.get("scale", 0.1)),
                    translate_percent=(-p.get("shift", 0.1), p.get("shift", 0.1)),
                    rotate=(-p.get("rotate", 10.0), p.get("rotate", 10.0)),
                    border_mode=cv2.BORDER_REPLICATE,
                    p=p.get("affine_p", 0.8),
                ),
                A.RandomBrightnessContrast(
                    brightness_limit=p.get("brightness", 0.2), contrast_limit=p.get("contrast", 0.2), p=0.5
                ),
                A.OneOf(
                    [
                        A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.3, 1.0)),
                        A.GaussNoise(std_range=(0.02, 0.06)),
                    ],
                    p=p.get("blur_noise_p", 0.3),
                ),
            ]
        ops.append(resize)
    elif preset == "paper":
        big = round(s * 256 / 227)
        ops = _clahe(p) + [A.Resize(big, big, interpolation=cv2.INTER_LINEAR)]
        if train:
            ops += [A.RandomCrop(s, s), A.FancyPCA(alpha=p.get("pca_alpha", 0.1), p=1.0)]
        else:
            ops += [A.CenterCrop(s, s)]
    else:
        raise ConfigError(f"augment.preset={preset!r} is not a known preset; allowed: {', '.join(PRESETS)}.")
    return A.Compose(ops)


def flip_remap(image: np.ndarray, label: int, rng: np.random.Generator, p: float = 0.5) -> tuple[np.ndarray, int]:
    """Label-aware horizontal flip: flips flip-invariant classes, and mirror pairs with swapped labels.

    Other classes (digits, one-sided arrows without a twin) are never flipped.
    """
    if (label in FLIP_INVARIANT or label in _MIRROR) and rng.random() < p:
        return np.ascontiguousarray(image[:, ::-1]), _MIRROR.get(label, label)
    return image, label


def normalize_uint8(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float], channels_last: bool = False
) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, normalised by per-channel mean/std given in [0, 1] units."""
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected a (B, H, W, 3) uint8 batch, got {tuple(x.shape)} {x.dtype}")
    m = torch.tensor(mean, device=x.device, dtype=torch.float32) * 255.0
    inv = 1.0 / (torch.tensor(std, device=x.device, dtype=torch.float32) * 255.0)
    y = (x.float() - m) * inv  # still (B, H, W, 3)
    y = y.permute(0, 3, 1, 2)  # a channels_last view of NCHW
    return y if channels_last else y.contiguous()
