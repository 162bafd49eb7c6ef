"""AlexNet variants: exact parameter counts and feature-map sizes, init, validation, torchvision round trip,
conv1 kernel grid, channels_last/bf16, the Keras-style summary and the throughput helper."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from alexnet_gtsrb.bench.throughput import measure_train_throughput
from alexnet_gtsrb.models.alexnet import VARIANT_REQUIRED, AlexNet
from alexnet_gtsrb.models.lrn import LRN
from alexnet_gtsrb.models.summary import SummaryRow, format_summary, summary_rows
from alexnet_gtsrb.plots import conv1_kernel_grid
from tests.helpers import run_in_process

SEED = VARIANT_REQUIRED["seed"]  # groups=1, lrn=False, batch_norm=True
TV = VARIANT_REQUIRED["torchvision"]


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def n_bn_stats(net: nn.Module) -> int:
    return sum(b.numel() for k, b in net.named_buffers() if k.endswith(("running_mean", "running_var")))


def meta(**kwargs) -> AlexNet:
    """Build on the meta device: exact shapes and counts without allocating 60M parameters."""
    with torch.device("meta"):
        return AlexNet(**kwargs)


def leaf_shapes(net: nn.Module, image_size: int, kind: type[nn.Module]) -> list[tuple[int, ...]]:
    return [shape for name, shape, _ in summary_rows(net, image_size) if f"({kind.__name__})" in name]


# --------------------------------------------------------------------------- paper variant
@pytest.mark.parametrize(
    "num_classes, groups, expected",
    [(1000, 2, 60_965_224), (1000, 1, 62_378_344), (43, 2, 57_044_395)],
)
def test_paper_parameter_counts(num_classes, groups, expected):
    assert n_params(meta(num_classes=num_classes, groups=groups)) == expected


def test_paper_feature_maps_and_groups():
    net = AlexNet(num_classes=43, image_size=227, init="torch")
    assert [c.groups for c in net.conv_layers()] == [1, 2, 1, 2, 2]
    assert leaf_shapes(net, 227, nn.Conv2d) == [
        (96, 55, 55),
        (256, 27, 27),
        (384, 13, 13),
        (384, 13, 13),
        (256, 13, 13),
    ]
    assert leaf_shapes(net, 227, nn.MaxPool2d) == [(96, 27, 27), (256, 13, 13), (256, 6, 6)]
    assert leaf_shapes(net, 227, nn.Flatten) == [(9216,)]
    assert net.feature_shape == (256, 6, 6) and net.flat_features == 9216
    c1, c2, c3, c4, c5 = net.conv_layers()
    assert (c1.kernel_size, c1.stride, c1.padding) == ((11, 11), (4, 4), (0, 0))
    assert (c2.kernel_size, c2.padding) == ((5, 5), (2, 2))
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in (c3, c4, c5))
    assert [m.out_features for m in net.classifier if isinstance(m, nn.Linear)] == [4096, 4096, 43]
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 227, 227)).shape == (2, 43)


def test_paper_layer_order_lrn_pool_dropout():
    net = meta()
    f = list(net.features)
    lrns = [i for i, m in enumerate(f) if isinstance(m, LRN)]
    assert len(lrns) == 2
    for i in lrns:  # conv -> ReLU -> (BN slot) -> LRN -> MaxPool(3, 2)
        assert isinstance(f[i - 3], nn.Conv2d) and isinstance(f[i - 2], nn.ReLU)
        assert isinstance(f[i + 1], nn.MaxPool2d) and (f[i + 1].kernel_size, f[i + 1].stride) == (3, 2)
        assert (f[i].size, f[i].alpha, f[i].beta, f[i].k) == (5, 1e-4, 0.75, 2.0)
    assert f[lrns[0] - 3] is net.conv_layers()[0] and f[lrns[1] - 3] is net.conv_layers()[1]
    assert sum(isinstance(m, nn.MaxPool2d) for m in f) == 3
    assert all(m.p == 0.5 for m in net.classifier if isinstance(m, nn.Dropout))
    assert not any(isinstance(m, nn.Dropout) for m in f)  # conv_dropout=0 by default


def kinds(seq: nn.Sequential) -> list[str]:
    return [type(m).__name__ for m in seq]


# Caffe bvlc_alexnet: fc6 relu6 drop6 fc7 relu7 drop7 fc8 (the BN slot is an Identity unless batch_norm=True)
PAPER_FC = ["Linear", "ReLU", "Identity", "Dropout", "Linear", "ReLU", "Identity", "Dropout", "Linear"]
PAPER_FC_BN = [k.replace("Identity", "BatchNorm1d") for k in PAPER_FC]
SEED_FC = PAPER_FC_BN  # Keras: Dense ReLU BN Dropout, twice, then Dense
TV_FC = ["Dropout", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Linear"]  # torchvision: dropout on FC inputs


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, PAPER_FC),
        ({"batch_norm": True}, PAPER_FC_BN),
        ({"variant": "seed", **SEED}, SEED_FC),
        ({"variant": "torchvision", **TV}, TV_FC),
    ],
)
def test_classifier_layer_order_per_variant(kwargs, expected):
    net = meta(**kwargs)
    assert kinds(net.classifier) == expected
    fcs = [i for i, m in enumerate(net.classifier) if isinstance(m, nn.Linear)]
    assert fcs == ([0, 4, 8] if expected != TV_FC else [1, 4, 6])  # FC8 keeps index 8 in paper/seed checkpoints


def test_paper_dropout_acts_on_fc6_fc7_outputs():
    """Training mode zeroes about half of the post-ReLU FC6 and FC7 units (dropout on their outputs)."""
    torch.manual_seed(0)
    net = AlexNet(num_classes=43, image_size=67, init="torch")
    seen: dict[str, torch.Tensor] = {}
    net.classifier[3].register_forward_hook(lambda m, i, o: seen.update(fc6=o))
    net.classifier[7].register_forward_hook(lambda m, i, o: seen.update(fc7=o))
    x = torch.randn(8, 3, 67, 67)
    with torch.no_grad():
        net.eval()(x)
        kept = {k: (v != 0).float().mean().item() for k, v in seen.items()}
        net.train()(x)
        kept_train = {k: (v != 0).float().mean().item() for k, v in seen.items()}
    for k in ("fc6", "fc7"):
        assert kept[k] > 0.2 and abs(kept_train[k] / kept[k] - 0.5) < 0.1, (k, kept, kept_train)


def test_lrn_switches():
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in meta(lrn_impl="torch").modules()) == 2
    no_lrn = meta(lrn=False)
    assert not any(isinstance(m, (LRN, nn.LocalResponseNorm)) for m in no_lrn.modules())
    # Switched-off layers keep their slot, so parameter names do not depend on lrn.
    assert list(no_lrn.state_dict()) == list(meta().state_dict())


def test_paper_batch_norm_and_conv_dropout():
    net = meta(batch_norm=True, conv_dropout=0.25)
    f, c = list(net.features), list(net.classifier)
    bn2 = [i for i, m in enumerate(f) if isinstance(m, nn.BatchNorm2d)]
    assert len(bn2) == 5 and all(isinstance(f[i - 1], nn.ReLU) and isinstance(f[i - 2], nn.Conv2d) for i in bn2)
    assert [f[i].num_features for i in bn2] == [96, 256, 384, 384, 256]
    bn1 = [i for i, m in enumerate(c) if isinstance(m, nn.BatchNorm1d)]
    assert len(bn1) == 2 and all(isinstance(c[i - 1], nn.ReLU) and isinstance(c[i - 2], nn.Linear) for i in bn1)
    drops = [i for i, m in enumerate(f) if isinstance(m, nn.Dropout)]
    assert len(drops) == 3 and all(isinstance(f[i - 1], nn.MaxPool2d) and f[i].p == 0.25 for i in drops)
    bn_affine = 2 * (96 + 256 + 384 + 384 + 256) + 2 * 2 * 4096
    assert n_params(net) == 57_044_395 + bn_affine


@pytest.mark.parametrize(
    "variant,kwargs",
    [
        ("paper", {}),
        ("seed", {"groups": 1, "lrn": False, "batch_norm": True}),
        ("torchvision", {"groups": 1, "lrn": False}),
    ],
)
def test_paper_init(variant, kwargs):
    """Paper section 5: biases 1 in conv2, conv4, conv5 and the two hidden FC layers, 0 elsewhere; N(0, 0.01)."""
    torch.manual_seed(0)
    net = AlexNet(num_classes=43, image_size=67, variant=variant, init="paper", **kwargs)  # small: quick init
    convs = net.conv_layers()
    linears = [m for m in net.classifier if isinstance(m, nn.Linear)]
    for m in [*convs, *linears]:
        assert abs(m.weight.std().item() - 0.01) < 0.001 and abs(m.weight.mean().item()) < 0.001
    ones = [convs[1], convs[3], convs[4], linears[0], linears[1]]
    for m in [*convs, *linears]:
        assert torch.all(m.bias == (1.0 if any(m is o for o in ones) else 0.0))


def test_kaiming_and_keras_init():
    torch.manual_seed(0)
    net = AlexNet(num_classes=43, image_size=67, init="kaiming")
    conv3 = net.conv_layers()[2]
    fan_in = conv3.weight[0].numel()
    assert abs(conv3.weight.std().item() / math.sqrt(2 / fan_in) - 1) < 0.05
    last = net.classifier[-1]
    assert abs(last.weight.std().item() - 0.01) < 0.001
    assert all(torch.all(m.bias == 0) for m in [*net.conv_layers(), *net.classifier] if hasattr(m, "bias"))
    net.reset_parameters("keras")
    conv2 = net.conv_layers()[1]
    fan_in, fan_out = conv2.weight[0].numel(), conv2.weight.shape[0] * 25
    bound = math.sqrt(6 / (fan_in + fan_out))
    assert conv2.weight.abs().max() <= bound and conv2.weight.abs().max() > 0.95 * bound
    assert torch.all(conv2.bias == 0)


# --------------------------------------------------------------------------- seed variant
def test_seed_matches_keras_summary_numbers():
    net = meta(variant="seed", num_classes=10, image_size=150, **SEED)
    assert n_params(net) == 30_029_898
    assert n_bn_stats(net) == 19_136
    assert n_params(net) + n_bn_stats(net) == 30_049_034
    assert net.feature_shape == (256, 3, 3) and net.flat_features == 2304
    assert [c.groups for c in net.conv_layers()] == [1] * 5
    assert [c.kernel_size[0] for c in net.conv_layers()] == [11, 5, 3, 3, 3]
    bns = [m for m in net.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert [m.num_features for m in bns] == [96, 256, 384, 384, 256, 4096, 4096]
    assert all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)  # Keras defaults
    assert not any(isinstance(m, (LRN, nn.LocalResponseNorm)) for m in net.modules())


# The origin script's printed ``model.summary()`` (shared/seed/000_59f6773c13431102.txt), transcribed row by row:
# (Keras layer type, output shape (H, W, C) or (units,), Param #). 26 layers, dropout_1 ... dropout_7.
KERAS_SUMMARY = [
    ("Conv2D", (35, 35, 96), 34944),  # conv2d_1
    ("BatchNormalization", (35, 35, 96), 384),
    ("MaxPooling2D", (17, 17, 96), 0),
    ("Dropout", (17, 17, 96), 0),  # dropout_1
    ("Conv2D", (17, 17, 256), 614656),  # conv2d_2
    ("BatchNormalization", (17, 17, 256), 1024),
    ("MaxPooling2D", (8, 8, 256), 0),
    ("Dropout", (8, 8, 256), 0),  # dropout_2
    ("Conv2D", (8, 8, 384), 885120),  # conv2d_3
    ("BatchNormalization", (8, 8, 384), 1536),
    ("Dropout", (8, 8, 384), 0),  # dropout_3
    ("Conv2D", (8, 8, 384), 1327488),  # conv2d_4
    ("BatchNormalization", (8, 8, 384), 1536),
    ("Dropout", (8, 8, 384), 0),  # dropout_4
    ("Conv2D", (8, 8, 256), 884992),  # conv2d_5
    ("BatchNormalization", (8, 8, 256), 1024),
    ("MaxPooling2D", (3, 3, 256), 0),
    ("Dropout", (3, 3, 256), 0),  # dropout_5
    ("Flatten", (2304,), 0),
    ("Dense", (4096,), 9441280),  # dense_1
    ("BatchNormalization", (4096,), 16384),
    ("Dropout", (4096,), 0),  # dropout_6
    ("Dense", (4096,), 16781312),  # dense_2
    ("BatchNormalization", (4096,), 16384),
    ("Dropout", (4096,), 0),  # dropout_7
    ("Dense", (10,), 40970),  # dense_3, softmax
]
KERAS_TOTALS = (30_049_034, 30_029_898, 19_136)  # "Total params", "Trainable params", "Non-trainable params"


def _torch_layers_for(keras_type: str, shape: tuple[int, ...], last: bool) -> list[str]:
    """The torch modules one Keras layer of the script becomes: ``Conv2D(activation='relu')`` and
    ``Dense(activation='relu')`` are the layer then ReLU; the final Dense's softmax is left to the loss."""
    if keras_type == "Conv2D":
        return ["Conv2d", "ReLU"]
    if keras_type == "Dense":
        return ["Linear"] if last else ["Linear", "ReLU"]
    if keras_type == "BatchNormalization":
        return ["BatchNorm2d" if len(shape) == 3 else "BatchNorm1d"]
    return {"MaxPooling2D": ["MaxPool2d"], "Dropout": ["Dropout"], "Flatten": ["Flatten"]}[keras_type]


def _leaf_calls(net: nn.Module, image_size: int) -> list[tuple[str, tuple[int, ...], int, nn.Module]]:
    """(type, output shape without batch, Keras-style parameter count, module) of every leaf module in call
    order; Keras counts BatchNorm's moving mean and variance as (non-trainable) parameters."""
    calls: list[tuple[str, tuple[int, ...], int, nn.Module]] = []

    def record(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        own = sum(p.numel() for p in module.parameters(recurse=False))
        own += sum(b.numel() for k, b in module.named_buffers(recurse=False) if k.startswith("running_"))
        calls.append((type(module).__name__, tuple(output.shape[1:]), own, module))

    hooks = [m.register_forward_hook(record) for m in net.modules() if next(m.children(), None) is None]
    try:
        net.eval()(torch.zeros(2, 3, image_size, image_size, device=next(net.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return calls


def _seed_from_config(compose_cfg, image_size: int) -> AlexNet:
    from hydra.utils import instantiate

    cfg = compose_cfg(["model=alexnet_seed", f"data.image_size={image_size}", "data.num_classes=10"])
    with torch.device("meta"):
        net = instantiate(cfg.model.net)
    assert isinstance(net, AlexNet)
    return net


@pytest.mark.parametrize("image_size", [147, 150])  # conv1 35x35 as printed: (147..150 - 11) // 4 + 1 = 35
def test_seed_is_the_origin_scripts_printed_summary(compose_cfg, image_size):
    """model=alexnet_seed, layer by layer, is the origin script's summary: types, output shapes, parameters."""
    net = _seed_from_config(compose_cfg, image_size)
    calls = [c for c in _leaf_calls(net, image_size) if c[0] != "Identity"]
    last = len(KERAS_SUMMARY) - 1
    expansions = [_torch_layers_for(k, shape, i == last) for i, (k, shape, _) in enumerate(KERAS_SUMMARY)]
    assert [c[0] for c in calls] == [t for types in expansions for t in types]
    pos = 0
    for (keras_type, shape, params), types in zip(KERAS_SUMMARY, expansions, strict=True):
        group, pos = calls[pos : pos + len(types)], pos + len(types)
        chw = (shape[2], shape[0], shape[1]) if len(shape) == 3 else shape
        assert group[-1][1] == chw, (pos, keras_type, group[-1][1], chw)
        assert sum(c[2] for c in group) == params, (pos, keras_type)
        if keras_type == "Dropout":
            assert group[0][3].p == 0.5  # Dropout(0.5) everywhere in the script
    total, trainable, non_trainable = KERAS_TOTALS
    assert sum(c[2] for c in calls) == total == trainable + non_trainable
    assert n_params(net) == trainable and n_bn_stats(net) == non_trainable


def test_model_alexnet_seed_alone_carries_the_keras_init(compose_cfg):
    """The Keras defaults the script ran under come with the model config, not only with experiment=baseline:
    Conv2D/Dense kernel_initializer="glorot_uniform" (U(-l, l), l = sqrt(6 / (fan_in + fan_out)), Glorot &
    Bengio 2010), bias_initializer="zeros"; BatchNormalization(momentum=0.99, epsilon=1e-3), i.e. torch
    momentum 1 - 0.99."""
    from hydra.utils import instantiate

    cfg = compose_cfg(["model=alexnet_seed", "data.image_size=67"])  # small FC6: quick to initialise
    torch.manual_seed(0)
    net = instantiate(cfg.model.net)
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 8
    for m in layers:
        w = m.weight.detach()
        receptive = w[0, 0].numel() if w.ndim == 4 else 1
        fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        assert 0.95 * limit < w.abs().max().item() <= limit, m
        assert abs(w.std().item() / (limit / math.sqrt(3.0)) - 1) < 0.05, m  # uniform: std = limit / sqrt(3)
        assert torch.all(m.bias == 0), m
    bns = [m for m in net.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert len(bns) == 7 and all(m.eps == 1e-3 and abs(m.momentum - (1 - 0.99)) < 1e-12 for m in bns)


def test_seed_at_227_px_43_classes():
    net = meta(variant="seed", num_classes=43, image_size=227, **SEED)
    assert net.flat_features == 9216
    assert n_params(net) == 58_476_651 and n_params(net) + n_bn_stats(net) == 58_495_787


@pytest.mark.parametrize(
    "override, match",
    [
        ({"groups": 2}, r"model\.net\.groups=2 is not supported by the seed AlexNet"),
        ({"lrn": True}, r"model\.net\.lrn=True is not supported by the seed AlexNet"),
        ({"batch_norm": False}, r"model\.net\.batch_norm=False is not supported by the seed AlexNet"),
    ],
)
def test_seed_rejects_paper_options(override, match):
    with pytest.raises(ValueError, match=match):
        AlexNet(variant="seed", **{**SEED, **override})


# --------------------------------------------------------------------------- torchvision variant
def test_torchvision_variant_round_trip():
    ours = AlexNet(num_classes=1000, image_size=224, variant="torchvision", init="torch", **TV)
    theirs = torchvision.models.alexnet()
    assert n_params(ours) == n_params(theirs) == 61_100_840
    theirs.load_state_dict(ours.state_dict(), strict=True)
    other = torchvision.models.alexnet()
    ours.load_state_dict(other.state_dict(), strict=True)
    ours.eval()
    other.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), other(x))
    assert [c.out_channels for c in ours.conv_layers()] == [64, 192, 384, 256, 256]
    assert isinstance(ours.avgpool, nn.AdaptiveAvgPool2d)


@pytest.mark.parametrize("override", [{"groups": 2}, {"lrn": True}, {"batch_norm": True}, {"conv_dropout": 0.3}])
def test_torchvision_rejects_incompatible_options(override):
    key = next(iter(override))
    with pytest.raises(ValueError, match=rf"model\.net\.{key}=.* not supported by the torchvision AlexNet"):
        AlexNet(variant="torchvision", **{**TV, **override})


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "variant, kwargs, minimum",
    [("paper", {}, 67), ("seed", SEED, 67), ("torchvision", TV, 63)],
)
def test_image_size_minimum(variant, kwargs, minimum):
    with pytest.raises(
        ValueError,
        match=rf"model\.net\.image_size={minimum - 1} is too small for the {variant} AlexNet: "
        rf"minimum is {minimum}",
    ):
        meta(variant=variant, image_size=minimum - 1, **kwargs)
    net = AlexNet(variant=variant, image_size=minimum, num_classes=5, **kwargs).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, minimum, minimum)).shape == (1, 5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"groups": 3}, r"model\.net\.groups=3 .*allowed values are \[1, 2\]"),
        ({"groups": 4}, r"model\.net\.groups=4 .*allowed values are \[1, 2\]"),
        ({"variant": "vgg"}, r"model\.net\.variant='vgg' .*\['paper', 'seed', 'torchvision'\]"),
        ({"init": "xavier"}, r"model\.net\.init='xavier' .*\['paper', 'kaiming', 'keras', 'torch'\]"),
        ({"lrn_impl": "cuda"}, r"model\.net\.lrn_impl='cuda' .*\['fast', 'torch'\]"),
        ({"dropout": 1.0}, r"model\.net\.dropout must be in \[0, 1\)"),
        ({"num_classes": 0}, r"model\.net\.num_classes must lie in 1\.\.10000"),
        ({"image_size": 4096}, r"model\.net\.image_size must lie in 1\.\.512"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AlexNet(**kwargs)


def test_hydra_instantiation_with_keyword_overrides():
    from hydra.utils import instantiate

    cfg = {
        "_target_": "alexnet_gtsrb.models.alexnet.AlexNet",
        "num_classes": 43,
        "image_size": 99,
        "groups": 1,
    }
    net = instantiate(cfg)
    assert isinstance(net, AlexNet) and net.groups == 1 and net.image_size == 99


# --------------------------------------------------------------------------- conv1 access and kernel grid
def test_conv1_access_and_kernel_grid():
    torch.manual_seed(0)
    net = AlexNet(image_size=67)
    assert len(net.conv_layers()) == 5 and all(isinstance(c, nn.Conv2d) for c in net.conv_layers())
    assert net.conv1 is net.features[0]
    assert not any(k.startswith("conv1") for k in net.state_dict())
    grid = conv1_kernel_grid(net)
    # Two blocks of 48 kernels (8 columns x 6 rows of 11x11 tiles, 1 px borders) with a 4 px gap.
    block_w, block_h = 8 * 12 + 1, 6 * 12 + 1
    assert grid.shape == (3, block_h, 2 * block_w + 4)
    assert grid.min() >= 0 and grid.max() <= 1
    assert torch.all(grid[:, :, block_w : block_w + 4] == 1)

    def normalised(i: int) -> torch.Tensor:
        w = net.conv1.weight[i].detach()
        return (w - w.min()) / (w.max() - w.min())

    torch.testing.assert_close(grid[:, 1:12, 1:12], normalised(0))
    torch.testing.assert_close(grid[:, 1:12, 13:24], normalised(1))
    torch.testing.assert_close(grid[:, 1:12, block_w + 5 : block_w + 16], normalised(48))  # right block: 48-95
    torch.testing.assert_close(grid[:, 61:72, block_w + 4 + 85 : block_w + 4 + 96], normalised(95))
    single = conv1_kernel_grid(AlexNet(image_size=67, groups=1))
    assert single.shape == (3, 8 * 12 + 1, 12 * 12 + 1)  # one block of 96: 12 columns x 8 rows


# --------------------------------------------------------------------------- channels_last / bf16
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"lrn_impl": "torch"}, {"batch_norm": True, "lrn": False}, {"variant": "seed", **SEED}],
)
def test_channels_last_and_bf16_autocast(kwargs):
    torch.manual_seed(0)
    net = AlexNet(num_classes=7, image_size=71, init="kaiming", **kwargs)
    x = torch.randn(4, 3, 71, 71)
    net.eval()
    with torch.no_grad():
        ref = net(x)
        net_cl = net.to(memory_format=torch.channels_last)
        torch.testing.assert_close(net_cl(x.contiguous(memory_format=torch.channels_last)), ref, atol=1e-4, rtol=1e-4)
    net.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x.contiguous(memory_format=torch.channels_last))
    assert out.dtype == torch.bfloat16 and out.shape == (4, 7)
    nn.functional.cross_entropy(out.float(), torch.randint(0, 7, (4,))).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert net.conv1.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- summary
def test_summary_seed_matches_keras():
    net = AlexNet(variant="seed", num_classes=10, image_size=150, **SEED)
    rows = summary_rows(net, 150)
    assert all(isinstance(r, SummaryRow) and len(r) == 3 for r in rows)
    name, shape, params = rows[0]
    assert name == "features.0 (Conv2d)" and shape == (96, 35, 35) and params == 3 * 96 * 121 + 96
    assert [r.output_shape for r in rows if "Flatten" in r.layer_name] == [(2304,)]
    assert sum(r.n_params for r in rows) == 30_029_898
    assert sum(r.non_trainable for r in rows) == 19_136
    text = format_summary(rows)
    assert "96x35x35" in text and "2304" in text
    assert "Total params: 30,049,034" in text
    assert "Trainable params: 30,029,898" in text
    assert "Non-trainable params: 19,136" in text
    bn_line = next(line for line in text.splitlines() if line.startswith("features.2 (BatchNorm2d)"))
    assert bn_line.split()[-1] == "384"  # Keras-style: gamma, beta, moving mean, moving variance


def test_summary_paper_and_restores_mode():
    net = meta()  # meta tensors: shapes only
    net.train()
    rows = summary_rows(net, 227)
    assert net.training
    assert sum(r.n_params for r in rows) == 57_044_395 and sum(r.non_trainable for r in rows) == 0
    assert not any("Identity" in r.layer_name for r in rows)
    assert "Total params: 57,044,395" in format_summary(rows)
    plain = format_summary([("a (Linear)", (3,), 12)])
    assert "Trainable params: 12" in plain and "Non-trainable params: 0" in plain


def test_summary_cli(tmp_path):
    """``python -m alexnet_gtsrb.models.summary`` (@hydra.main, conf/summary.yaml), run from an empty folder."""
    proc = run_in_process(
        "models.summary", ["model=alexnet_seed", "data.image_size=150", "data.num_classes=10"], cwd=tmp_path
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "96x35x35" in out and "Total params: 30,049,034" in out and "Non-trainable params: 19,136" in out
    assert "2304" in out  # the origin script's flatten size
    proc = run_in_process(
        "models.summary", ["model=alexnet_torchvision", "data.image_size=224", "data.num_classes=1000"], cwd=tmp_path
    )
    assert "Total params: 61,100,840" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # no run folder, .hydra/ or log file in the working directory


def test_summary_cli_bad_size():
    proc = run_in_process("models.summary", ["model=alexnet_paper", "data.image_size=40"])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "image_size" in proc.stderr and "67" in proc.stderr


# --------------------------------------------------------------------------- throughput helper
def test_measure_train_throughput_runs_and_keeps_weights():
    net = AlexNet(num_classes=5, image_size=67, batch_norm=True)
    before = net.conv1.weight.detach().clone()
    ips = measure_train_throughput(net, batch=4, image_size=67, steps=1, warmup=1, bf16=False, channels_last=True)
    assert ips > 0 and math.isfinite(ips)
    assert net.training and net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(net.conv1.weight.detach().contiguous(), before)  # lr=0: no drift
    with pytest.raises(ValueError, match="steps >= 1"):
        measure_train_throughput(net, steps=0)


def test_a_checkpoint_of_the_old_paper_classifier_order_is_refused_in_one_line(tmp_path):
    """Dropout before FC6/FC7 (FC6, FC7 and their BatchNorms at classifier.1/3/5/7): named, not converted."""
    from alexnet_gtsrb.checkpoints import CheckpointError, check_fits
    from alexnet_gtsrb.models.alexnet import old_layout_problem

    holder = torch.nn.Module()  # checkpoints hold the classifier's state: the network under "net."
    holder.net = AlexNet(num_classes=43, image_size=67, variant="paper", batch_norm=True, lrn=False)
    new = dict(holder.state_dict())
    old_index = {0: 1, 2: 3, 4: 5, 6: 7}  # torchvision's order: Dropout, FC6, ReLU, BN, Dropout, FC7, ReLU, BN, FC8
    old = {}
    for key, value in new.items():
        parts = key.split(".")
        if parts[1] == "classifier" and int(parts[2]) in old_index:
            parts[2] = str(old_index[int(parts[2])])
        old[".".join(parts)] = value
    assert "net.classifier.1.weight" in old and "net.classifier.0.weight" not in old
    assert old_layout_problem(old) is not None
    assert old_layout_problem(new) is None
    with pytest.raises(CheckpointError, match="dropout before FC6/FC7") as info:
        check_fits(old, holder, tmp_path / "old.ckpt")
    assert "\n" not in str(info.value)
    check_fits(new, holder, tmp_path / "new.ckpt")  # today's layout fits


def _old_seed_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A seed state_dict renamed to the layout without the conv3/conv4 dropouts: conv4, BN4, conv5, BN5 at
    features.13/15/16/18 instead of 14/16/18/20."""
    new_to_old = {14: 13, 16: 15, 18: 16, 20: 18}
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[1] == "features" and int(parts[2]) in new_to_old:
            parts[2] = str(new_to_old[int(parts[2])])
        out[".".join(parts)] = value
    return out


def test_a_seed_checkpoint_without_the_conv3_conv4_dropouts_is_refused_in_one_line(compose_cfg, tmp_path):
    from hydra.utils import instantiate

    from alexnet_gtsrb.checkpoints import CheckpointError
    from alexnet_gtsrb.inference import load_classifier
    from alexnet_gtsrb.models.alexnet import old_layout_problem as seed_layout_problem

    cfg = compose_cfg(["model=alexnet_seed", "data.image_size=67"])
    module = instantiate(cfg.model, _recursive_=False)
    new = {k: v.half() if v.is_floating_point() else v for k, v in module.state_dict().items()}
    old = _old_seed_layout(new)
    assert old.keys() != new.keys() and old["net.features.13.weight"].shape == (384, 384, 3, 3)
    message = seed_layout_problem(old)
    assert message is not None and "\n" not in message and "conv3 and conv4" in message
    assert seed_layout_problem(new) is None
    paper = {f"net.{k}": v for k, v in meta(image_size=67).state_dict().items()}
    assert seed_layout_problem(paper) is None
    path = tmp_path / "old_seed.ckpt"
    torch.save({"state_dict": old, "hyper_parameters": dict(module.hparams)}, path)
    with pytest.raises(CheckpointError) as info:
        load_classifier(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert "without Dropout after conv3 and conv4" in str(info.value)


@pytest.mark.parametrize("size,conv1,conv1_side", [(51, (7, 2), 23), (67, (7, 2), 31), (35, (5, 1), 31)])
def test_conv1_adaptation_keeps_the_source_resolution(size, conv1, conv1_side):
    """model.net.conv1=[kernel, stride] (alexnet_bn only): conv1's map is (size - kernel) // stride + 1, then the
    paper's three 3/2 poolings; the paper's 11x11/4 at 67 px keeps only 15x15 and a 1x1 map for FC6."""
    net = AlexNet(43, size, batch_norm=True, lrn=False, conv1=conv1)
    side = (size - conv1[0]) // conv1[1] + 1
    assert side == conv1_side
    for _ in range(3):
        side = (side - 3) // 2 + 1
    assert net.feature_shape == (256, side, side) and net.flat_features == 256 * side * side
    out = net.features[:2](torch.zeros(1, 3, size, size))
    assert out.shape[-1] == conv1_side
    assert AlexNet(43, 67, batch_norm=True, lrn=False).feature_shape == (256, 1, 1)


@pytest.mark.parametrize("variant,kwargs", [("paper", {}), ("seed", {"groups": 1, "lrn": False, "batch_norm": True})])
def test_conv1_adaptation_is_refused_outside_alexnet_bn(variant, kwargs):
    with pytest.raises(ValueError, match="only model=alexnet_bn"):
        AlexNet(43, 67, variant=variant, conv1=(7, 2), **kwargs)
