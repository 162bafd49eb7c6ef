"""Motion blur and spatter against ImageNet-C's own code (github.com/hendrycks/robustness,
ImageNet-C/create_c/make_imagenet_c.py), transcribed here as the reference.

The constants below are copied from that file, not from the module under test: ``motion_blur``'s
``c = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)]`` with ``angle=np.random.uniform(-45, 45)``, and
``spatter``'s ``c`` list. ImageNet-C's motion blur is ImageMagick's ``MotionBlurImage``; its numpy transcription
here follows bethgelab/imagecorruptions (``imagecorruptions/corruptions.py``: ``getMotionBlurKernel``, ``shift``,
``_motion_blur``), which reproduces ImageMagick's kernel and tap offsets.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from alexnet_gtsrb.evaluation import corruptions

MOTION_C = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)]  # make_imagenet_c.py, motion_blur
SPATTER_C = [  # make_imagenet_c.py, spatter
    (0.65, 0.3, 4, 0.69, 0.6, 0),
    (0.65, 0.3, 3, 0.68, 0.6, 0),
    (0.65, 0.3, 2, 0.68, 0.5, 0),
    (0.65, 0.3, 1, 0.65, 1.5, 1),
    (0.67, 0.4, 1, 0.65, 1.5, 1),
]


# -- references transcribed from ImageNet-C / imagecorruptions -------------------------------------------------
def _ref_motion_kernel(width: int, sigma: float) -> np.ndarray:  # getMotionBlurKernel
    k = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)
    return k / np.sum(k)


def _ref_shift(image: np.ndarray, dx: int, dy: int) -> np.ndarray:  # shift
    if dx < 0:
        shifted = np.roll(image, shift=image.shape[1] + dx, axis=1)
        shifted[:, dx:] = shifted[:, dx - 1 : dx]
    elif dx > 0:
        shifted = np.roll(image, shift=dx, axis=1)
        shifted[:, :dx] = shifted[:, dx : dx + 1]
    else:
        shifted = image
    if dy < 0:
        shifted = np.roll(shifted, shift=image.shape[0] + dy, axis=0)
        shifted[dy:, :] = shifted[dy - 1 : dy, :]
    elif dy > 0:
        shifted = np.roll(shifted, shift=dy, axis=0)
        shifted[:dy, :] = shifted[dy : dy + 1, :]
    return shifted


def _ref_motion_blur(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:  # _motion_blur
    width = radius * 2 + 1  # getOptimalKernelWidth1D
    kernel = _ref_motion_kernel(width, sigma)
    point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    hypot = math.hypot(point[0], point[1])
    blurred = np.zeros_like(x, dtype=np.float32)
    for i in range(width):
        dy = -math.ceil(((i * point[0]) / hypot) - 0.5)
        dx = -math.ceil(((i * point[1]) / hypot) - 0.5)
        if np.abs(dy) >= x.shape[0] or np.abs(dx) >= x.shape[1]:
            break
        blurred = blurred + kernel[i] * _ref_shift(x, dx, dy)
    return blurred


def _ref_spatter(x_uint8: np.ndarray, liquid_noise: np.ndarray, c) -> np.ndarray:  # spatter
    """ImageNet-C's spatter with its np.random.normal draw passed in; skimage.filters.gaussian is scipy's
    gaussian_filter with skimage's defaults (mode 'nearest', truncate 4). Returns floats in [0, 255]."""
    x = np.array(x_uint8, dtype=np.float32) / 255.0
    liquid_layer = gaussian_filter(liquid_noise, sigma=c[2], mode="nearest", truncate=4.0)
    liquid_layer[liquid_layer < c[3]] = 0
    if c[5] == 0:
        liquid_layer = (liquid_layer * 255).astype(np.uint8)
        dist = 255 - cv2.Canny(liquid_layer, 50, 150)
        dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
        dist = cv2.equalizeHist(dist)
        ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
        dist = cv2.filter2D(dist, cv2.CV_8U, ker)
        dist = cv2.blur(dist, (3, 3)).astype(np.float32)
        m = cv2.cvtColor(liquid_layer * dist, cv2.COLOR_GRAY2BGRA)
        m /= np.max(m, axis=(0, 1))
        m *= c[4]
        ones = np.ones_like(m[..., :1])
        color = np.concatenate((175 / 255.0 * ones, 238 / 255.0 * ones, 238 / 255.0 * ones), axis=2)
        color = cv2.cvtColor(color, cv2.COLOR_BGR2BGRA)
        x = cv2.cvtColor(x, cv2.COLOR_BGR2BGRA)
        return cv2.cvtColor(np.clip(x + m * color, 0, 1), cv2.COLOR_BGRA2BGR) * 255
    m = np.where(liquid_layer > c[3], 1, 0)
    m = gaussian_filter(m.astype(np.float32), sigma=c[4], mode="nearest", truncate=4.0)
    m[m < 0.8] = 0
    ones = np.ones_like(x[..., :1])
    color = np.concatenate((63 / 255.0 * ones, 42 / 255.0 * ones, 20 / 255.0 * ones), axis=2)
    color *= m[..., np.newaxis]
    x *= 1 - m[..., np.newaxis]
    return np.clip(x + color, 0, 1) * 255


def _photo(size: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour image (blurred noise), so that blurs and composites have something to act on."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((size, size, 3)).astype(np.float32), (0, 0), size / 20)
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).round().astype(np.uint8)


# -- motion blur ------------------------------------------------------------------------------------------------
def _impulse_response(radius: int, sigma: float, angle: float, window: int) -> np.ndarray:
    """255 x ImageMagick's kernel for a single bright pixel at the window's centre (independent of the module):
    the output at p takes tap i from p + offset_i, so the impulse appears at centre - offset_i."""
    out = np.zeros((2 * window + 1, 2 * window + 1))
    weights = np.exp(-(np.arange(2 * radius + 1) ** 2) / (2 * sigma**2))
    weights /= weights.sum()
    a = math.radians(angle)
    for i, w in enumerate(weights):
        dy, dx = math.ceil(i * math.sin(a) - 0.5), math.ceil(i * math.cos(a) - 0.5)
        out[window - dy, window - dx] += 255 * w
    return out


@pytest.mark.parametrize("size", [224, 112, 67])
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_motion_blur_of_an_impulse_is_imagenet_c_kernel_at_an_angle_within_45_degrees(size, severity):
    """A single bright pixel comes out as ImageNet-C's kernel: radius and sigma of the severity scaled by
    size/224 (ImageMagick's width 2 * ceil(radius) + 1), one-sided Gaussian weights along a direction within
    +-45 degrees of the x axis. For each seed some angle in [-45, 45] reproduces the output to +-1 grey level."""
    radius_224, sigma_224 = MOTION_C[severity - 1]
    radius = math.ceil(round(radius_224 * size / 224, 6))
    sigma = sigma_224 * size / 224
    img = np.zeros((size, size, 3), np.uint8)
    c = size // 2
    img[c, c] = 255
    window = 2 * radius + 2
    candidates = np.arange(-45.0, 45.0001, 0.05)
    refs = [_impulse_response(radius, sigma, a, window) for a in candidates]
    found = []
    for seed in range(6):
        out = corruptions.corruption("motion_blur", severity, size, seed)(image=img)["image"]
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
        local = out[c - window : c + window + 1, c - window : c + window + 1, 0].astype(float)
        assert local.sum() == pytest.approx(out[..., 0].astype(float).sum())  # nothing outside the window
        errors = [np.abs(local - ref).max() for ref in refs]
        best = int(np.argmin(errors))
        assert errors[best] <= 1.0, f"seed {seed}: no angle in [-45, 45] gives this output (best {errors[best]:.1f})"
        found.append(candidates[best])
    assert max(found) - min(found) > 5, f"the angle does not vary with the seed: {found}"


@pytest.mark.parametrize("angle", [-45.0, -31.7, -8.0, 0.0, 12.5, 44.0])
def test_motion_blur_equals_the_numpy_transcription_of_imagemagick(angle):
    """On a photo-like image, with replicated borders: the module's motion blur at a fixed angle equals
    imagecorruptions' _motion_blur (transcribed above) to rounding."""
    img = _photo(67, seed=1)
    radius, sigma = 4, 2.4
    out = corruptions.motion_blur(img, angle, radius, sigma)
    ref = _ref_motion_blur(img.astype(np.float32), radius, sigma, angle)
    assert np.abs(out.astype(float) - ref).max() <= 0.5 + 1e-3


# -- spatter ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_spatter_at_224_px_is_imagenet_c_spatter(severity):
    """At ImageNet-C's size the corruption is ImageNet-C's spatter of the same noise field: ``np.random.normal``
    with the severity's mean and std is ``mean + std * z``, z drawn from the pipeline's seeded generator
    (albumentations seeds each transform with ``np.random.default_rng(seed)``)."""
    c = SPATTER_C[severity - 1]
    img = _photo(224, seed=severity)
    for seed in (0, 1):
        out = corruptions.corruption("spatter", severity, 224, seed)(image=img)["image"].astype(float)
        z = np.random.default_rng(seed).standard_normal((224, 224))
        ref = _ref_spatter(img, c[0] + c[1] * z, c)
        assert np.abs(out - img).mean() > 0.2, "the corruption left the image (nearly) unchanged"
        diff = np.abs(out - ref)
        assert (diff <= 1.0).mean() >= 0.999 and diff.mean() < 0.1, (severity, seed, diff.max(), diff.mean())


@pytest.mark.parametrize("severity", [1, 3, 4, 5])
def test_spatter_covers_as_much_of_a_small_image_as_imagenet_c_of_its_224_px_image(severity):
    """Scale: on a 67 px image the corruption changes the image as much on average as ImageNet-C's spatter
    changes a 224 px image (same field of view). Blurring 67 px noise with the sigma scaled by 67/224 instead
    would not: the blurred noise is then ~3x rougher and crosses the threshold 2-8x as often."""
    c = SPATTER_C[severity - 1]
    grey = np.full((224, 224, 3), 128, np.uint8)
    ref = [
        np.abs(_ref_spatter(grey, np.random.default_rng(100 + s).normal(c[0], c[1], (224, 224)), c) - 128).mean()
        for s in range(12)
    ]
    small = grey[:67, :67]
    ours = [
        np.abs(corruptions.corruption("spatter", severity, 67, s)(image=small)["image"].astype(float) - 128).mean()
        for s in range(12)
    ]
    assert np.mean(ours) == pytest.approx(np.mean(ref), rel=0.25), (np.mean(ours), np.mean(ref))
