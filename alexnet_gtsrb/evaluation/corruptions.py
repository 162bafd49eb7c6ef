"""Common corruptions at five severities, ImageNet-C style (Hendrycks & Dietterich 2019).

Severity constants are ImageNet-C's (github.com/hendrycks/robustness, ``ImageNet-C/create_c/make_imagenet_c.py``,
the functions of the same names) for noise, defocus blur, motion blur, brightness, contrast, JPEG, pixelation
and spatter, and this project's choice for fog and snow (albumentations' own parameterisation). Where
albumentations performs ImageNet-C's operation it is used; motion blur (ImageMagick's one-sided Gaussian line
kernel), contrast (a blend towards the channel mean) and spatter (rain and mud) are written here after
ImageNet-C's code. ImageNet-C's images are 224 px: blur radii and sigmas are scaled by ``size / 224``, and
spatter's random layer is made at 224 px and resized to the image, so that drops cover the same fraction of
the image at every size.

Where a corruption hits: by default the network's input image, after the checkpoint's own preprocessing (CLAHE,
resize), as ImageNet-C corrupts the 224 px crops its networks see; severity 0 is then exactly the clean
evaluation. ``before_preprocessing=True`` corrupts the decoded image (resized to the network's size first) and
runs the preprocessing afterwards, as a camera would; a preprocessing step that undoes part of a corruption
(CLAHE against low contrast or fog) is then credited to the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import albumentations as A
import cv2
import numpy as np

from alexnet_gtsrb.errors import ConfigError

SEVERITIES = (1, 2, 3, 4, 5)
IMAGENET_C_SIZE = 224  # ImageNet-C's image size; blur radii below are given for it

# ImageNet-C's constants (see above), indexed by severity 1-5:
_GAUSS_STD = (0.08, 0.12, 0.18, 0.26, 0.38)  # gaussian_noise: std in [0, 1] units
_DEFOCUS = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))  # defocus_blur: (disk radius, alias blur)
_MOTION = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))  # motion_blur: ImageMagick (radius, sigma)
_MOTION_ANGLE = 45.0  # motion_blur: angle uniform in [-45, 45] degrees
_BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # brightness: added to HSV value in [0, 1]
_CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)  # contrast: (x - channel mean) * c + channel mean
_JPEG_QUALITY = (25, 18, 15, 10, 7)  # jpeg_compression
_PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)  # pixelate: box down- and up-sampling factor
_SPATTER = (  # spatter: (noise mean, noise std, noise blur sigma, threshold, rain: drop strength | mud: mask
    (0.65, 0.3, 4, 0.69, 0.6, 0),  # blur sigma, mode: 0 rain, 1 mud)
    (0.65, 0.3, 3, 0.68, 0.6, 0),
    (0.65, 0.3, 2, 0.68, 0.5, 0),
    (0.65, 0.3, 1, 0.65, 1.5, 1),
    (0.67, 0.4, 1, 0.65, 1.5, 1),
)
_RAIN_RGB = (175, 238, 238)  # spatter: "water is pale turquoise" (ImageNet-C's array is RGB, from PIL)
_MUD_RGB = (63, 42, 20)  # spatter: "mud brown"
_MUD_CORE = 0.8  # spatter: the blurred mud mask is cut to 0 below this
# This project's severities (albumentations' own parameterisation, no ImageNet-C twin):
_FOG = (0.2, 0.35, 0.5, 0.65, 0.8)  # RandomFog fog_coef
_SNOW = (0.1, 0.2, 0.3, 0.4, 0.5)  # RandomSnow snow_point (fraction of pixels whitened)


def _contrast(img: np.ndarray, c: float, **params: Any) -> np.ndarray:
    """ImageNet-C contrast: blend every channel towards its mean by factor ``c``."""
    x = img.astype(np.float32)
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 255).round().astype(np.uint8)


def motion_blur_kernel(radius: int, sigma: float) -> np.ndarray:
    """ImageMagick's motion-blur weights (MagickCore/effect.c ``MotionBlurImage``, which ImageNet-C's
    ``motion_blur`` calls through Wand): taps ``i = 0 .. 2 * radius`` (gem.c ``GetOptimalKernelWidth1D``: width
    ``2 * ceil(radius) + 1``) weighted ``exp(-i^2 / (2 sigma^2))``, normalised to sum 1: one-sided, the nearest
    tap heaviest."""
    i = np.arange(2 * int(radius) + 1, dtype=np.float64)
    k = np.exp(-(i**2) / (2.0 * float(sigma) ** 2))
    return k / k.sum()


def motion_blur(img: np.ndarray, angle: float, radius: int, sigma: float) -> np.ndarray:
    """ImageMagick's motion blur: ``out(y, x) = sum_i k_i * img(y + dy_i, x + dx_i)`` with the tap offsets
    ``(dy_i, dx_i) = (ceil(i sin a - 1/2), ceil(i cos a - 1/2))`` along the angle ``a`` (degrees; 0 is the +x
    direction, y points down) and replicated borders (ImageMagick's default edge virtual pixels), rounded to
    uint8."""
    h, w = img.shape[:2]
    rows, cols = np.arange(h), np.arange(w)
    sin, cos = math.sin(math.radians(angle)), math.cos(math.radians(angle))
    x, out = img.astype(np.float64), np.zeros(img.shape, np.float64)
    for i, weight in enumerate(motion_blur_kernel(radius, sigma)):
        dy, dx = math.ceil(i * sin - 0.5), math.ceil(i * cos - 0.5)
        out += weight * x[np.clip(rows + dy, 0, h - 1)][:, np.clip(cols + dx, 0, w - 1)]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class _Drawn(A.ImageOnlyTransform):
    """A corruption written here, ``corrupt(image, draw(generator, image shape))``: its random part (motion blur's
    angle, spatter's noise field) drawn from the transform's seeded generator."""

    def __init__(self, draw: Callable[[Any, tuple[int, ...]], Any], corrupt: Callable[..., np.ndarray]) -> None:
        super().__init__(p=1.0)
        self._draw, self._corrupt = draw, corrupt

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        return {"drawn": self._draw(self.random_generator, params["shape"])}

    def apply(self, img: np.ndarray, drawn: Any = None, **params: Any) -> np.ndarray:
        return self._corrupt(img, drawn)


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """``skimage.filters.gaussian`` as ImageNet-C calls it: scipy's ``gaussian_filter`` defaults (truncate 4,
    'nearest' borders), written with OpenCV (the same normalised kernel, replicated borders)."""
    radius = int(4.0 * sigma + 0.5)
    k = 2 * radius + 1
    return cv2.GaussianBlur(x, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)


def spatter_layer(z: np.ndarray, c: Sequence[float]) -> np.ndarray:
    """ImageNet-C's spatter mask for one standard-normal field ``z`` at 224 px and the severity's constants
    ``c`` (:data:`_SPATTER`): rain: the drop layer ``m`` (added as ``m * water``), mud: the mask ``m``
    (``x * (1 - m) + m * mud``). Steps as in ``make_imagenet_c.py``'s ``spatter``."""
    mean, std, sigma, threshold, amount, mud = c
    liquid = _gaussian(mean + std * z, sigma)
    liquid[liquid < threshold] = 0
    if mud:
        m = _gaussian((liquid > threshold).astype(np.float32), amount).astype(np.float64)
        m[m < _MUD_CORE] = 0
        return m
    layer = (np.clip(liquid, 0, 1) * 255).astype(np.uint8)  # ImageNet-C: (liquid * 255).astype(np.uint8)
    dist = (255 - cv2.Canny(layer, 50, 150)).astype(np.uint8)
    dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
    emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float32)
    dist = cv2.blur(cv2.filter2D(dist, cv2.CV_8U, emboss), (3, 3)).astype(np.float32)
    m = layer.astype(np.float32) * dist
    top = float(m.max())
    return (m / top * amount if top > 0 else m).astype(np.float64)


def spatter(img: np.ndarray, z: np.ndarray, c: Sequence[float]) -> np.ndarray:
    """ImageNet-C spatter of a uint8 RGB image: the mask of :func:`spatter_layer`, made from ``z`` (ImageNet-C's
    224 px grid) and resized to the image (area-averaged when smaller), composited in [0, 1], rounded."""
    m = spatter_layer(z, c)
    h, w = img.shape[:2]
    if m.shape != (h, w):
        shrink = h * w < m.size
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    m = m[..., None]
    x = img.astype(np.float64) / 255.0
    mud, rain = np.asarray(_MUD_RGB) / 255.0, np.asarray(_RAIN_RGB) / 255.0
    out = x * (1 - m) + m * mud if c[5] else x + m * rain
    return np.clip(np.rint(np.clip(out, 0, 1) * 255), 0, 255).astype(np.uint8)


def _spatter_field(generator: Any, shape: tuple[int, ...], size: int) -> np.ndarray:
    """Spatter's standard-normal field on ImageNet-C's grid: ``224 / size`` times the image's sides."""
    f = IMAGENET_C_SIZE / size
    return generator.standard_normal((max(1, round(shape[0] * f)), max(1, round(shape[1] * f))))


#: Per corruption: its albumentations transform at severity index ``i`` (0-4), from ``scale = size / 224`` and the
#: image ``size``. ImageMagick takes a real motion-blur radius: its kernel width is 2 * ceil(radius) + 1.
_BUILDERS: dict[str, Callable[[int, float, int], A.BasicTransform]] = {
    "gaussian_noise": lambda i, scale, size: A.GaussNoise(std_range=(_GAUSS_STD[i], _GAUSS_STD[i]), p=1.0),
    "motion_blur": lambda i, scale, size: _Drawn(
        lambda generator, shape: float(generator.uniform(-_MOTION_ANGLE, _MOTION_ANGLE)),
        partial(motion_blur, radius=max(1, math.ceil(round(_MOTION[i][0] * scale, 6))), sigma=_MOTION[i][1] * scale),
    ),
    "defocus_blur": lambda i, scale, size: A.Defocus(
        radius=(max(1, int(round(_DEFOCUS[i][0] * scale))),) * 2, alias_blur=(_DEFOCUS[i][1],) * 2, p=1.0
    ),
    "fog": lambda i, scale, size: A.RandomFog(fog_coef_range=(_FOG[i], _FOG[i]), alpha_coef=0.08, p=1.0),
    "brightness": lambda i, scale, size: A.HueSaturationValue(
        hue_shift_limit=0, sat_shift_limit=0, val_shift_limit=(_BRIGHTNESS[i] * 255.0,) * 2, p=1.0
    ),
    "contrast": lambda i, scale, size: A.Lambda(image=partial(_contrast, c=_CONTRAST[i]), p=1.0),
    "jpeg_compression": lambda i, scale, size: A.ImageCompression(quality_range=(_JPEG_QUALITY[i],) * 2, p=1.0),
    "pixelate": lambda i, scale, size: A.Downscale(
        scale_range=(_PIXELATE[i], _PIXELATE[i]),
        interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_NEAREST},
        p=1.0,
    ),
    "snow": lambda i, scale, size: A.RandomSnow(
        snow_point_range=(_SNOW[i], _SNOW[i]), brightness_coeff=2.5, method="bleach", p=1.0
    ),
    "spatter": lambda i, scale, size: _Drawn(partial(_spatter_field, size=size), partial(spatter, c=_SPATTER[i])),
}
CORRUPTIONS = tuple(_BUILDERS)


def resolve_names(names: str | Sequence[str]) -> list[str]:
    """``all`` (or a list containing it) -> every corruption; otherwise the names given, each checked."""
    items = [names] if isinstance(names, str) else [str(n) for n in names]
    if "all" in items:
        return list(CORRUPTIONS)
    unknown = [n for n in items if n not in CORRUPTIONS]
    if unknown or not items:
        raise ConfigError(
            f"corruptions.names={items}: unknown {unknown or 'empty list'}; known: {', '.join(CORRUPTIONS)}, or all."
        )
    return items


def check_severities(severities: Sequence[int]) -> list[int]:
    out = [int(s) for s in severities]
    if not out or any(s not in (0, *SEVERITIES) for s in out):
        raise ConfigError(f"corruptions.severities={list(severities)}: each must be 0 (clean) or 1-5.")
    return out


def condition_seed(seed: int, name: str, severity: int) -> int:
    """The seed of one (corruption, severity): independent of which other corruptions are evaluated."""
    return int(seed) + 1000 * CORRUPTIONS.index(name) + int(severity)


def corruption(name: str, severity: int, size: int, seed: int) -> Callable[..., Any]:
    """A seeded albumentations pipeline applying ``name`` at ``severity`` to ``size``-px images (0: identity)."""
    if name not in _BUILDERS:
        raise ConfigError(f"corruptions: unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}, or all.")
    pipeline = A.Compose([] if severity == 0 else [_BUILDERS[name](severity - 1, size / IMAGENET_C_SIZE, size)])
    pipeline.set_random_seed(seed)
    return pipeline


def corrupted_inputs(
    images: Sequence[np.ndarray],
    name: str,
    severity: int,
    size: int,
    preprocess: Callable[..., Any],
    seed: int,
    before_preprocessing: bool = False,
) -> np.ndarray:
    """Network inputs (N, size, size, 3) uint8 under one corruption; ``images`` are decoded, ROI-cropped."""
    corrupt = corruption(name, severity, size, seed)
    resize = A.Resize(size, size, interpolation=cv2.INTER_LINEAR)
    out = []
    for image in images:
        if before_preprocessing:
            image = preprocess(image=corrupt(image=resize(image=image)["image"])["image"])["image"]
        else:
            image = corrupt(image=preprocess(image=image)["image"])["image"]
        out.append(np.ascontiguousarray(image))
    return np.stack(out)
