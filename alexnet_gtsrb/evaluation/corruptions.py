"""Common corruptions at five severities, ImageNet-C style (Hendrycks & Dietterich 2019), built from albumentations.

Each corruption is an albumentations transform whose parameters follow ImageNet-C where albumentations has the
same operation (noise, defocus, motion blur, brightness, JPEG, pixelation, spatter) and are this project's
choice where it has its own (fog, snow). Spatial parameters given for ImageNet-C's 224 px images (blur radii)
are scaled by ``size / 224``. Contrast is written here: albumentations' contrast scales around zero, ImageNet-C
blends towards the per-channel mean.

Where a corruption hits: by default the network's input image, after the checkpoint's own preprocessing (CLAHE,
resize), as ImageNet-C corrupts the 224 px crops its networks see; severity 0 is then exactly the clean
evaluation. ``before_preprocessing=True`` corrupts the decoded image (resized to the network's size first) and
runs the preprocessing afterwards, as a camera would; a preprocessing step that undoes part of a corruption
(CLAHE against low contrast or fog) is then credited to the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from alexnet_gtsrb.errors import ConfigError
from alexnet_gtsrb.evaluation.pixels import logits_of

SEVERITIES = (1, 2, 3, 4, 5)
IMAGENET_C_SIZE = 224  # ImageNet-C's image size; blur radii below are given for it

# ImageNet-C constants: github.com/hendrycks/robustness, ImageNet-C/create_c/make_imagenet_c.py (functions of
# the same names), indexed by severity 1-5.
_GAUSS_STD = (0.08, 0.12, 0.18, 0.26, 0.38)  # gaussian_noise: std in [0, 1] units
_DEFOCUS = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))  # defocus_blur: (disk radius, alias blur)
_MOTION_RADIUS = (10, 15, 15, 15, 20)  # motion_blur: ImageMagick radius (its sigma and its +-45 degree angle have
# no albumentations twin: the kernel length follows the radius, the direction is uniform over 360 degrees)
_BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # brightness: added to HSV value in [0, 1]
_CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)  # contrast: (x - channel mean) * c + channel mean
_JPEG_QUALITY = (25, 18, 15, 10, 7)  # jpeg_compression
_PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)  # pixelate: box down- and up-sampling factor
_SPATTER = (  # spatter: (mean, std, gauss sigma, cutout threshold, intensity, mode)
    (0.65, 0.3, 4, 0.69, 0.6, "rain"),
    (0.65, 0.3, 3, 0.68, 0.6, "rain"),
    (0.65, 0.3, 2, 0.68, 0.5, "rain"),
    (0.65, 0.3, 1, 0.65, 1.0, "mud"),  # mud: ImageNet-C's fifth value here (1.5) is a mask blur sigma,
    (0.67, 0.4, 1, 0.65, 1.0, "mud"),  # not an intensity; albumentations caps intensity at 1
)
# This project's severities (albumentations' own parameterisation, no ImageNet-C twin):
_FOG = (0.2, 0.35, 0.5, 0.65, 0.8)  # RandomFog fog_coef
_SNOW = (0.1, 0.2, 0.3, 0.4, 0.5)  # RandomSnow snow_point (fraction of pixels whitened)


class _Contrast(A.ImageOnlyTransform):
    """ImageNet-C contrast: blend every channel towards its mean by factor ``c``."""

    def __init__(self, c: float, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.c = float(c)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        x = img.astype(np.float32)
        means = x.mean(axis=(0, 1), keepdims=True)
        return np.clip((x - means) * self.c + means, 0, 255).round().astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("c",)


def _odd(x: float, minimum: int = 3) -> int:
    k = max(minimum, int(round(x)))
    return k if k % 2 else k + 1


def _build(name: str, severity: int, size: int) -> A.BasicTransform:
    i = severity - 1
    scale = size / IMAGENET_C_SIZE
    if name == "gaussian_noise":
        return A.GaussNoise(std_range=(_GAUSS_STD[i], _GAUSS_STD[i]), p=1.0)
    if name == "motion_blur":
        k = _odd(_MOTION_RADIUS[i] * scale)
        return A.MotionBlur(blur_limit=(k, k), angle_range=(0, 360), allow_shifted=False, p=1.0)
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
        return _Contrast(_CONTRAST[i])
    if name == "jpeg_compression":
        return A.ImageCompression(quality_range=(_JPEG_QUALITY[i], _JPEG_QUALITY[i]), p=1.0)
    if name == "pixelate":
        c = _PIXELATE[i]
        pair = {"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_NEAREST}
        return A.Downscale(scale_range=(c, c), interpolation_pair=pair, p=1.0)
    if name == "snow":
        return A.RandomSnow(snow_point_range=(_SNOW[i], _SNOW[i]), brightness_coeff=2.5, method="bleach", p=1.0)
    if name == "spatter":
        mean, std, sigma, cutout, intensity, mode = _SPATTER[i]
        return A.Spatter(
            mean=(mean, mean),
            std=(std, std),
            gauss_sigma=(sigma, sigma),
            cutout_threshold=(cutout, cutout),
            intensity=(intensity, intensity),
            mode=mode,
            p=1.0,
        )
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
    if before_preprocessing:
        resize = A.Resize(size, size, interpolation=cv2.INTER_LINEAR)
        steps = [lambda im: resize(image=im)["image"], lambda im: corrupt(image=im)["image"]]
        steps.append(lambda im: preprocess(image=im)["image"])
    else:
        steps = [lambda im: preprocess(image=im)["image"], lambda im: corrupt(image=im)["image"]]
    out = []
    for image in images:
        for step in steps:
            image = step(image)
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
    return [
        [
            corrupted_inputs([image], name, s, size, preprocess, condition_seed(seed, name, s), before_preprocessing)[0]
            for s in (0, *SEVERITIES)
        ]
        for name in names
    ]
