"""The network as a function of pixels, and the test images as the camera gave them: robustness evaluations
perturb images *before* the model's normalisation, so attacks and Grad-CAM act on the network's input pixels in
[0, 1] through :class:`PixelModel`, which applies the checkpoint's mean/std itself."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from alexnet_gtsrb.data.dataset import GTSRBDataset


class PixelModel(nn.Module):
    """``logits = net((x - mean) / std)`` for float (B, 3, H, W) pixels in [0, 1].

    The same arithmetic as the model's own uint8 path (:func:`alexnet_gtsrb.data.transforms.normalize_uint8`,
    in 0-255 units), so ``PixelModel(m)(u / 255)`` and ``m(u)`` agree for a uint8 batch ``u``; gradients flow
    to the pixels.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.net = model.net
        hp = model.hparams
        self.mean255: torch.Tensor
        self.inv255: torch.Tensor
        self.register_buffer("mean255", torch.tensor(list(hp.mean), dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv255", 1.0 / (torch.tensor(list(hp.std), dtype=torch.float32).view(1, 3, 1, 1) * 255.0))
        self.channels_last = bool(hp.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x * 255.0 - self.mean255) * self.inv255
        if self.channels_last:
            y = y.contiguous(memory_format=torch.channels_last)
        out: torch.Tensor = self.net(y)
        return out.float()


def raw_test_images(dataset: GTSRBDataset, max_images: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """(decoded, ROI-cropped uint8 images at their own sizes, labels) of a dataset, in order, no transform.

    ``max_images`` keeps an evenly spaced subset (every class of a sorted test set stays represented).
    """
    n = len(dataset)
    indices = range(n) if max_images is None or max_images >= n else np.linspace(0, n - 1, max_images).round()
    saved, dataset.transform = dataset.transform, None
    try:
        items = [dataset.load(int(i)) for i in indices]
    finally:
        dataset.transform = saved
    images = [np.ascontiguousarray(img) for img, _ in items]
    labels = np.asarray([label for _, label in items], dtype=np.int64)
    return images, labels


def preprocess_all(images: Sequence[np.ndarray], transform: Callable[..., Any]) -> np.ndarray:
    """The checkpoint's evaluation pipeline applied to each image: (N, S, S, 3) uint8."""
    return np.stack([np.ascontiguousarray(transform(image=img)["image"]) for img in images])


def to_pixels(batch: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]."""
    t = torch.as_tensor(batch).to(device)
    return t.permute(0, 3, 1, 2).float().div(255.0).contiguous()


@torch.inference_mode()
def logits_of(model: nn.Module, images: np.ndarray, batch_size: int, device: str | torch.device) -> torch.Tensor:
    """Logits (N, classes), on the CPU, of preprocessed uint8 images (N, S, S, 3) under ``model`` (a PixelModel)."""
    out = [model(to_pixels(images[i : i + batch_size], device)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0)
