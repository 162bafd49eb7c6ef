"""One track's appearance (paint, lighting, scene, camera) and its frames as a camera would see them. Every random
draw comes from the generator passed in, in a fixed order, so output is deterministic per seed."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from alexnet_gtsrb.data.synthetic.designs import Color, draw_sign

REDUCED_SIDE = 72  # px, the template once shrunk per track (>= the largest sign, so frames resize cheaply)
BACKGROUND_SIDE = 96  # px, the per-track scene
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 30, 90  # px
MIN_SIGN_SIDE, MAX_SIGN_SIDE = 20, 70  # px
#: One rendered frame: the uint8 RGB image and the sign's bounding box (x1, y1, x2, y2), inclusive.
Frame = tuple[np.ndarray, tuple[int, int, int, int]]


def _palette(rng: np.random.Generator) -> dict[str, Color]:
    """Paint colours of one physical sign: hue jitter plus fading towards grey (sun-bleached signs)."""
    normal = rng.normal
    white = rng.uniform(205, 250)
    raw = {
        "red": (200 + normal(0, 18), 28 + normal(0, 12), 38 + normal(0, 12)),
        "blue": (25 + normal(0, 10), 80 + normal(0, 18), 175 + normal(0, 20)),
        "white": (white + normal(0, 5), white + normal(0, 5), white + normal(0, 5)),
        "black": (rng.uniform(10, 45),) * 3,
        "grey": (rng.uniform(95, 150),) * 3,
        "yellow": (238 + normal(0, 10), 190 + normal(0, 18), 25 + normal(0, 12)),
        "green": (30 + normal(0, 10), 170 + normal(0, 18), 70 + normal(0, 12)),
    }
    fade = rng.uniform(0.0, 0.3) ** 1.5
    faded = lambda v: int(min(255.0, max(0.0, v * (1 - fade) + 150 * fade)))
    return {role: (faded(r), faded(g), faded(b)) for role, (r, g, b) in raw.items()}


def _template(class_id: int, rng: np.random.Generator) -> np.ndarray:
    """One physical sign as a premultiplied float32 RGBA template, REDUCED_SIDE square, with a lighting gradient."""
    drawn = draw_sign(class_id, _palette(rng))
    rgba = np.asarray(cv2.resize(drawn, (REDUCED_SIDE, REDUCED_SIDE), interpolation=cv2.INTER_AREA), dtype=np.float32)
    ramp = np.linspace(-0.5, 0.5, REDUCED_SIDE, dtype=np.float32)
    light_x, light_y = rng.uniform(-0.3, 0.3, 2)
    rgba[..., :3] *= (1.0 + light_x * ramp[None, :] + light_y * ramp[:, None])[..., None]
    rgba[..., 3] *= 1.0 / 255.0
    return rgba


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A muted scene colour (sky, foliage, buildings, tarmac)."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0, 140), rng.uniform(30, 230)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _background(rng: np.random.Generator) -> np.ndarray:
    """One track's scene behind the sign: a colour gradient, smooth blotches, or clutter (float32 RGB)."""
    side = BACKGROUND_SIDE
    kind = rng.integers(3)
    ramp = np.linspace(0.0, 1.0, side, dtype=np.float32)
    direction = rng.uniform(0, 2 * math.pi)
    weight = math.cos(direction) * ramp[None, :] + math.sin(direction) * ramp[:, None]
    weight = (weight - weight.min()) / (weight.max() - weight.min() + 1e-6)
    start_colour, end_colour = _random_colour(rng), _random_colour(rng)
    scene = start_colour * (1 - weight[..., None]) + end_colour * weight[..., None]
    if kind == 1:  # smooth blotches (foliage / clouds)
        cells = int(rng.integers(3, 8))
        coarse = np.stack([_random_colour(rng) for _ in range(cells * cells)]).reshape(cells, cells, 3)
        scene = 0.3 * scene + 0.7 * cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)
    elif kind == 2:  # clutter: buildings, poles, other objects
        for _ in range(int(rng.integers(4, 12))):
            colour = tuple(float(v) for v in _random_colour(rng))
            x0, y0 = (int(v) for v in rng.integers(0, side, 2))
            shape = rng.integers(3)
            if shape == 1:
                cv2.circle(scene, (x0, y0), int(rng.integers(4, 25)), colour, -1, cv2.LINE_AA)
                continue
            x1, y1 = (int(v) for v in rng.integers(0, side, 2))
            if shape == 0:
                cv2.rectangle(scene, (x0, y0), (x1, y1), colour, -1)
            else:
                cv2.line(scene, (x0, y0), (x1, y1), colour, int(rng.integers(1, 6)), cv2.LINE_AA)
        scene = cv2.GaussianBlur(scene, (0, 0), rng.uniform(0.5, 2.0))
    if rng.random() < 0.4:  # the sign's pole
        colour = tuple(float(v) for v in rng.uniform(90, 170) * np.ones(3))
        x = int(side // 2 + rng.integers(-4, 5))
        cv2.rectangle(scene, (x - 3, side // 2), (x + 3, side), colour, -1)
    return np.clip(scene, 0, 255).astype(np.float32)


def render_track(rng: np.random.Generator, class_id: int, sizes: Sequence[float]) -> list[Frame]:
    """Frames of one physical sign at the given sign sizes (px). Its look, scene and camera are drawn once per
    track and jittered per frame, so frames of one track are near-duplicates, as in the real data."""
    template, scene = _template(class_id, rng), _background(rng)
    ratio_w, ratio_h = rng.uniform(1.12, 1.35, 2)  # image side / sign side
    rotation = rng.uniform(-8, 8)
    squash = rng.uniform(0.82, 1.0)  # viewing angle: sign narrower than tall
    position, scene_centre = rng.uniform(-0.7, 0.7, 2), rng.uniform(0.35, 0.65, 2)
    gain = math.exp(rng.uniform(math.log(0.45), math.log(1.35)))
    contrast, bias, blur, noise = (rng.uniform(*bounds) for bounds in ((0.6, 1.15), (-15, 15), (0, 1), (1, 8)))
    frames = []
    for size in sizes:
        side = max(4, round(size))
        width = min(MAX_IMAGE_SIDE, max(MIN_IMAGE_SIDE, round(side * ratio_w)))
        height = min(MAX_IMAGE_SIDE, max(MIN_IMAGE_SIDE, round(side * ratio_h)))
        # background: the part of the scene around the sign, zooming in as the sign approaches
        frac = min(1.0, max(0.35, 0.75 * sizes[0] / size))
        crop_w = max(8, round(BACKGROUND_SIDE * frac * width / max(width, height)))
        crop_h = max(8, round(BACKGROUND_SIDE * frac * height / max(width, height)))
        x0 = min(BACKGROUND_SIDE - crop_w, max(0, round(scene_centre[0] * BACKGROUND_SIDE - crop_w / 2)))
        y0 = min(BACKGROUND_SIDE - crop_h, max(0, round(scene_centre[1] * BACKGROUND_SIDE - crop_h / 2)))
        img = cv2.resize(scene[y0 : y0 + crop_h, x0 : x0 + crop_w], (width, height), interpolation=cv2.INTER_LINEAR)
        # sign: shrink the template, then rotate, squash and place it
        small = cv2.resize(template, (side, side), interpolation=cv2.INTER_AREA)
        angle = math.radians(rotation + rng.uniform(-2, 2))
        cos_a, sin_a = math.cos(angle), math.sin(angle)
        linear = np.array([[cos_a * squash, -sin_a], [sin_a * squash, cos_a]])
        extent_x, extent_y = side * (squash * abs(cos_a) + abs(sin_a)), side * (squash * abs(sin_a) + abs(cos_a))
        frame_position = np.clip(position + rng.uniform(-0.15, 0.15, 2), -1, 1)
        centre_x = (width - 1) / 2 + frame_position[0] * max(0.0, (width - extent_x) / 2) * 0.9
        centre_y = (height - 1) / 2 + frame_position[1] * max(0.0, (height - extent_y) / 2) * 0.9
        template_centre = np.array([[(side - 1) / 2], [(side - 1) / 2]])
        affine = np.hstack([linear, np.array([[centre_x], [centre_y]]) - linear @ template_centre])
        warped = cv2.warpAffine(small, affine, (width, height))  # bilinear, transparent outside
        alpha = warped[..., 3:4]
        img = warped[..., :3] + img * (1.0 - alpha)
        # camera: exposure, contrast, blur and sensor noise, each jittered per frame
        img = img * (gain * rng.uniform(0.93, 1.07))
        mean = float(img.mean())
        img = (img - mean) * (contrast * rng.uniform(0.95, 1.05)) + mean + bias
        if (sigma := blur + rng.uniform(-0.2, 0.4)) > 0.3:
            img = cv2.GaussianBlur(img, (0, 0), sigma)
        img = np.clip(np.rint(img + rng.normal(0.0, noise, img.shape).astype(np.float32)), 0, 255).astype(np.uint8)
        ys, xs = np.nonzero(alpha[..., 0] > 0.5)
        frames.append((img, (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))))
    return frames
