"""Grad-CAM (Selvaraju et al. 2017) on the last convolution, with captum's ``LayerGradCam``, and its overlay.

The map explains the predicted class (or a given one): the last conv layer's activations weighted by the
spatially averaged gradient of that class's logit, ReLU'd, upsampled to the input and scaled to [0, 1] per
image. The overlay blends a colour map of it onto the image the network saw.
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from alexnet_gtsrb.evaluation.pixels import to_pixels


def last_conv(net: nn.Module) -> nn.Conv2d:
    """The last ``nn.Conv2d`` of a network (conv5 in every AlexNet variant)."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("the network has no Conv2d layer to explain")
    return convs[-1]


def gradcam(
    model: nn.Module, inputs: np.ndarray, target: torch.Tensor | None = None, device: str = "cpu"
) -> np.ndarray:
    """Grad-CAM maps (N, S, S) in [0, 1] for uint8 network inputs (N, S, S, 3) under ``model`` (a PixelModel);
    ``target`` defaults to the predicted classes."""
    x = to_pixels(inputs, device)
    with torch.enable_grad():
        if target is None:
            with torch.no_grad():
                target = model(x).argmax(dim=-1)
        cam = LayerGradCam(model, last_conv(model)).attribute(x, target=target.to(device), relu_attributions=True)
        cam = LayerAttribution.interpolate(cam.detach(), (x.shape[2], x.shape[3]), interpolate_mode="bilinear")
    maps = cam[:, 0].clamp_min(0)
    peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    out: np.ndarray = (maps / peak).cpu().numpy()
    return out


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 HxWx3: ``image`` blended with the jet colour map of ``heat`` (HxW in [0, 1])."""
    import matplotlib

    colours = matplotlib.colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255.0
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(blended, 0, 255).round().astype(np.uint8)
