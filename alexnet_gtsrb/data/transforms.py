"""Image pipelines: albumentations presets (the data pipeline's only albumentations import), the label-aware flip
and normalisation, uint8 until the batch is on the device, so workers and the copy move 4x fewer bytes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import albumentations as A
import cv2
import numpy as np
import torch

from alexnet_gtsrb.data.classes import FLIP_INVARIANT, MIRROR_PAIRS
from alexnet_gtsrb.errors import ConfigError, int_setting

Pipeline: TypeAlias = A.Compose  # a per-item pipeline: ``pipeline(image=uint8 HxWx3)["image"]``
Clahe: TypeAlias = tuple[float, int]  # a CLAHE step's (clip limit, tile grid side)
PCA_MODES = ("dataset", "per_image")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: CLAHE's tile grid side: OpenCV allocates a histogram per tile, so 100000 asks for 10 GB (GTSRB signs are
#: 15-250 px: even 64 tiles per side leaves tiles of a few pixels). The clip limit is a multiple of the mean
#: bin height: 1 equalises nothing, values past a few hundred are plain histogram equalisation.
MAX_CLAHE_TILE = 64
MAX_CLAHE_CLIP = 1000.0
#: The smallest per-channel std: below it one grey level spans hundreds of input units.
MIN_STD = 1e-3

_MIRROR = {a: b for a, b in MIRROR_PAIRS} | {b: a for a, b in MIRROR_PAIRS}


def clahe_settings(params: Mapping[str, Any]) -> Clahe | None:
    """``(clip limit, tile grid side)`` of the CLAHE step ``params`` (``data.augment``) asks for, or None (also for
    preset ``none``, which has none); a value that cannot work is a ConfigError naming it."""
    clahe = params.get("clahe", False)
    if not isinstance(clahe, bool | None):
        raise ConfigError(f"augment.clahe={clahe!r} must be true or false.")
    if not clahe or not get_preset(params).clahe:
        return None
    clip = params.get("clahe_clip", 2.0)
    if isinstance(clip, bool) or not isinstance(clip, int | float) or not 1.0 <= clip <= MAX_CLAHE_CLIP:
        raise ConfigError(f"augment.clahe_clip={clip!r} must be a number from 1 to {MAX_CLAHE_CLIP:g}.")
    tile = int_setting("augment.clahe_tile", params.get("clahe_tile", 4), 1, MAX_CLAHE_TILE)
    return float(clip), tile


def _clahe(settings: Clahe | None) -> list[A.BasicTransform]:
    """The CLAHE step (none for None): the first step of every preset, and of the image cache."""
    if settings is None:
        return []
    clip, tile = settings
    return [A.CLAHE(clip_limit=(clip, clip), tile_grid_size=(tile, tile), p=1.0)]


def paper_big(image_size: int) -> int:
    """The side the paper preset crops from: 256 for 227 px crops, scaled with ``image_size``."""
    return round(int(image_size) * 256 / 227)


def _fit(fit: str, size: int) -> list[A.BasicTransform]:
    """``shorter_side``: shorter side to ``size``, centre crop to a square; ``square``: a plain resize."""
    if fit == "shorter_side":
        return [A.SmallestMaxSize(max_size=size, interpolation=cv2.INTER_LINEAR), A.CenterCrop(size, size)]
    return [A.Resize(size, size, interpolation=cv2.INTER_LINEAR)]


def _paper_square(s: int, p: Mapping[str, Any]) -> list[A.BasicTransform]:
    """The paper's 256x256 image (scaled by ``image_size``/227): shorter side to 256, centre 256 crop
    (Krizhevsky et al. 2012, section 2). Crops of ``image_size`` are cut from it."""
    return _fit("shorter_side", paper_big(s))


def _resize(s: int, p: Mapping[str, Any]) -> list[A.BasicTransform]:
    return _fit("square", s)


def _gtsrb_train(s: int, p: Mapping[str, Any]) -> list[A.BasicTransform]:
    """Small affine, brightness/contrast, blur or noise, then one resize (augmenting at the small native size is
    cheaper than at 227 px)."""
    return [
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
            [A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.3, 1.0)), A.GaussNoise(std_range=(0.02, 0.06))],
            p=p.get("blur_noise_p", 0.3),
        ),
        *_resize(s, p),
    ]


def _pca_noise(params: Mapping[str, Any]) -> list[A.BasicTransform]:
    """The paper preset's per-item colour noise: FancyPCA for ``augment.pca=per_image``; none for ``dataset``, whose
    noise is added to the float batch on the device (:class:`~alexnet_gtsrb.data.batch_augment.PCANoise`), where
    shifts below one grey level are not rounded away."""
    mode = params.get("pca", "dataset")
    if mode not in PCA_MODES:
        raise ConfigError(f"augment.pca={mode!r}; allowed: {', '.join(PCA_MODES)}.")
    return [A.FancyPCA(alpha=float(params.get("pca_alpha", 0.1)), p=1.0)] if mode == "per_image" else []


Ops = Callable[[int, Mapping[str, Any]], list[A.BasicTransform]]


@dataclass(frozen=True)
class Preset:
    """An augmentation preset (``data.augment.preset=<name>``): all the data pipeline asks about one, never its name;
    :func:`register_preset` adds one (docs/extending.md).

    ``train`` / ``evaluate``: ``(image_size, data.augment) -> albumentations ops`` from the decoded (or cached)
    uint8 image to ``image_size`` squared, after the CLAHE step (first, with ``clahe=True``). ``cache_side`` /
    ``cache_fit``: the side the image cache stores and how (``square``: a resize; ``shorter_side``: shorter side,
    centre crop). ``cache_is_eval``: cached rows already are the evaluation image. ``view_source``: the image the
    10 test views are cut from (None: the evaluation image, padded). ``batch_augment``: ``train``'s random part
    can run on the device (``data.augment.on_device``). ``dataset_pca``: training needs the split's colour PCA.
    """

    name: str
    train: Ops
    evaluate: Ops
    clahe: bool = True
    cache_side: Callable[[int], int] = int
    cache_fit: str = "square"
    cache_is_eval: bool = False
    view_source: Ops | None = None
    batch_augment: bool = False
    dataset_pca: Callable[[Mapping[str, Any]], bool] = lambda params: False


PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    """Make ``preset`` available as ``data.augment.preset=<preset.name>`` (a name taken is a ConfigError)."""
    if preset.name in PRESETS and PRESETS[preset.name] is not preset:
        raise ConfigError(f"augment preset {preset.name!r} is registered already; pick another name.")
    if preset.cache_fit not in ("square", "shorter_side"):
        raise ConfigError(f"preset {preset.name!r}: cache_fit={preset.cache_fit!r}; allowed: square, shorter_side.")
    PRESETS[preset.name] = preset
    return preset


def get_preset(params: Mapping[str, Any] | str | None) -> Preset:
    """The preset ``data.augment`` (or a preset name) names; ``none`` when unset; a ConfigError naming the
    value and the registered names otherwise."""
    name = params if isinstance(params, str) else (params or {}).get("preset", "none")
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"augment.preset={name!r} is not a known preset; allowed: {', '.join(PRESETS)}.")
    return PRESETS[name]


register_preset(Preset("none", train=_resize, evaluate=_resize, clahe=False, cache_is_eval=True))
register_preset(Preset("gtsrb", train=_gtsrb_train, evaluate=_resize, cache_is_eval=True, batch_augment=True))
register_preset(
    Preset(
        "paper",
        train=lambda s, p: [*_paper_square(s, p), A.RandomCrop(s, s), *_pca_noise(p)],
        evaluate=lambda s, p: [*_paper_square(s, p), A.CenterCrop(s, s)],
        cache_side=paper_big,
        cache_fit="shorter_side",
        view_source=_paper_square,
        dataset_pca=lambda p: p.get("pca", "dataset") == "dataset",
    )
)


def build_transform(preset: str, image_size: int, train: bool, params: Mapping[str, Any] | None = None) -> A.Compose:
    """A preset's training or evaluation pipeline: uint8 RGB HxWx3 in, uint8 ``image_size``^2 out (no preset flips
    blindly: see :func:`flip_remap`)."""
    p = dict(params or {})
    chosen = get_preset(preset)
    ops = (chosen.train if train else chosen.evaluate)(int(image_size), p)
    return A.Compose([*_clahe(clahe_settings(p) if chosen.clahe else None), *ops])


def view_source(image_size: int, params: Mapping[str, Any]) -> Pipeline:
    """The image the 10 test views (:mod:`alexnet_gtsrb.evaluation.views`) are cut from, the sign at its training
    size: the preset's ``view_source`` after CLAHE, else its evaluation image padded (replicated borders) to
    :func:`paper_big`. ``paper`` trains on random crops of its square, so every view shows the sign at the
    training scale (Krizhevsky et al. 2012, section 4.1); for ``gtsrb``/``none`` the centre view is the one-view
    image and each corner view it shifted by half the padding (6-7.5% of the side; ``gtsrb`` trains with shifts
    of up to 10% and the same borders)."""
    chosen, s = get_preset(params), int(image_size)
    if chosen.view_source is not None:
        return A.Compose([*_clahe(clahe_settings(params) if chosen.clahe else None), *chosen.view_source(s, params)])
    big = paper_big(s)
    pad = A.PadIfNeeded(big, big, position="center", border_mode=cv2.BORDER_REPLICATE, p=1.0)
    return A.Compose([build_transform(chosen.name, s, train=False, params=params), pad])


def cache_pipeline(clahe: Clahe | None, fit: str, size: int) -> Pipeline:
    """What the image cache stores: optional CLAHE, then the presets' own first resize (a no-op on cached rows)."""
    return A.Compose([*_clahe(clahe), *_fit(fit, size)])


def flip_remap(image: np.ndarray, label: int, rng: np.random.Generator, p: float = 0.5) -> tuple[np.ndarray, int]:
    """Label-aware horizontal flip: flip-invariant classes flip, mirror pairs flip with swapped labels, others
    (digits, one-sided arrows without a twin) never."""
    if (label in FLIP_INVARIANT or label in _MIRROR) and rng.random() < p:
        return np.ascontiguousarray(image[:, ::-1]), _MIRROR.get(label, label)
    return image, label


def normalize_uint8(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float], channels_last: bool = False
) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, normalised by per-channel mean/std given in [0, 1] units."""
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected a (B, H, W, 3) uint8 batch, got {tuple(x.shape)} {x.dtype}")
    return normalize_float255(x.permute(0, 3, 1, 2).float(), mean, std, channels_last)


def normalize_float255(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float], channels_last: bool = False
) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 255] (a batch augmented on the device) -> normalised, as :func:`normalize_uint8`."""
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    inv = 1.0 / (torch.tensor(std, device=x.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
    y = (x - m) * inv
    return y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def check_mean_std(mean: Any, std: Any) -> tuple[list[float], list[float]]:
    """``(mean, std)`` as float lists when each is 3 numbers (R, G, B), means in [0, 1], stds in [:data:`MIN_STD`, 1];
    else a ConfigError naming the key (a zero std made every probability NaN, another length failed in a batch)."""
    for key, values, low in (("mean", mean, 0.0), ("std", std, MIN_STD)):
        ok = isinstance(values, Sequence) and not isinstance(values, str) and len(values) == 3
        ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= 1.0 for v in values)
        if not ok:
            raise ConfigError(f"{key}={values!r} must be 3 numbers (R, G, B) from {low:g} to 1, in [0, 1] pixel units.")
    return [float(v) for v in mean], [float(v) for v in std]
