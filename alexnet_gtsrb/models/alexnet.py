"""AlexNet in three documented variants (paper, Keras "seed" script, torchvision) with exact, tested shapes.

"AlexNet" means different networks in different places: each variant is listed here and built exactly, so that
parameter counts, feature-map sizes and checkpoints are reproducible and comparable.

``paper``  Krizhevsky, Sutskever & Hinton (2012). Convs 96-256-384-384-256 (conv1 11x11/4 pad 0, conv2 5x5 pad 2,
    conv3-5 3x3 pad 1); conv2/conv4/conv5 split into ``groups`` (the two GPU "towers"), conv3 and the FC layers
    see both towers; ReLU -> LRN(5, alpha=1e-4, beta=0.75, k=2) after conv1 and conv2; overlapping MaxPool(3, 2)
    after both LRNs and after conv5; FC 4096-4096-classes with dropout on the outputs of FC6 and FC7 (the paper's
    "first two fully-connected layers"; Caffe's bvlc_alexnet: fc6 relu6 drop6 fc7 relu7 drop7 fc8), at
    ``classifier.0``, ``classifier.4``, ``classifier.8``. At 227 px: 96x55x55 -> 96x27x27 -> 256x27x27 ->
    256x13x13 -> 384x13x13 -> 384x13x13 -> 256x13x13 -> 256x6x6 = 9216. 1000 classes: 60,965,224 parameters
    (62,378,344 with groups=1); 43 classes: 57,044,395.

    LRN alpha: the paper prints ``b = a / (k + alpha * sum a^2)^beta`` with alpha un-divided, but its reference
    code (cuda-convnet), Caffe and ``torch.nn.LocalResponseNorm`` all use ``alpha / n``; we follow them (n = 5),
    i.e. the paper's alpha=1e-4 acts as 2e-5 per term.

    Non-paper options: ``batch_norm=True`` inserts BatchNorm2d after every conv's ReLU (before LRN/pooling) and
    BatchNorm1d after the FC6 and FC7 ReLUs (before their dropout), as in ``seed``; ``conv_dropout > 0`` adds
    Dropout after pool1, pool2 and pool5; ``conv1=(kernel, stride)`` other than (11, 4), with BatchNorm only
    (``model=alexnet_bn``), adapts conv1 to small sources.

``seed``  The model of the Keras "AlexNet" blog script this project started from, layer for layer as its
    ``Sequential`` (``Conv2D(..., activation='relu')`` is the convolution then ReLU; BatchNormalization follows)::

        Conv(96, 11x11, stride 4, valid) ReLU BN MaxPool(3, 2) Dropout
        Conv(256, 5x5, same)             ReLU BN MaxPool(3, 2) Dropout
        Conv(384, 3x3, same)             ReLU BN               Dropout
        Conv(384, 3x3, same)             ReLU BN               Dropout
        Conv(256, 3x3, same)             ReLU BN MaxPool(3, 2) Dropout
        Flatten  Dense(4096) ReLU BN Dropout  Dense(4096) ReLU BN Dropout  Dense(classes)

    Feature indices: conv1-conv5 at 0, 5, 10, 14, 18 (see :func:`old_layout_problem`). The script's printed
    ``model.summary()`` (26 layers, dropout_1 ... dropout_7; 10 classes: 30,029,898 trainable + 19,136
    non-trainable = 30,049,034; conv1 35x35, flatten 2304) is that of a 147-150 px input (150 -> 35 -> 17 -> 17 ->
    8 -> 8 -> 3, flatten 256*3*3 = 2304) although the script's text says 227. No groups, no LRN; Keras' BatchNorm
    defaults (eps=1e-3, momentum 0.99 == torch momentum 0.01); ``conv_dropout`` (conv blocks) and ``dropout`` (FC)
    were both 0.5; the softmax is left to the loss. At 227 px and 43 classes (flatten 9216): 58,476,651 trainable
    parameters (weights, biases, BN gamma/beta) plus 19,136 BN running statistics, 58,495,787 Keras-style.

``torchvision``  ``torchvision.models.alexnet`` (the "one weird trick" single-tower layout): convs 64-192-384-256-256,
    AdaptiveAvgPool2d(6x6), dropout on the inputs of FC6/FC7 (torchvision's order, kept); 61,100,840 parameters for
    1000 classes; identical module names and indices, so ``state_dict()`` loads into torchvision and back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from alexnet_gtsrb.models.lrn import LRN

__all__ = ["VARIANTS", "INITS", "LRN_IMPLS", "VARIANT_REQUIRED", "AlexNet", "old_layout_problem"]

VARIANTS = ("paper", "seed", "torchvision")
INITS = ("paper", "kaiming", "keras", "torch")
LRN_IMPLS = ("fast", "torch")
GROUPS = (1, 2)  # every channel count of conv2/4/5 is even, so both group counts divide them
# Bounds keeping a (crafted checkpoint's) network from asking for tens of GB: at 512 px the paper FC6 has 236M weights.
MAX_IMAGE_SIZE = 512
MAX_CLASSES = 10_000

# Constructor arguments a variant requires (the model raises ValueError otherwise); configs must set these.
VARIANT_REQUIRED: dict[str, dict[str, Any]] = {
    "paper": {},
    "seed": {"groups": 1, "lrn": False, "batch_norm": True},
    "torchvision": {"groups": 1, "lrn": False, "batch_norm": False, "conv_dropout": 0.0},
}

_LRN_ARGS: dict[str, Any] = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}
_KERAS_BN: dict[str, Any] = {"eps": 1e-3, "momentum": 0.01}
_Layer = TypeVar("_Layer", nn.Conv2d, nn.Linear)
_Norm = Callable[[int], nn.Module]  # a BatchNorm slot of so many channels
_Slot = Callable[[], nn.Module]  # an optional layer (LRN, pooling, dropout) after a conv's BatchNorm slot


def _bias_one(layer: _Layer) -> _Layer:
    """Marks a layer whose bias the paper init sets to 1. Paper section 5: "We initialized the neuron biases in
    the second, fourth, and fifth convolutional layers, as well as in the fully-connected hidden layers, with
    the constant 1" (to give the ReLUs positive inputs early); the mark is a plain attribute, not state."""
    layer.paper_bias_one = True  # type: ignore[assignment]
    return layer


def spatial_trace(features: nn.Sequential, image_size: int) -> list[int] | None:
    """Spatial size after each layer of ``features`` for a square input (conv/pool arithmetic), or None below 1."""
    size, trace = image_size, []
    for layer in features:
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):  # int or square-tuple settings, floor mode
            k, s, p, d = (
                int(v if isinstance(v, int) else v[0])
                for v in (layer.kernel_size, layer.stride, layer.padding, layer.dilation)
            )
            size = (size + 2 * p - d * (k - 1) - 1) // s + 1
        if size < 1:
            return None
        trace.append(size)
    return trace


class AlexNet(nn.Module):
    """AlexNet for ``variant`` in ("paper", "seed", "torchvision"); see the module docstring for each layout.

    Switched-off optional layers (LRN, BatchNorm, conv dropout) occupy their slot as ``nn.Identity`` so that
    parameter names do not shift when toggled; ``feature_shape`` is (C, H, W) before flattening."""

    def __init__(
        self,
        num_classes: int = 43,
        image_size: int = 227,
        variant: str = "paper",
        groups: int = 2,
        lrn: bool = True,
        batch_norm: bool = False,
        dropout: float = 0.5,
        conv_dropout: float = 0.0,
        init: str = "paper",
        lrn_impl: str = "fast",
        conv1: Sequence[int] = (11, 4),
    ) -> None:
        super().__init__()
        self.conv1_shape = _validate(locals())
        self.variant, self.lrn_impl = variant, lrn_impl
        self.num_classes, self.image_size, self.groups = int(num_classes), int(image_size), int(groups)

        bn_args = _KERAS_BN if variant == "seed" else {}
        bn: _Norm = lambda c: nn.BatchNorm2d(c, **bn_args) if batch_norm else nn.Identity()
        drop: _Slot = lambda: nn.Dropout(conv_dropout) if conv_dropout > 0 else nn.Identity()
        pool: _Slot = lambda: nn.MaxPool2d(3, 2)
        norm: _Slot = lambda: _lrn(lrn, lrn_impl)
        tails = {  # conv1-conv5 at 0, 3, 6, 8, 10 (torchvision), 0, 5, 10, 14, 18 (seed), 0, 6, 12, 15, 18 (paper)
            "torchvision": [[pool], [pool], [], [], [pool]],  # torchvision.models.AlexNet's indices, no BN slots
            "seed": [[pool, drop], [pool, drop], [drop], [drop], [pool, drop]],  # Dropout after every conv block
            "paper": [[norm, pool, drop], [norm, pool, drop], [], [], [pool, drop]],  # LRN after conv1 and conv2
        }[variant]
        convs = _convs(variant, self.conv1_shape, self.groups)
        self.features = _features(convs, None if variant == "torchvision" else bn, tails)
        self.avgpool: nn.Module = nn.AdaptiveAvgPool2d((6, 6)) if variant == "torchvision" else nn.Identity()
        self.flatten = nn.Flatten(1)

        trace = spatial_trace(self.features, self.image_size)
        if trace is None:
            minimum = next(n for n in range(1, MAX_IMAGE_SIZE + 1) if spatial_trace(self.features, n) is not None)
            raise ValueError(
                f"model.net.image_size={image_size} is too small for the {variant} AlexNet: minimum is {minimum}"
            )
        last_channels = self.conv_layers()[-1].out_channels
        side = 6 if variant == "torchvision" else trace[-1]
        self.feature_shape: tuple[int, int, int] = (last_channels, side, side)
        self.flat_features = last_channels * side * side

        bn1: _Slot = lambda: nn.BatchNorm1d(4096, **bn_args) if batch_norm else nn.Identity()
        self.classifier = _classifier(self.flat_features, dropout, num_classes, bn1, variant == "torchvision")
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init: str = "paper") -> None:
        """(Re-)initialise weights. ``paper``: every conv/FC weight ~ N(0, 0.01); biases 1 in the layers the builders
        mark (conv2, conv4, conv5, FC6, FC7), 0 elsewhere. ``kaiming``: He-normal (fan_in, ReLU gain) weights, zero
        biases, the last layer N(0, 0.01). ``keras``: Glorot-uniform weights and zero biases (Keras defaults, the
        seed script's init). ``torch``: PyTorch's default layer init. BatchNorm: weight 1, bias 0."""
        if init not in INITS:
            raise ValueError(f"model.net.init={init!r} is unknown: allowed values are {list(INITS)}")
        for module in self.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.reset_parameters()
        layers: list[nn.Conv2d | nn.Linear] = [*self.conv_layers()]
        layers += [m for m in self.classifier if isinstance(m, nn.Linear)]
        for m in layers:
            assert m.bias is not None  # every AlexNet conv and FC layer has a bias
            if init == "torch":
                m.reset_parameters()
            elif init == "keras":
                nn.init.xavier_uniform_(m.weight)
            elif init == "kaiming" and m is not layers[-1]:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            else:  # paper, and kaiming's last layer
                nn.init.normal_(m.weight, 0.0, 0.01)
            if init != "torch":
                nn.init.constant_(m.bias, 1.0 if init == "paper" and getattr(m, "paper_bias_one", False) else 0.0)

    def conv_layers(self) -> list[nn.Conv2d]:
        """The five convolutions in order (conv1 ... conv5)."""
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    @staticmethod
    def is_backbone(name: str) -> bool:
        """Whether parameter ``name`` belongs to the convolutional backbone (``model.backbone_lr_scale``)."""
        return name.startswith("features.")

    @property
    def conv1(self) -> nn.Conv2d:
        """The first convolution (a property, so it is not registered twice in ``state_dict``)."""
        return self.conv_layers()[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, image_size={self.image_size}, num_classes={self.num_classes}"


def _validate(args: dict[str, Any]) -> tuple[int, int]:
    """One-line ValueErrors for the constructor's ``args`` (its ``locals()``) that no variant takes; returns conv1's
    (kernel, stride): the paper's (11, 4), or kernel 3-11 and stride 1-4 as a GTSRB adaptation to small sources in
    ``model=alexnet_bn`` only (``paper``, ``seed`` and ``torchvision`` stay exact)."""
    for key, allowed in (("variant", VARIANTS), ("init", INITS), ("lrn_impl", LRN_IMPLS), ("groups", GROUPS)):
        if args[key] not in allowed:
            raise ValueError(f"model.net.{key}={args[key]!r} is unknown: allowed values are {list(allowed)}")
    for key, top in (("num_classes", MAX_CLASSES), ("image_size", MAX_IMAGE_SIZE)):
        if not 1 <= int(args[key]) <= top:
            raise ValueError(f"model.net.{key} must lie in 1..{top}, got {args[key]}")
    for key in ("dropout", "conv_dropout"):
        if not 0.0 <= float(args[key]) < 1.0:
            raise ValueError(f"model.net.{key} must be in [0, 1), got {args[key]}")
    variant = args["variant"]
    for key, required in VARIANT_REQUIRED[variant].items():
        value = type(required)(args[key])
        if value != required:
            raise ValueError(
                f"model.net.{key}={value!r} is not supported by the {variant} AlexNet: it requires "
                f"{key}={required!r} (set model.net.{key}={str(required).lower()} for this variant)"
            )
    conv1 = args["conv1"]
    shape = tuple(int(v) for v in conv1 if isinstance(v, int)) if isinstance(conv1, Sequence) else ()
    if len(shape) != 2 or len(conv1) != 2 or not (3 <= shape[0] <= 11 and 1 <= shape[1] <= min(4, shape[0])):
        raise ValueError(f"model.net.conv1={conv1!r} must be [kernel, stride] with kernel 3-11, stride 1-4")
    if shape != (11, 4) and not (variant == "paper" and args["batch_norm"]):
        raise ValueError(f"model.net.conv1={list(shape)} adapts conv1 to small images: only model=alexnet_bn takes it")
    return shape[0], shape[1]


def old_layout_problem(state_dict: Mapping[str, Any], prefix: str = "net.") -> str | None:
    """One line naming an earlier ``paper`` or ``seed`` layout in a checkpoint's ``state_dict``, or None.

    Both were changed to match their sources (no published result depends on either, so neither is converted):
    ``paper`` had Dropout on the *inputs* of FC6/FC7 (the paper and Caffe's ``bvlc_alexnet`` put it on their
    outputs), FC6 at ``classifier.1``; ``seed`` lacked the origin script's Dropout after conv3 and conv4, conv4
    at ``features.13`` (today conv3's Dropout slot in seed, a ReLU in paper).
    """
    fc6_old, fc6_new = f"{prefix}classifier.1.weight", f"{prefix}classifier.0.weight"
    if getattr(state_dict.get(fc6_old), "ndim", 0) == 2 and fc6_new not in state_dict:
        return (
            "a paper-layout network with dropout before FC6/FC7 (FC6 at classifier.1), an earlier layout this "
            "version does not load; train it again"
        )
    if getattr(state_dict.get(f"{prefix}features.13.weight"), "ndim", 0) == 4:
        return (
            "a seed network without Dropout after conv3 and conv4 (conv4 at features.13); the origin script has a "
            "Dropout after every conv block and this version cannot load the older layout: train it again with "
            "model=alexnet_seed"
        )
    return None


def _lrn(enabled: bool, impl: str) -> nn.Module:
    """The paper's LRN (fast or torch's), or the Identity of its slot."""
    return (LRN if impl == "fast" else nn.LocalResponseNorm)(**_LRN_ARGS) if enabled else nn.Identity()


def _convs(variant: str, conv1: tuple[int, int], groups: int) -> list[nn.Conv2d]:
    """conv1-conv5 of ``variant`` (torchvision's exactly as torchvision.models.AlexNet's)."""
    if variant == "torchvision":
        return [
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            _bias_one(nn.Conv2d(64, 192, kernel_size=5, padding=2)),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            _bias_one(nn.Conv2d(384, 256, kernel_size=3, padding=1)),
            _bias_one(nn.Conv2d(256, 256, kernel_size=3, padding=1)),
        ]
    return [
        nn.Conv2d(3, 96, conv1[0], stride=conv1[1], padding=0),  # conv1 ('valid'; the paper's 11x11/4 by default)
        _bias_one(nn.Conv2d(96, 256, 5, padding=2, groups=groups)),  # conv2 ('same')
        nn.Conv2d(256, 384, 3, padding=1),  # conv3 (sees both towers)
        _bias_one(nn.Conv2d(384, 384, 3, padding=1, groups=groups)),  # conv4
        _bias_one(nn.Conv2d(384, 256, 3, padding=1, groups=groups)),  # conv5
    ]


def _features(convs: list[nn.Conv2d], bn: _Norm | None, tails: list[list[_Slot]]) -> nn.Sequential:
    """Each conv followed by ReLU, its BatchNorm slot (unless ``bn`` is None) and the layers of its ``tails``."""
    blocks = [
        [conv, nn.ReLU(inplace=True), *([bn(conv.out_channels)] if bn else []), *(f() for f in tail)]
        for conv, tail in zip(convs, tails, strict=True)
    ]
    return nn.Sequential(*(layer for block in blocks for layer in block))


def _classifier(flat: int, dropout: float, num_classes: int, bn: _Slot, torchvision: bool) -> nn.Sequential:
    """FC6, FC7 (biases marked 1), FC8 with dropout on FC6/FC7's outputs (paper and seed; Caffe bvlc_alexnet
    train_val.prototxt), FC6/FC7/FC8 at 0/4/8, or on their inputs (torchvision), at 1/4/6."""
    layers: list[nn.Module] = []
    for fc in (_bias_one(nn.Linear(flat, 4096)), _bias_one(nn.Linear(4096, 4096))):
        drop = nn.Dropout(dropout)
        layers += [drop, fc, nn.ReLU(inplace=True)] if torchvision else [fc, nn.ReLU(inplace=True), bn(), drop]
    return nn.Sequential(*layers, nn.Linear(4096, num_classes))
