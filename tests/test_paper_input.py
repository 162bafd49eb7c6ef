"""experiment=paper's input scale, checked at the paper's initialisation on real GTSRB images.

Krizhevsky et al. (2012) feed raw 0-255 pixels minus a mean (section 2), with no division by a standard
deviation. Their initialisation (N(0, 0.01^2) weights, bias 1 in conv2/4/5 and FC6/7, section 5) and LRN
constants (k=2, n=5, alpha=1e-4, beta=0.75, section 3.3) are tuned to that scale: a network fed inputs ~58x
smaller (divided by ImageNet's std on [0, 1]) is almost input-independent at initialisation and LRN is
nearly a constant factor. The references here are formulas written out in this file, evaluated on the
measured statistics of the network's input and on the paper's input statistics; nothing is read back from
the code as an expectation.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from alexnet_gtsrb.data.pca import rgb_pca
from alexnet_gtsrb.evaluation.pixel_model import PixelModel
from alexnet_gtsrb.models.lrn import LRN
from tests.helpers import compose_config

# Krizhevsky et al. 2012, section 3.3 (alpha divided by n per term, as in cuda-convnet, Caffe and torch)
LRN_K, LRN_N, LRN_ALPHA, LRN_BETA = 2.0, 5, 1e-4, 0.75
SIGMA_W = 0.01  # section 5: every weight ~ N(0, 0.01^2)
# Figure 2, per layer: (fan-in of one output unit, bias at initialisation, LRN after the ReLU). conv2, conv4 and
# conv5 see only their own tower's 48, 192 and 192 channels; conv3 sees both towers' 256.
CONV_LAYERS = [(11 * 11 * 3, 0.0, True), (5 * 5 * 48, 1.0, True), (3 * 3 * 256, 0.0, False)]
CONV_LAYERS += [(3 * 3 * 192, 1.0, False), (3 * 3 * 192, 1.0, False)]
FC6_FAN_IN = 6 * 6 * 256
CONV1_CHANNELS = 96
# The paper's input: ImageNet pixels minus the training set's mean image. Their spread per channel is ImageNet's
# standard deviation, (0.229, 0.224, 0.225) of 255 (torchvision's ImageNet normalisation constants, computed on
# the ImageNet training set); with the mean image subtracted, all of it is variation across images.
PAPER_PIXEL_VAR = (255.0 * (0.229 + 0.224 + 0.225) / 3) ** 2  # about 57.6^2 grey levels^2
# torchvision's ImageNet mean on [0, 1]: the per-channel mean the paper preset subtracts
IMAGENET_MEAN_255 = torch.tensor([0.485, 0.456, 0.406]) * 255.0
BATCH = 32
PCA_IMAGES = 256  # the colour statistics from a sample (all ~20k training images take most of a minute)


@pytest.fixture(scope="module")
def paper(gtsrb_root, tmp_path_factory):
    """experiment=paper composed on the real data: its DataModule (set up for fit), one training batch through
    the whole training path (random crop, label-aware flip, PCA colour noise, normalisation), the raw uint8
    batch, the model built by the config at the paper's initialisation, and from one forward pass of the batch
    the input of its first LRN and its FC6 pre-activations."""

    from alexnet_gtsrb.data import datamodule as datamodule_module

    out = tmp_path_factory.mktemp("paper_input")
    cfg = compose_config(
        "train",
        [
            f"paths.output_dir={out}",
            f"paths.log_dir={out}/logs",
            "experiment=paper",
            f"data.data_dir={gtsrb_root}",
            "data.num_workers=0",
            f"data.batch_size={BATCH}",
            f"data.cache_dir={out}/cache",
            "data.verify=false",  # the header scan of every file: no part of the images' pipeline
        ],
    )

    def sampled_pca(root, split, settings, paths, images, cache_dir=None):
        return rgb_pca(itertools.islice(images(), PCA_IMAGES)), Path(out) / "pca.json"

    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datamodule_module, "cached_rgb_pca", sampled_pca)
        dm = instantiate(cfg.data, _convert_="all")
        dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))
    dm.trainer = SimpleNamespace(training=True)  # what the hook reads: the training path, PCA noise included
    x, _ = dm.on_after_batch_transfer(raw, 0)
    dm.trainer = None
    model = instantiate(cfg.model, _recursive_=False).eval()
    lrn_in, fc6 = _hooked(model.net, x)
    return {"dm": dm, "raw": raw[0], "x": x, "model": model, "lrn_in": lrn_in, "fc6": fc6}


def _mean_window_size(channels: int, n: int) -> float:
    """Average number of channels in LRN's window [c - n//2, c + (n-1)//2], clipped at the edges."""
    sizes = [min(c + (n - 1) // 2, channels - 1) - max(c - n // 2, 0) + 1 for c in range(channels)]
    return sum(sizes) / channels


def _alpha_term_formula(mean_window_sq: float) -> float:
    """E[alpha/n * sum over the LRN window of relu(a)^2] at LRN1 for conv1 pre-activations a = w . x with
    w ~ N(0, sigma_w^2) (conv1's bias is 0): E[a^2 | x] = sigma_w^2 * (sum of x^2 over the 11x11x3 window), a is
    symmetric so the ReLU keeps half of it, and the LRN window holds ~n channels (fewer at the edges)."""
    relu_sq = SIGMA_W**2 * mean_window_sq / 2
    return LRN_ALPHA / LRN_N * _mean_window_size(CONV1_CHANNELS, LRN_N) * relu_sq


def _phi(t: float) -> float:
    return math.exp(-t * t / 2) / math.sqrt(2 * math.pi)


def _cdf(t: float) -> float:
    return 0.5 * (1 + math.erf(t / math.sqrt(2)))


def _relu_moments(c: float, s: float) -> tuple[float, float]:
    """E[relu(z)] and E[relu(z)^2] for z ~ N(c, s^2)."""
    if s == 0:
        return max(c, 0.0), max(c, 0.0) ** 2
    t = c / s
    return c * _cdf(t) + s * _phi(t), (c * c + s * s) * _cdf(t) + c * s * _phi(t)


def _fc6_spread_formula(q: float, v: float) -> float:
    """Mean-field prediction of FC6's pre-activation spread across images (standard deviation, averaged over
    units) for an input with second moment ``q`` and across-image variance ``v`` per element, at the paper's
    initialisation.

    A layer with N(0, sigma^2) weights, fan-in m and bias b, applied to an input with (q, v), gives
    pre-activations z = b + U + D over units, positions and images: U ~ N(0, sigma^2 m (q - v)) the part fixed
    per unit and position, D ~ N(0, sigma^2 m v) the part that changes from image to image. After the ReLU,
    q' = E[relu(z)^2] and v' = E_U[Var_D relu(b + U + D)] (Gauss-Hermite over U). LRN with a small alpha term
    (the first test shows it is) scales by k^-beta; max-pooling is taken to pass (q, v) unchanged, an
    approximation (it raises both a little). FC6's pre-activation then varies by sigma * sqrt(9216 v).
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(81)
    weights = weights / weights.sum()
    for fan_in, bias, lrn in CONV_LAYERS:
        a_var, d_var = SIGMA_W**2 * fan_in * (q - v), SIGMA_W**2 * fan_in * v
        q = _relu_moments(bias, math.sqrt(a_var + d_var))[1]
        v = 0.0
        for u, w in zip(nodes, weights, strict=True):
            m1, m2 = _relu_moments(bias + math.sqrt(a_var) * u, math.sqrt(d_var))
            v += w * (m2 - m1 * m1)
        if lrn:
            q, v = q * LRN_K ** (-2 * LRN_BETA), v * LRN_K ** (-2 * LRN_BETA)
    return SIGMA_W * math.sqrt(FC6_FAN_IN * v)


def _hooked(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the input of the first LRN, FC6's pre-activations) for one forward pass, copied before the in-place
    ReLUs that follow overwrite them."""
    lrn = next(m for m in net.modules() if isinstance(m, LRN | nn.LocalResponseNorm))
    fc6 = next(m for m in net.modules() if isinstance(m, nn.Linear))
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        lrn.register_forward_hook(lambda m, i, o: seen.__setitem__("lrn_in", i[0].detach().clone())),
        fc6.register_forward_hook(lambda m, i, o: seen.__setitem__("fc6", o.detach().clone())),
    ]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return seen["lrn_in"], seen["fc6"]


def test_paper_input_is_raw_pixels_minus_the_mean_everywhere(paper):
    """The paper preset subtracts ImageNet's per-channel mean from 0-255 pixels and divides by nothing, in
    training, in evaluation (the DataModule's hook) and in a checkpoint's own input path (its saved mean/std,
    used by evaluate/predict/export through ``preprocess`` and by attacks/Grad-CAM through ``PixelModel``)."""
    dm, model, raw = paper["dm"], paper["model"], paper["raw"][:4]
    expected = raw.permute(0, 3, 1, 2).float() - IMAGENET_MEAN_255.view(1, 3, 1, 1)
    evaluated, _ = dm.on_after_batch_transfer((raw, torch.zeros(4, dtype=torch.long)), 0)
    torch.testing.assert_close(evaluated, expected, atol=1e-3, rtol=0)
    assert list(model.hparams.mean) == list(dm.hparams.mean) and list(model.hparams.std) == list(dm.hparams.std)
    torch.testing.assert_close(model.preprocess(raw), expected, atol=1e-3, rtol=0)
    net_input = {}
    hook = model.net.register_forward_pre_hook(lambda m, i: net_input.__setitem__("x", i[0].detach().clone()))
    try:
        with torch.no_grad():
            PixelModel(model)(raw.permute(0, 3, 1, 2).float() / 255.0)
    finally:
        hook.remove()
    torch.testing.assert_close(net_input["x"], expected, atol=1e-3, rtol=0)
    # a training batch is the same up to the PCA colour shift: at most a few grey levels, one per image
    x = paper["x"]
    assert x.shape == (BATCH, 3, 227, 227)
    assert 40.0 < float(x.std()) < 100.0  # grey levels (ImageNet: 57.6); divided by ImageNet's std it was ~1


def test_lrn1_alpha_term_is_in_the_papers_range(paper):
    """At LRN1, alpha/n * sum over the window of relu(conv1)^2 on real training images equals the formula for
    the measured input, and lies within a factor 3 of its value for the paper's input (ImageNet's pixel spread).
    """
    x, lrn_in = paper["x"], paper["lrn_in"]
    sq = F.pad(lrn_in.pow(2), (0, 0, 0, 0, LRN_N // 2, (LRN_N - 1) // 2))  # zero channels beyond the edges
    window = sum(sq[:, j : j + lrn_in.shape[1]] for j in range(LRN_N))
    measured = float((LRN_ALPHA / LRN_N * window).mean())
    mean_window_sq = float(F.unfold(x, 11, stride=4).pow(2).sum(1).mean())  # conv1's 11x11x3 windows
    predicted = _alpha_term_formula(mean_window_sq)
    at_paper_scale = _alpha_term_formula(11 * 11 * 3 * PAPER_PIXEL_VAR)
    print(
        f"LRN1 alpha term: measured {measured:.4g} (ratio to k {measured / LRN_K:.3g}), formula for this input "
        f"{predicted:.4g}, at the paper's input scale {at_paper_scale:.4g}"
    )
    assert 2 / 3 < measured / predicted < 3 / 2
    assert 1 / 3 < measured / at_paper_scale < 3


def test_fc6_varies_across_images_as_at_the_papers_scale(paper):
    """FC6 pre-activations at initialisation vary across real images by what the mean-field propagation of the
    paper's architecture and initialisation predicts for the measured input, and within a factor 2 of its
    prediction for the paper's input scale."""
    x, fc6 = paper["x"], paper["fc6"]
    measured = float(fc6.var(0, unbiased=False).mean().sqrt())
    q, v = float(x.pow(2).mean()), float(x.var(0, unbiased=False).mean())
    predicted = _fc6_spread_formula(q, v)
    at_paper_scale = _fc6_spread_formula(PAPER_PIXEL_VAR, PAPER_PIXEL_VAR)
    print(
        f"FC6 spread across images: measured {measured:.4g}, formula for this input {predicted:.4g} "
        f"(input q {q:.4g}, v {v:.4g}), at the paper's input scale {at_paper_scale:.4g}"
    )
    assert 2 / 3 < measured / predicted < 3 / 2
    assert 1 / 2 < measured / at_paper_scale < 2
