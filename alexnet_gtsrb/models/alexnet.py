"""AlexNet in three documented variants (paper, Keras "seed" script, torchvision) with exact, tested shapes.

"AlexNet" means different networks in different places: each variant is spelled out layer by layer so that
parameter counts, feature-map sizes and checkpoints are reproducible and comparable.

``paper``  Krizhevsky, Sutskever & Hinton (2012). Convs 96-256-384-384-256 (conv1 11x11/4 pad 0, conv2 5x5
    pad 2, conv3-5 3x3 pad 1); conv2/conv4/conv5 split into ``groups`` (the two GPU "towers"), conv3 and the
    FC layers see both towers; ReLU -> LRN(5, alpha=1e-4, beta=0.75, k=2) after conv1 and conv2; overlapping
    MaxPool(3, 2) after both LRNs and after conv5; FC 4096-4096-classes with dropout on the outputs of FC6
    and FC7 (the paper's "first two fully-connected layers"; Caffe's bvlc_alexnet: fc6 relu6 drop6 fc7 relu7
    drop7 fc8). Classifier indices: FC6 ``classifier.0``, FC7 ``classifier.4``, FC8 ``classifier.8``.
    At 227 px: 96x55x55 -> 96x27x27 -> 256x27x27 -> 256x13x13 -> 384x13x13 -> 384x13x13 -> 256x13x13 ->
    256x6x6 = 9216. 1000 classes: 60,965,224 parameters (62,378,344 with groups=1); 43 classes: 57,044,395.

    LRN alpha: the paper prints ``b = a / (k + alpha * sum a^2)^beta`` with alpha un-divided, but its
    reference code (cuda-convnet), Caffe and ``torch.nn.LocalResponseNorm`` all use ``alpha / n``. We follow
    cuda-convnet/Caffe/torch (``alpha / n``, n = 5), i.e. the paper's alpha=1e-4 acts as 2e-5 per term.

    Non-paper options: ``batch_norm=True`` inserts BatchNorm2d after every conv's ReLU (before LRN/pooling)
    and BatchNorm1d after the FC6 and FC7 ReLUs (before their dropout), as in ``seed``; ``conv_dropout > 0``
    adds Dropout after pool1, pool2 and pool5; ``conv1=(kernel, stride)`` other than (11, 4), with BatchNorm
    only (``model=alexnet_bn``), adapts conv1 to small sources.

``seed``  The model of the Keras "AlexNet" blog script this project started from, layer for layer as its
    ``Sequential`` (``Conv2D(..., activation='relu')`` is the convolution then ReLU; BatchNormalization follows)::

        Conv(96, 11x11, stride 4, valid) ReLU BN MaxPool(3, 2) Dropout
        Conv(256, 5x5, same)             ReLU BN MaxPool(3, 2) Dropout
        Conv(384, 3x3, same)             ReLU BN               Dropout
        Conv(384, 3x3, same)             ReLU BN               Dropout
        Conv(256, 3x3, same)             ReLU BN MaxPool(3, 2) Dropout
        Flatten  Dense(4096) ReLU BN Dropout  Dense(4096) ReLU BN Dropout  Dense(classes)

    Feature indices: conv1-conv5 at 0, 5, 10, 14, 18 (checkpoints of a layout without the conv3/conv4
    dropouts do not fit). The script's printed ``model.summary()`` (26 layers, dropout_1 ... dropout_7; 10
    classes: 30,029,898 trainable + 19,136 non-trainable = 30,049,034; conv1 35x35, flatten 2304) is that of
    a 147-150 px input (150 -> 35 -> 17 -> 17 -> 8 -> 8 -> 3, flatten 256*3*3 = 2304) although the script's
    text says 227. No groups, no LRN. BatchNorm uses Keras' defaults (eps=1e-3, momentum 0.99 == torch
    momentum 0.01). ``conv_dropout`` is the conv-block dropout and ``dropout`` the FC dropout (the script used
    0.5 for both; set them in the config). The final softmax is left to the loss (the model returns logits).
    At 227 px and 43 classes (flatten 9216) it has 58,476,651 trainable parameters (weights, biases, BN
    gamma/beta) plus 19,136 BN running statistics: 58,495,787 Keras-style.

``torchvision``  ``torchvision.models.alexnet`` (the "one weird trick" single-tower layout): convs
    64-192-384-256-256, AdaptiveAvgPool2d(6x6), dropout on the inputs of FC6/FC7 (torchvision's order, kept);
    61,100,840 parameters for 1000 classes; identical module names and indices, so ``state_dict()`` loads
    into torchvision and back.

All variants derive the classifier input from ``image_size`` and reject sizes that shrink a feature map
below 1x1. Works with channels_last and bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from alexnet_gtsrb.models.lrn import LRN
from alexnet_gtsrb.models.shapes import min_image_size, spatial_trace

__all__ = ["VARIANTS", "INITS", "LRN_IMPLS", "VARIANT_REQUIRED", "AlexNet"]

VARIANTS = ("paper", "seed", "torchvision")
INITS = ("paper", "kaiming", "keras", "torch")
LRN_IMPLS = ("fast", "torch")
GROUPS = (1, 2)
# Bounds that keep a network (and so a crafted checkpoint's hyper-parameters) from asking for tens of GB:
# at 512 px the paper network's FC6 already holds 236M weights.
MAX_IMAGE_SIZE = 512
MAX_CLASSES = 10_000

# Constructor arguments a variant requires (the model raises ValueError otherwise); configs must set these.
VARIANT_REQUIRED: dict[str, dict[str, Any]] = {
    "paper": {},
    "seed": {"groups": 1, "lrn": False, "batch_norm": True},
    "torchvision": {"groups": 1, "lrn": False, "batch_norm": False, "conv_dropout": 0.0},
}

_LRN_ARGS: dict[str, Any] = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}


def _bias_one(layer: nn.Conv2d | nn.Linear) -> nn.Conv2d | nn.Linear:
    """Marks a layer whose bias the paper init sets to 1. Paper section 5: "We initialized the neuron biases in
    the second, fourth, and fifth convolutional layers, as well as in the fully-connected hidden layers, with
    the constant 1" (to give the ReLUs positive inputs early); the mark is a plain attribute, not state."""
    layer.paper_bias_one = True  # type: ignore[assignment]
    return layer


_KERAS_BN: dict[str, Any] = {"eps": 1e-3, "momentum": 0.01}


class AlexNet(nn.Module):
    """AlexNet for ``variant`` in ("paper", "seed", "torchvision"); see the module docstring for each layout.

    Attributes: ``features`` (convs), ``avgpool`` (identity, or adaptive 6x6 for torchvision), ``flatten``,
    ``classifier`` (FC layers); ``feature_shape`` (C, H, W) before flattening and ``flat_features``.
    Optional layers (LRN, BatchNorm, conv dropout) that are switched off occupy their slot as ``nn.Identity``
    so parameter names do not shift when they are toggled.
    """

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
        self._validate(num_classes, image_size, variant, groups, lrn, batch_norm, dropout, conv_dropout, init, lrn_impl)
        self.conv1_shape = _check_conv1(conv1, variant, batch_norm)
        self.variant = variant
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.groups = int(groups)
        self.lrn_impl = lrn_impl

        if variant == "torchvision":
            self.features = self._torchvision_features()
            self.avgpool: nn.Module = nn.AdaptiveAvgPool2d((6, 6))
        elif variant == "seed":
            self.features = self._seed_features(conv_dropout)
            self.avgpool = nn.Identity()
        else:
            self.features = self._paper_features(self.groups, lrn, lrn_impl, batch_norm, conv_dropout, self.conv1_shape)
            self.avgpool = nn.Identity()
        self.flatten = nn.Flatten(1)

        trace = spatial_trace(self.features, self.image_size)
        if trace is None:
            raise ValueError(
                f"model.net.image_size={image_size} is too small for the {variant} AlexNet: "
                f"minimum is {min_image_size(self.features)}"
            )
        last_channels = self.conv_layers()[-1].out_channels
        side = 6 if variant == "torchvision" else trace[-1]
        self.feature_shape: tuple[int, int, int] = (last_channels, side, side)
        self.flat_features = last_channels * side * side

        if variant == "torchvision":
            self.classifier = self._torchvision_classifier(dropout, num_classes)
        elif variant == "seed":
            self.classifier = self._seed_classifier(dropout, num_classes)
        else:
            self.classifier = self._paper_classifier(dropout, batch_norm, num_classes)
        self.reset_parameters(init)

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _validate(
        num_classes: int,
        image_size: int,
        variant: str,
        groups: int,
        lrn: bool,
        batch_norm: bool,
        dropout: float,
        conv_dropout: float,
        init: str,
        lrn_impl: str,
    ) -> None:
        # every channel count of conv2/4/5 is even, so both group counts divide them
        choices = {"variant": VARIANTS, "init": INITS, "lrn_impl": LRN_IMPLS, "groups": GROUPS}
        for key, value in {"variant": variant, "init": init, "lrn_impl": lrn_impl, "groups": groups}.items():
            if value not in choices[key]:
                raise ValueError(f"model.net.{key}={value!r} is unknown: allowed values are {list(choices[key])}")
        if not 1 <= int(num_classes) <= MAX_CLASSES:
            raise ValueError(f"model.net.num_classes must lie in 1..{MAX_CLASSES}, got {num_classes}")
        if not 1 <= int(image_size) <= MAX_IMAGE_SIZE:
            raise ValueError(f"model.net.image_size must lie in 1..{MAX_IMAGE_SIZE}, got {image_size}")
        for name, p in (("dropout", dropout), ("conv_dropout", conv_dropout)):
            if not 0.0 <= float(p) < 1.0:
                raise ValueError(f"model.net.{name} must be in [0, 1), got {p}")
        actual = {
            "groups": groups,
            "lrn": bool(lrn),
            "batch_norm": bool(batch_norm),
            "conv_dropout": float(conv_dropout),
        }
        for key, required in VARIANT_REQUIRED[variant].items():
            if actual[key] != required:
                raise ValueError(
                    f"model.net.{key}={actual[key]!r} is not supported by the {variant} AlexNet: it requires "
                    f"{key}={required!r} (set model.net.{key}={str(required).lower()} for this variant)"
                )

    # ------------------------------------------------------------------ builders
    @staticmethod
    def _lrn(enabled: bool, impl: str) -> nn.Module:
        if not enabled:
            return nn.Identity()
        return LRN(**_LRN_ARGS) if impl == "fast" else nn.LocalResponseNorm(**_LRN_ARGS)

    @staticmethod
    def _maybe(enabled: bool, factory: Any, *args: Any, **kwargs: Any) -> nn.Module:
        return factory(*args, **kwargs) if enabled else nn.Identity()

    def _paper_features(
        self, groups: int, lrn: bool, lrn_impl: str, batch_norm: bool, conv_dropout: float, conv1: tuple[int, int]
    ) -> nn.Sequential:
        bn = lambda c: self._maybe(batch_norm, nn.BatchNorm2d, c)
        drop = lambda: self._maybe(conv_dropout > 0, nn.Dropout, conv_dropout)
        return nn.Sequential(
            nn.Conv2d(3, 96, conv1[0], stride=conv1[1], padding=0),  # 0 conv1 (the paper's 11x11/4 by default)
            nn.ReLU(inplace=True),
            bn(96),
            self._lrn(lrn, lrn_impl),
            nn.MaxPool2d(3, 2),
            drop(),
            _bias_one(nn.Conv2d(96, 256, 5, padding=2, groups=groups)),  # 6 conv2
            nn.ReLU(inplace=True),
            bn(256),
            self._lrn(lrn, lrn_impl),
            nn.MaxPool2d(3, 2),
            drop(),
            nn.Conv2d(256, 384, 3, padding=1),  # 12 conv3 (sees both towers)
            nn.ReLU(inplace=True),
            bn(384),
            _bias_one(nn.Conv2d(384, 384, 3, padding=1, groups=groups)),  # 15 conv4
            nn.ReLU(inplace=True),
            bn(384),
            _bias_one(nn.Conv2d(384, 256, 3, padding=1, groups=groups)),  # 18 conv5
            nn.ReLU(inplace=True),
            bn(256),
            nn.MaxPool2d(3, 2),
            drop(),
        )

    def _paper_classifier(self, dropout: float, batch_norm: bool, num_classes: int) -> nn.Sequential:
        # Caffe bvlc_alexnet train_val.prototxt: fc6 relu6 drop6 fc7 relu7 drop7 fc8 (dropout on the outputs).
        return nn.Sequential(
            _bias_one(nn.Linear(self.flat_features, 4096)),  # 0 FC6
            nn.ReLU(inplace=True),
            self._maybe(batch_norm, nn.BatchNorm1d, 4096),
            nn.Dropout(dropout),
            _bias_one(nn.Linear(4096, 4096)),  # 4 FC7
            nn.ReLU(inplace=True),
            self._maybe(batch_norm, nn.BatchNorm1d, 4096),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),  # 8 FC8
        )

    def _seed_features(self, conv_dropout: float) -> nn.Sequential:
        # The origin script's Sequential: every conv block ends in Dropout, conv3 and conv4 included.
        bn = lambda c: nn.BatchNorm2d(c, **_KERAS_BN)
        drop = lambda: self._maybe(conv_dropout > 0, nn.Dropout, conv_dropout)
        return nn.Sequential(
            nn.Conv2d(3, 96, 11, stride=4, padding=0),  # 0 conv1, 'valid'
            nn.ReLU(inplace=True),
            bn(96),
            nn.MaxPool2d(3, 2),
            drop(),
            _bias_one(nn.Conv2d(96, 256, 5, padding=2)),  # 5 conv2, 'same'
            nn.ReLU(inplace=True),
            bn(256),
            nn.MaxPool2d(3, 2),
            drop(),
            nn.Conv2d(256, 384, 3, padding=1),  # 10 conv3
            nn.ReLU(inplace=True),
            bn(384),
            drop(),
            _bias_one(nn.Conv2d(384, 384, 3, padding=1)),  # 14 conv4
            nn.ReLU(inplace=True),
            bn(384),
            drop(),
            _bias_one(nn.Conv2d(384, 256, 3, padding=1)),  # 18 conv5
            nn.ReLU(inplace=True),
            bn(256),
            nn.MaxPool2d(3, 2),
            drop(),
        )

    def _seed_classifier(self, dropout: float, num_classes: int) -> nn.Sequential:
        return nn.Sequential(
            _bias_one(nn.Linear(self.flat_features, 4096)),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(4096, **_KERAS_BN),
            nn.Dropout(dropout),
            _bias_one(nn.Linear(4096, 4096)),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(4096, **_KERAS_BN),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )

    @staticmethod
    def _torchvision_features() -> nn.Sequential:
        # Indices must match torchvision.models.AlexNet exactly (checkpoint compatibility).
        return nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            _bias_one(nn.Conv2d(64, 192, kernel_size=5, padding=2)),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            _bias_one(nn.Conv2d(384, 256, kernel_size=3, padding=1)),
            nn.ReLU(inplace=True),
            _bias_one(nn.Conv2d(256, 256, kernel_size=3, padding=1)),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )

    def _torchvision_classifier(self, dropout: float, num_classes: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Dropout(p=dropout),
            _bias_one(nn.Linear(self.flat_features, 4096)),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            _bias_one(nn.Linear(4096, 4096)),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self, init: str = "paper") -> None:
        """(Re-)initialise weights.

        ``paper``: every conv/FC weight ~ N(0, 0.01); biases 1 in the layers the builders mark (conv2, conv4,
        conv5, FC6, FC7), 0 elsewhere. ``kaiming``: He-normal (fan_in, ReLU gain) weights, zero
        biases, the last layer N(0, 0.01). ``keras``: Glorot-uniform weights and zero biases (Keras defaults,
        the seed script's init). ``torch``: PyTorch's default layer init. BatchNorm: weight 1, bias 0.
        """
        if init not in INITS:
            raise ValueError(f"model.net.init={init!r} is unknown: allowed values are {list(INITS)}")
        convs = self.conv_layers()
        linears = [m for m in self.classifier if isinstance(m, nn.Linear)]
        for module in self.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.reset_parameters()
        layers: list[nn.Conv2d | nn.Linear] = [*convs, *linears]
        if init == "torch":
            for layer in layers:
                layer.reset_parameters()
            return
        for m in layers:
            bias = m.bias
            assert bias is not None  # every AlexNet conv and FC layer has a bias
            if init == "paper":
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.constant_(bias, 1.0 if getattr(m, "paper_bias_one", False) else 0.0)
            elif init == "kaiming":
                if m is linears[-1]:
                    nn.init.normal_(m.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(bias)
            else:  # keras
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(bias)

    # ------------------------------------------------------------------ API
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
        x = self.features(x)
        x = self.avgpool(x)
        x = self.flatten(x)
        return self.classifier(x)

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, image_size={self.image_size}, num_classes={self.num_classes}"


def _check_conv1(conv1: Sequence[int], variant: str, batch_norm: bool) -> tuple[int, int]:
    """(kernel, stride) of conv1: the paper's (11, 4), or kernel 3-11 and stride 1-4 as a GTSRB adaptation to
    small sources in ``model=alexnet_bn`` only (``paper``, ``seed`` and ``torchvision`` stay exact)."""
    shape = tuple(int(v) for v in conv1 if isinstance(v, int)) if isinstance(conv1, Sequence) else ()
    if len(shape) != 2 or len(conv1) != 2 or not (3 <= shape[0] <= 11 and 1 <= shape[1] <= min(4, shape[0])):
        raise ValueError(f"model.net.conv1={conv1!r} must be [kernel, stride] with kernel 3-11, stride 1-4")
    if shape != (11, 4) and not (variant == "paper" and batch_norm):
        raise ValueError(f"model.net.conv1={list(shape)} adapts conv1 to small images: only model=alexnet_bn takes it")
    return shape[0], shape[1]
