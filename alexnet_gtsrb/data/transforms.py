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
PCA_MODES = ("dataset", "per_image")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MIRROR = {a: b for a, b in MIRROR_PAIRS} | {b: a for a, b in MIRROR_PAIRS}


def clahe_settings(params: Mapping[str, Any]) -> tuple[float, int] | None:
    """``(clip limit, tile grid side)`` of the CLAHE step that ``params`` (``data.augment``) asks for, or None
    (also for ``preset: none``, the origin script's resize-only pipeline, which has no CLAHE step)."""
    if not params.get("clahe", False) or params.get("preset") == "none":
        return None
    return float(params.get("clahe_clip", 2.0)), int(params.get("clahe_tile", 4))


def clahe_ops(settings: tuple[float, int] | None) -> list[A.BasicTransform]:
    """The CLAHE step (an empty list for None): the first step of every preset, and of the image cache."""
    if settings is None:
        return []
    clip, tile = settings
    return [A.CLAHE(clip_limit=(clip, clip), tile_grid_size=(tile, tile), p=1.0)]


def _clahe(params: Mapping[str, Any]) -> list[A.BasicTransform]:
    return clahe_ops(clahe_settings(params))


def paper_base(image_size: int, params: Mapping[str, Any] | None = None) -> list[A.BasicTransform]:
    """The paper's 256x256 image (scaled by ``image_size``/227): optional CLAHE, shorter side to 256, centre
    256 crop (Krizhevsky et al. 2012, section 2). Crops of ``image_size`` are cut from it."""
    big = paper_big(image_size)
    return _clahe(dict(params or {})) + [
        A.SmallestMaxSize(max_size=big, interpolation=cv2.INTER_LINEAR),
        A.CenterCrop(big, big),
    ]


def paper_big(image_size: int) -> int:
    """The side the paper preset crops from: 256 for 227 px crops, scaled with ``image_size``."""
    return round(int(image_size) * 256 / 227)


def _pca_noise(params: Mapping[str, Any]) -> list[A.BasicTransform]:
    """The per-item colour-noise step of the paper preset's training pipeline: albumentations' FancyPCA for
    ``augment.pca=per_image``; none for ``augment.pca=dataset``, whose noise (the paper's, with the training
    set's statistics) is added to the float batch on the device (:class:`alexnet_gtsrb.data.batch_augment.PCANoise`,
    applied by the DataModule), where shifts below one grey level are not rounded away."""
    mode = params.get("pca", "dataset")
    if mode not in PCA_MODES:
        raise ConfigError(f"augment.pca={mode!r}; allowed: {', '.join(PCA_MODES)}.")
    if mode == "per_image":
        return [A.FancyPCA(alpha=float(params.get("pca_alpha", 0.1)), p=1.0)]
    return []


def build_transform(preset: str, image_size: int, train: bool, params: Mapping[str, Any] | None = None) -> A.Compose:
    """An albumentations pipeline for a preset; uint8 RGB HxWx3 in, uint8 ``image_size``^2 out.

    ``none``: resize. ``gtsrb``: optional CLAHE, small affine, brightness/contrast, blur or noise, then
    one resize (augmenting at the small native size is cheaper than at 227 px). ``paper``: shorter side to
    256/227 of the size and centre crop to a square (:func:`paper_base`), then for training a random crop (and
    FancyPCA with ``augment.pca=per_image``; the paper's own PCA noise is added on the device), otherwise the
    centre crop.
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
        ops = paper_base(s, p)
        if train:
            ops += [A.RandomCrop(s, s), *_pca_noise(p)]
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
    m, inv = _mean_inv_std(mean, std, x.device)
    y = (x.float() - m) * inv  # still (B, H, W, 3)
    y = y.permute(0, 3, 1, 2)  # a channels_last view of NCHW
    return y if channels_last else y.contiguous()


def normalize_float255(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float], channels_last: bool = False
) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 255] (a batch augmented on the device) -> normalised, as :func:`normalize_uint8`."""
    if not x.is_floating_point() or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) float batch, got {tuple(x.shape)} {x.dtype}")
    m, inv = _mean_inv_std(mean, std, x.device)
    y = (x - m.view(1, 3, 1, 1)) * inv.view(1, 3, 1, 1)
    return y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _mean_inv_std(mean: Sequence[float], std: Sequence[float], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Per-channel mean and 1/std in uint8 units (255 x the [0, 1] values)."""
    m = torch.tensor(mean, device=device, dtype=torch.float32) * 255.0
    inv = 1.0 / (torch.tensor(std, device=device, dtype=torch.float32) * 255.0)
    return m, inv
