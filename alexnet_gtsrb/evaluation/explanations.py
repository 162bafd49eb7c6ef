"""Grad-CAM (Selvaraju et al. 2017) on the rectified last feature maps, with captum's ``LayerGradCam``, and its
overlay.

Grad-CAM weights the last convolutional layer's *rectified* feature maps ``A^k`` (conv5 after its ReLU, the
maps pool5 reduces) by the spatially averaged gradient of the class logit, ``w_k = mean_ij d y^c / d A^k_ij``,
and keeps ``ReLU(sum_k w_k A^k)``. The hooked module is therefore the ReLU that follows the last ``Conv2d``,
not the convolution (its output is the pre-activation, and in ``alexnet_bn``/``seed`` a BatchNorm follows the
ReLU). captum stores the hooked module's own output and hands a clone downstream, so an in-place ReLU is
safe. In :class:`~alexnet_gtsrb.models.towers.AlexNetTowers` the 256 maps are split over the two towers
(128 + 128, each tower's ``relu5``): the channel sum runs over both, then the ReLU. The map is upsampled
bilinearly to the input and scaled to [0, 1] per image. The overlay blends a colour map of it onto the image
the network saw.
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from alexnet_gtsrb.evaluation.pixel_model import to_pixels
from alexnet_gtsrb.models.towers import AlexNetTowers

#: What the maps explain, for reports.
LAYER_DESCRIPTION = "rectified conv5 maps (the ReLU after the last Conv2d, before pool5)"


def rectified_last_maps(net: nn.Module) -> list[nn.Module]:
    """The module(s) whose outputs are Grad-CAM's ``A^k`` (see above): each tower's ``relu5``, or the ReLU after
    the last ``Conv2d`` (conv5 in every AlexNet variant) in its ``nn.Sequential``."""
    for module in net.modules():
        if isinstance(module, AlexNetTowers):
            return module.rectified_conv5()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("the network has no Conv2d layer to explain")
    for module in net.modules():
        children = list(module.children()) if isinstance(module, nn.Sequential) else []
        for i, child in enumerate(children):
            if child is convs[-1]:
                after = children[i + 1] if i + 1 < len(children) else None
                if not isinstance(after, nn.ReLU):
                    raise ValueError(f"the last Conv2d is followed by {type(after).__name__}, not by a ReLU")
                return [after]
    raise ValueError("the last Conv2d is not inside an nn.Sequential: its ReLU cannot be found")


def gradcam(model: nn.Module, inputs: np.ndarray, target: torch.Tensor, device: str = "cpu") -> np.ndarray:
    """Grad-CAM maps (N, S, S) in [0, 1] of the classes ``target`` for uint8 network inputs (N, S, S, 3) under
    ``model`` (a PixelModel)."""
    x = to_pixels(inputs, device)
    target = target.to(device)
    with torch.enable_grad():
        # Per layer: sum_k w_k A^k over that layer's channels (no ReLU yet: the towers' two sums add first).
        parts = [
            LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=False).detach()
            for layer in rectified_last_maps(model)
        ]
        cam = torch.relu(torch.stack(parts).sum(dim=0))
        cam = LayerAttribution.interpolate(cam, (x.shape[2], x.shape[3]), interpolate_mode="bilinear")
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
