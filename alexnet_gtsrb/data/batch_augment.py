"""Random augmentation applied to whole batches after the transfer to the device.

:class:`PCANoise` is the paper preset's PCA colour noise (``augment.pca=dataset``), added to the float batch so
that shifts far below one grey level survive (in uint8 they would be rounded away). :class:`BatchAugment` is the
``gtsrb`` preset's random augmentation (``data.augment.on_device=true``). Why: per item, albumentations spends
most of its time in per-call overhead on 67 px images, CPU time taken from the training step on a 2-core machine
(docs/performance.md); here the same distributions, drawn per image, are a handful of batched tensor operations
on the training device, and the workers only read the cached pre-processing. Per image, as the per-item preset:

- with probability ``affine_p``: scale ``U(1 - scale, 1 + scale)``, rotation ``U(-rotate, rotate)`` degrees and
  translation ``U(-shift, shift)`` of the image size per axis, bilinear, edge pixels replicated;
- with probability 0.5: contrast factor ``1 + U(-contrast, contrast)`` and brightness offset
  ``255 * U(-brightness, brightness)`` (albumentations' RandomBrightnessContrast: ``x * alpha + beta``);
- with probability ``blur_noise_p``, one of (equally likely): a 3x3 Gaussian blur with sigma ``U(0.3, 1.0)``
  (reflected border) or Gaussian noise with standard deviation ``255 * U(0.02, 0.06)`` per pixel and channel.

Unlike per item, the affine runs on the resized (cached) image, not before the resize, and values are clipped to
[0, 255] once at the end, not after each step. The draws come from torch's generator on the batch's device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F


class PCANoise:
    """Krizhevsky et al. 2012, section 4.1, on a float batch: to every pixel of image ``b`` add
    ``[p1 p2 p3][a1 l1, a2 l2, a3 l3]^T`` with ``p_i``/``l_i`` the eigenvectors/eigenvalues of the training
    set's RGB covariance (pixels in [0, 1], :mod:`alexnet_gtsrb.data.pca`) and ``a_i ~ N(0, sigma)`` drawn once
    per image (sigma 0.1 in the paper); ``255 *`` that in the batch's 0-255 units. Not rounded, not clipped: the
    paper adds it to the network's (mean-subtracted) input, and GTSRB's second and third components shift pixels
    by well under one grey level.
    """

    def __init__(self, eigenvalues: Sequence[float], eigenvectors: Sequence[Sequence[float]], sigma: float = 0.1):
        self.eigenvalues = tuple(float(v) for v in eigenvalues)
        self.eigenvectors = tuple(tuple(float(v) for v in row) for row in eigenvectors)  # row i is p_i
        self.sigma = float(sigma)

    def draw(self, n: int, device: torch.device) -> torch.Tensor:
        """``(n, 3)`` draws ``a_i ~ N(0, sigma)``, one row per image."""
        return torch.randn(n, 3, device=device) * self.sigma

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """float ``(B, 3, H, W)`` in 0-255 units -> the same batch with one colour shift per image (a new tensor)."""
        alphas = self.draw(images.shape[0], images.device)
        vals = torch.tensor(self.eigenvalues, device=images.device, dtype=torch.float32)
        vecs = torch.tensor(self.eigenvectors, device=images.device, dtype=torch.float32)
        shift = 255.0 * (alphas.float() * vals) @ vecs  # 255 * sum_i a_i l_i p_i, one RGB row per image
        return images + shift.to(images.dtype).view(-1, 3, 1, 1)


class BatchAugment:
    """uint8 ``(B, H, W, 3)`` -> uint8 ``(B, H, W, 3)``: the ``gtsrb`` preset's random ops, drawn per image."""

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        p = dict(params or {})
        self.shift = float(p.get("shift", 0.1))
        self.scale = float(p.get("scale", 0.1))
        self.rotate = float(p.get("rotate", 10.0))
        self.affine_p = float(p.get("affine_p", 0.8))
        self.brightness = float(p.get("brightness", 0.2))
        self.contrast = float(p.get("contrast", 0.2))
        self.blur_noise_p = float(p.get("blur_noise_p", 0.3))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.floats(images).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    @torch.no_grad()
    def floats(self, images: torch.Tensor) -> torch.Tensor:
        """The augmented batch as float32 ``(B, 3, H, W)`` in [0, 255] (not rounded): what the DataModule
        normalises, without a round trip through uint8."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected a (B, H, W, 3) uint8 batch, got {tuple(images.shape)} {images.dtype}")
        x = images.permute(0, 3, 1, 2).float().contiguous()  # grid_sample is faster on contiguous NCHW
        if x.shape[0] == 0:
            return x
        return self._blur_or_noise(self._brightness_contrast(self._affine(x))).clamp_(0, 255)

    def _coin(self, x: torch.Tensor, p: float) -> torch.Tensor:
        """Per image: True where an op with probability ``p`` applies."""
        return torch.rand(x.shape[0], device=x.device) < p

    def _uniform(self, n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
        return torch.rand(n, device=device) * (high - low) + low

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        """Every image goes through one grid_sample; images the coin skips get the identity, which bilinear
        sampling at the pixel centres reproduces exactly (cheaper than gathering and scattering a subset)."""
        n, dev = x.shape[0], x.device
        on = self._coin(x, self.affine_p).float()
        angle = self._uniform(n, -self.rotate, self.rotate, dev) * (math.pi / 180.0) * on
        scale = 1.0 + self._uniform(n, -self.scale, self.scale, dev) * on
        # translation in grid_sample's [-1, 1] coordinates: a fraction f of the size is 2f
        tx, ty = (self._uniform(n, -2.0 * self.shift, 2.0 * self.shift, dev) * on for _ in range(2))
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        h, w = x.shape[-2:]
        # pixel centres in [-1, 1] (align_corners=False); the grid built by broadcasting, not affine_grid's bmm
        gy = ((torch.arange(h, device=dev, dtype=x.dtype) * 2 + 1) / h - 1).view(1, h, 1)
        gx = ((torch.arange(w, device=dev, dtype=x.dtype) * 2 + 1) / w - 1).view(1, 1, w)
        v = lambda t: t.view(n, 1, 1)
        sx = v(cos) * gx - v(sin) * gy + v(tx)
        sy = v(sin) * gx + v(cos) * gy + v(ty)
        grid = torch.empty(n, h, w, 2, device=dev, dtype=x.dtype)  # where each output pixel samples the input
        grid[..., 0], grid[..., 1] = sx, sy
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _brightness_contrast(self, x: torch.Tensor) -> torch.Tensor:
        if self.brightness == 0 and self.contrast == 0:
            return x
        n, dev = x.shape[0], x.device
        on = self._coin(x, 0.5).float()  # the per-item preset's fixed p (transforms.py), as the sigmas and stds below
        alpha = 1.0 + self._uniform(n, -self.contrast, self.contrast, dev) * on
        beta = 255.0 * self._uniform(n, -self.brightness, self.brightness, dev) * on
        return torch.addcmul(beta.view(n, 1, 1, 1), x, alpha.view(n, 1, 1, 1))

    def _blur_or_noise(self, x: torch.Tensor) -> torch.Tensor:
        idx = self._coin(x, self.blur_noise_p).nonzero().squeeze(1)
        if idx.numel() == 0:
            return x
        blur = torch.rand(idx.numel(), device=x.device) < 0.5
        b_idx, n_idx = idx[blur], idx[~blur]
        if b_idx.numel():
            x[b_idx] = _gaussian_blur3(x[b_idx], self._uniform(b_idx.numel(), 0.3, 1.0, x.device))
        if n_idx.numel():
            std = 255.0 * self._uniform(n_idx.numel(), 0.02, 0.06, x.device)
            sub = x[n_idx].contiguous()  # torch's normal_ is many times slower on a strided tensor
            x[n_idx] = sub + torch.randn(sub.shape, device=x.device) * std.view(-1, 1, 1, 1)
        return x


def _gaussian_blur3(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A separable 3x3 Gaussian blur with one sigma per image and reflected border (OpenCV's default), as
    weighted sums of shifted copies (faster here than a depthwise convolution with per-image kernels)."""
    n = x.shape[0]
    side = torch.exp(-1.0 / (2.0 * sigma**2))  # weight of each neighbour; the centre weighs 1
    side = (side / (1.0 + 2.0 * side)).view(n, 1, 1, 1)
    centre = 1.0 - 2.0 * side
    p = F.pad(x, (1, 1, 0, 0), mode="reflect")
    x = centre * x + side * (p[..., :, :-2] + p[..., :, 2:])
    p = F.pad(x, (0, 0, 1, 1), mode="reflect")
    return centre * x + side * (p[..., :-2, :] + p[..., 2:, :])
