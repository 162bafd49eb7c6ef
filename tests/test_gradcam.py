"""Grad-CAM explains the rectified last feature maps, and equals Grad-CAM written out here (Selvaraju et al. 2017).

The reference below does not use the project's layer choice: the index of conv5's ReLU in each variant's
``features`` is transcribed from the layouts (``models/alexnet.py``: paper and ``alexnet_bn`` conv5 at 18, its
ReLU at 19, BatchNorm at 20 in ``alexnet_bn``; ``seed`` conv5 at 18, ReLU 19, BatchNorm 20; torchvision conv5 at
10, ReLU 11), the forward pass is split there, and Grad-CAM is computed from its definition:
``A`` = the rectified maps, ``w_k`` = spatial mean of d logit_c / d A_k, map = ReLU(sum_k w_k A_k), upsampled
bilinearly to the input and divided by its maximum.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from alexnet_gtsrb.evaluation.explanations import gradcam, rectified_last_maps
from alexnet_gtsrb.evaluation.pixel_model import PixelModel
from alexnet_gtsrb.models.alexnet import AlexNet
from alexnet_gtsrb.models.towers import AlexNetTowers, towers_to_grouped

SIZE = 99  # conv5 maps 5x5 (paper layouts), FC6 input 1024: quick, and a map with some structure
# model config -> (index of conv5 in features, index of the ReLU that follows it), from the layouts above
CONV5_RELU5 = {
    "alexnet_paper": (18, 19),
    "alexnet_bn": (18, 19),
    "alexnet_seed": (18, 19),
    "alexnet_torchvision": (10, 11),
    "alexnet_towers": (18, 19),  # of the grouped network the towers convert to
}


def _module(compose_cfg, name: str):
    cfg = compose_cfg([f"model={name}", f"data.image_size={SIZE}"])
    torch.manual_seed(0)
    module = instantiate(cfg.model, _recursive_=False)
    with torch.no_grad():  # BatchNorm with non-trivial statistics and signs, so BN-after-ReLU matters
        for m in module.net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.normal_(0.0, 1.0)
                m.bias.normal_(0.0, 0.5)
                m.running_mean.uniform_(0.0, 1.0)
                m.running_var.uniform_(0.5, 2.0)
    return module.eval()


def _grouped(net: AlexNetTowers) -> AlexNet:
    """The grouped paper network with the towers' weights (the towers are numerically this network)."""
    grouped = AlexNet(num_classes=net.num_classes, image_size=net.image_size, variant="paper", groups=2, init="torch")
    grouped.load_state_dict(towers_to_grouped(net.state_dict()))
    return grouped.eval()


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(1, SIZE, SIZE, 3), dtype=np.uint8)


def _normalised(module, image: np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(image).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(list(module.hparams.mean)).view(1, 3, 1, 1)
    std = torch.tensor(list(module.hparams.std)).view(1, 3, 1, 1)
    return (x - mean) / std


def _split_forward(net: AlexNet, y: torch.Tensor, relu5: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A = the rectified conv5 maps, logits computed from A): AlexNet.forward cut after conv5's ReLU."""
    a = net.features[: relu5 + 1](y)
    rest = net.features[relu5 + 1 :](a)
    return a, net.classifier(net.flatten(net.avgpool(rest)))


def _raw_cam(a: torch.Tensor, logit: torch.Tensor) -> torch.Tensor:
    """sum_k w_k A_k (1, h, w), w_k the spatial mean of d logit / d A_k."""
    (grad,) = torch.autograd.grad(logit, a, retain_graph=True)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    return (weights * a).sum(dim=1)


def _reference(net: AlexNet, y: torch.Tensor, relu5: int) -> tuple[int, np.ndarray]:
    """(target, Grad-CAM map (S, S) in [0, 1]) for the class whose raw map has the most positive cells among
    those with both signs (so the final ReLU matters and the map is not trivial)."""
    a, logits = _split_forward(net, y, relu5)
    torch.testing.assert_close(logits, net(y))  # the split is the network
    best: tuple[int, int, torch.Tensor] | None = None
    for c in range(logits.shape[1]):
        raw = _raw_cam(a, logits[0, c])
        positive = int((raw > 0).sum())
        if (raw < 0).any() and positive > 1 and (best is None or positive > best[1]):
            best = (c, positive, raw)
    assert best is not None, "no class gives a map with both signs"
    target, _, raw = best
    cam = F.interpolate(torch.relu(raw)[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    cam = cam[0, 0].clamp_min(0)
    return target, (cam / cam.max()).detach().numpy()


@pytest.mark.parametrize("name", list(CONV5_RELU5))
def test_hooked_activations_are_the_output_of_conv5s_relu(compose_cfg, name):
    module = _module(compose_cfg, name)
    net = module.net
    layers = rectified_last_maps(PixelModel(module))
    hooked: list[torch.Tensor] = []
    pre: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, i, o: hooked.append(o.detach().clone())) for m in layers]
    convs = [t.conv5 for t in net.towers] if isinstance(net, AlexNetTowers) else [net.features[CONV5_RELU5[name][0]]]
    assert all(isinstance(c, nn.Conv2d) for c in convs)
    handles += [c.register_forward_hook(lambda m, i, o: pre.append(o.detach().clone())) for c in convs]
    with torch.no_grad():
        net(_normalised(module, _image()))
    for h in handles:
        h.remove()
    a, conv5 = torch.cat(hooked, dim=1), torch.cat(pre, dim=1)
    assert a.shape == conv5.shape and a.shape[1] == 256
    assert conv5.min() < 0 < conv5.max()  # the pre-activation has both signs: the check below can fail
    assert a.min() >= 0
    assert torch.equal(a, torch.relu(conv5))


@pytest.mark.parametrize("name", list(CONV5_RELU5))
def test_gradcam_equals_gradcam_written_out(compose_cfg, name):
    """One image: the project's map equals the reference (alexnet_bn covers BatchNorm after conv5's ReLU;
    towers: both towers' maps summed before the ReLU, against the grouped network)."""
    module = _module(compose_cfg, name)
    image = _image()
    net = _grouped(module.net) if isinstance(module.net, AlexNetTowers) else module.net
    target, expected = _reference(net, _normalised(module, image), CONV5_RELU5[name][1])
    got = gradcam(PixelModel(module), image, torch.tensor([target]))
    assert got.shape == (1, SIZE, SIZE)
    np.testing.assert_allclose(got[0], expected, atol=1e-4)
