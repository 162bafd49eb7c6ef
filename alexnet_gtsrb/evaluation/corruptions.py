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
import torch

from alexnet_gtsrb.errors import ConfigError
from alexnet_gtsrb.evaluation.pixel_model import logits_of

SEVERITIES = (1, 2, 3, 4, 5)
IMAGENET_C_SIZE = 224  # ImageNet-C's image size; blur radii below are given for it

# ImageNet-C constants: github.com/hendrycks/robustness, ImageNet-C/create_c/make_imagenet_c.py (functions of
# the same names), indexed by severity 1-5.
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


def motion_blur(img: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's motion blur: ``out(y, x) = sum_i k_i * img(y + dy_i, x + dx_i)`` with the tap offsets
    ``(dy_i, dx_i) = (ceil(i sin a - 1/2), ceil(i cos a - 1/2))`` along the angle ``a`` (degrees; 0 is the +x
    direction, y points down) and replicated borders (ImageMagick's default edge virtual pixels). Float result,
    the shape of ``img``."""
    h, w = img.shape[:2]
    rows, cols = np.arange(h), np.arange(w)
    sin, cos = math.sin(math.radians(angle)), math.cos(math.radians(angle))
    out = np.zeros(img.shape, np.float64)
    for i, weight in enumerate(motion_blur_kernel(radius, sigma)):
        dy, dx = math.ceil(i * sin - 0.5), math.ceil(i * cos - 0.5)
        out += weight * img[np.clip(rows + dy, 0, h - 1)][:, np.clip(cols + dx, 0, w - 1)]
    return out


class _MotionBlur(A.ImageOnlyTransform):
    """ImageNet-C motion blur: :func:`motion_blur` at an angle drawn uniformly from ``angle_range`` (degrees)."""

    def __init__(
        self,
        radius: int,
        sigma: float,
        angle_range: tuple[float, float] = (-_MOTION_ANGLE, _MOTION_ANGLE),
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.radius = int(radius)
        self.sigma = float(sigma)
        self.angle_range = (float(angle_range[0]), float(angle_range[1]))

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        return {"angle": float(self.random_generator.uniform(*self.angle_range))}

    def apply(self, img: np.ndarray, angle: float = 0.0, **params: Any) -> np.ndarray:
        out = motion_blur(img.astype(np.float64), self.radius, self.sigma, angle)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


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


class _Spatter(A.ImageOnlyTransform):
    """ImageNet-C spatter (:func:`spatter`): one standard-normal field per image on ImageNet-C's grid
    (``224 / size`` times the image's sides), drawn from the transform's seeded generator."""

    def __init__(self, severity: int, size: int, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.severity = int(severity)
        self.size = int(size)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        f = IMAGENET_C_SIZE / self.size
        return {"z": self.random_generator.standard_normal((max(1, round(h * f)), max(1, round(w * f))))}

    def apply(self, img: np.ndarray, z: np.ndarray, **params: Any) -> np.ndarray:
        return spatter(img, z, _SPATTER[self.severity - 1])


def _build(name: str, severity: int, size: int) -> A.BasicTransform:
    i = severity - 1
    scale = size / IMAGENET_C_SIZE
    if name == "gaussian_noise":
        return A.GaussNoise(std_range=(_GAUSS_STD[i], _GAUSS_STD[i]), p=1.0)
    if name == "motion_blur":
        radius, sigma = _MOTION[i]  # ImageMagick takes a real radius: its kernel width is 2 * ceil(radius) + 1
        return _MotionBlur(max(1, math.ceil(round(radius * scale, 6))), sigma * scale)
    if name == "defocus_blur":
        radius, alias = _DEFOCUS[i]
        r = max(1, int(round(radius * scale)))
        return A.Defocus(radius=(r, r), alias_blur=(alias, alias), p=1.0)
    if name == "fog":
        return A.RandomFog(fog_coef_range=(_FOG[i], _FOG[i]), alpha_coef=0.08, p=1.0)
    if name == "brightness":
        v = _BRIGHTNESS[i] * 255.0
        return A.HueSaturationValue(hue_shift_limit=0, sat_shift_limit=0, val_shift_limit=(v, v), p=1.0)
    if name == "contrast":
        return A.Lambda(image=partial(_contrast, c=_CONTRAST[i]), p=1.0)
    if name == "jpeg_compression":
        return A.ImageCompression(quality_range=(_JPEG_QUALITY[i], _JPEG_QUALITY[i]), p=1.0)
    if name == "pixelate":
        c = _PIXELATE[i]
        pair = {"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_NEAREST}
        return A.Downscale(scale_range=(c, c), interpolation_pair=pair, p=1.0)
    if name == "snow":
        return A.RandomSnow(snow_point_range=(_SNOW[i], _SNOW[i]), brightness_coeff=2.5, method="bleach", p=1.0)
    if name == "spatter":
        return _Spatter(severity, size)
    raise ConfigError(f"corruptions: unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}, or all.")


CORRUPTIONS = (
    "gaussian_noise",
    "motion_blur",
    "defocus_blur",
    "fog",
    "brightness",
    "contrast",
    "jpeg_compression",
    "pixelate",
    "snow",
    "spatter",
)


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
    ops = [] if severity == 0 else [_build(name, severity, size)]
    pipeline = A.Compose(ops)
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


def corruption_table(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    labels: np.ndarray,
    names: Sequence[str],
    severities: Sequence[int],
    size: int,
    preprocess: Callable[..., Any],
    seed: int = 0,
    batch_size: int = 128,
    device: str = "cpu",
    before_preprocessing: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (corruption, severity): correct count and accuracy on ``images`` under ``model`` (a
    PixelModel). Every (corruption, severity) draws from its own seed, so a row does not depend on the others."""
    y = torch.as_tensor(labels)
    rows = []
    for name in names:
        for severity in severities:
            inputs = corrupted_inputs(
                images, name, severity, size, preprocess, condition_seed(seed, name, severity), before_preprocessing
            )
            pred = logits_of(model, inputs, batch_size, device).argmax(dim=-1)
            correct = int((pred == y).sum())
            rows.append({"corruption": name, "severity": severity, "correct": correct, "accuracy": correct / len(y)})
            if progress is not None:
                progress(f"{name} severity {severity}: {correct / len(y):.4f}")
    return rows


def summarize(rows: list[dict[str, Any]], clean_accuracy: float) -> dict[str, Any]:
    """Mean corruption accuracy over severities >= 1 (per corruption and overall) and the relative drop."""
    per: dict[str, list[float]] = {}
    for r in rows:
        if r["severity"] > 0:
            per.setdefault(r["corruption"], []).append(r["accuracy"])
    per_mean = {name: float(np.mean(v)) for name, v in per.items()}
    mean = float(np.mean(list(per_mean.values()))) if per_mean else float("nan")
    drop = (clean_accuracy - mean) / clean_accuracy if clean_accuracy > 0 else float("nan")
    return {
        "clean_accuracy": clean_accuracy,
        "mean_corruption_accuracy": mean,
        "relative_drop": drop,
        "per_corruption": per_mean,
    }


def example_grid(
    image: np.ndarray,
    names: Sequence[str],
    size: int,
    preprocess: Callable[..., Any],
    seed: int = 0,
    before_preprocessing: bool = False,
) -> list[list[np.ndarray]]:
    """One image under every corruption (rows) and severity 0-5 (columns), as the network sees it."""
    cell = lambda name, s: corrupted_inputs(
        [image], name, s, size, preprocess, condition_seed(seed, name, s), before_preprocessing
    )[0]
    return [[cell(name, s) for s in (0, *SEVERITIES)] for name in names]
