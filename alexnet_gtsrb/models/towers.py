"""The paper network as two explicit towers of half-width layers, each movable to its own device.

Why: grouped convolution (``AlexNet(variant="paper", groups=2)``) reproduces the paper's *connectivity*; the
paper also *placed* the two halves on two GTX 580 GPUs. :class:`AlexNetTowers` is the same network written
the way it was run (``tower_devices=["cuda:0", "cuda:1"]`` puts one tower on each GPU), numerically the grouped
network (outputs and gradients to 1e-10 in float64, tests/test_towers.py); :func:`grouped_to_towers` /
:func:`towers_to_grouped` map state_dicts both ways.

Per tower (t = 0, 1), with the cross-tower points marked ``<->``::

    conv1 48 kernels 11x11/4 on the full image   (the grouped net's ungrouped conv1, split by output channel)
    ReLU [BN] LRN<->  MaxPool(3, 2) [Dropout]
    conv2 128 5x5 on its own 48 maps              (groups=2)
    ReLU [BN] LRN<->  MaxPool(3, 2) [Dropout]
    conv3 192 3x3 on BOTH towers' 256 maps  <->   (the paper's first cross-GPU connection)
    ReLU [BN]  conv4 192 on its own 192   ReLU [BN]   conv5 128 on its own 192   ReLU [BN]
    MaxPool(3, 2) [Dropout]
    FC6 2048 of 4096 on BOTH towers' pool5  <->   ReLU [BN] Dropout
    FC7 2048 of 4096 on BOTH FC6 halves     <->   ReLU [BN] Dropout
    FC8 (classes) on both FC7 halves, on the first tower's device

Flattening tower 0's pool5 then tower 1's gives the grouped net's channel-major flatten, so the FC6/FC7 halves
(each GPU held half of each FC layer) are row slices of its weights. LRN: the grouped net normalises across all
96 (256) channels, so the window of a channel at the tower boundary reaches two channels of the other tower (in
the paper each GPU normalised its own maps); to be the grouped network, each tower's LRN gets a halo of
``size // 2`` = 2 boundary channels from the other tower. Tower placement survives whole-module moves
(Lightning's); the logits come back on the input's device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from alexnet_gtsrb.models.alexnet import AlexNet, _lrn

__all__ = ["AlexNetTowers", "grouped_to_towers", "towers_to_grouped", "TOWER_LAYERS"]

#: grouped ``AlexNet`` (paper variant, groups=2) module -> tower module; each splits in two along dim 0: conv1-conv5
#: at features.0/6/12/15/18 and FC6/FC7 at classifier.0/4, each followed two slots later by its BatchNorm slot.
TOWER_LAYERS: dict[str, str] = {
    f"{seq}.{i + 2 * is_bn}": f"{'bn' if is_bn else kind}{n}"
    for seq, kind, first, indices in (("features", "conv", 1, (0, 6, 12, 15, 18)), ("classifier", "fc", 6, (0, 4)))
    for n, i in enumerate(indices, first)
    for is_bn in (0, 1)
}
_BACKBONE = {v for k, v in TOWER_LAYERS.items() if k.startswith("features.")}  # conv1-conv5 and their BNs
_WHOLE = {"classifier.8": "fc8"}  # not split: on the first tower's device
_SHARED = ("num_batches_tracked",)  # a BatchNorm counter: the same in both towers


class _Tower(nn.Module):
    """One tower's half-width layers (BatchNorm and dropout slots are ``nn.Identity`` when switched off)."""

    def __init__(self, flat: int, batch_norm: bool, dropout: float, conv_dropout: float) -> None:
        super().__init__()
        bn2 = lambda c: nn.BatchNorm2d(c) if batch_norm else nn.Identity()
        bn1 = lambda c: nn.BatchNorm1d(c) if batch_norm else nn.Identity()
        self.conv1, self.bn1 = nn.Conv2d(3, 48, 11, stride=4, padding=0), bn2(48)
        self.conv2, self.bn2 = nn.Conv2d(48, 128, 5, padding=2), bn2(128)
        self.conv3, self.bn3 = nn.Conv2d(256, 192, 3, padding=1), bn2(192)  # sees both towers
        self.conv4, self.bn4 = nn.Conv2d(192, 192, 3, padding=1), bn2(192)
        self.conv5, self.bn5 = nn.Conv2d(192, 128, 3, padding=1), bn2(128)
        self.fc6, self.bn6 = nn.Linear(flat, 2048), bn1(2048)  # sees both towers' pool5
        self.fc7, self.bn7 = nn.Linear(4096, 2048), bn1(2048)  # sees both FC6 halves
        self.relu, self.relu5 = nn.ReLU(), nn.ReLU()  # conv5's own: the tower's half of the rectified maps (Grad-CAM)
        self.pool = nn.MaxPool2d(3, 2)
        self.conv_drop: nn.Module = nn.Dropout(conv_dropout) if conv_dropout > 0 else nn.Identity()
        self.drop = nn.Dropout(dropout)


class AlexNetTowers(nn.Module):
    """The paper AlexNet (groups=2) as two towers; arguments as :class:`AlexNet`'s plus ``tower_devices``."""

    def __init__(
        self,
        num_classes: int = 43,
        image_size: int = 227,
        lrn: bool = True,
        batch_norm: bool = False,
        dropout: float = 0.5,
        conv_dropout: float = 0.0,
        init: str = "paper",
        lrn_impl: str = "fast",
        tower_devices: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.tower_devices = _check_devices(tower_devices)  # checked first: nothing is built for a bad value
        # The grouped net validates the arguments and gives the shapes and the initialisation (then is dropped).
        grouped = AlexNet(num_classes, image_size, "paper", 2, lrn, batch_norm, dropout, conv_dropout, init, lrn_impl)
        self.num_classes, self.image_size = grouped.num_classes, grouped.image_size
        self.feature_shape, self.flat_features = grouped.feature_shape, grouped.flat_features
        self.lrn = _lrn(lrn, lrn_impl)
        self.halo = 2 if lrn else 0  # size // 2 channels on each side of the LRN window
        self.towers = nn.ModuleList(_Tower(self.flat_features, batch_norm, dropout, conv_dropout) for _ in range(2))
        self.fc8 = nn.Linear(4096, self.num_classes)
        self.load_state_dict(grouped_to_towers(grouped.state_dict()))
        self._place()

    def _place(self) -> None:
        if self.tower_devices is not None:
            for tower, device in zip(self.towers, self.tower_devices, strict=True):
                tower.to(device)
            self.fc8.to(self.tower_devices[0])

    def _apply(self, fn: Any, recurse: bool = True) -> AlexNetTowers:
        super()._apply(fn, recurse)
        self._place()  # .to()/.cuda() of the whole net keeps each tower on its own device
        return self

    def _lrn_pair(self, a: list[torch.Tensor], devices: list[torch.device]) -> list[torch.Tensor]:
        """Each tower's LRN with a halo of the other tower's boundary channels: exactly the LRN over all channels."""
        if self.halo == 0:
            return [self.lrn(t) for t in a]
        h = self.halo
        left = self.lrn(torch.cat([a[0], a[1][:, :h].to(devices[0])], dim=1))[:, :-h]
        right = self.lrn(torch.cat([a[0][:, -h:].to(devices[1]), a[1]], dim=1))[:, h:]
        return [left, right]

    @staticmethod
    def _both(x: list[torch.Tensor], devices: list[torch.device]) -> list[torch.Tensor]:
        """Both towers' tensors concatenated along dim 1, once on each tower's device (a cross-tower point)."""
        return [torch.cat([t.to(d) for t in x], dim=1) for d in devices]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        towers: list[_Tower] = [t for t in self.towers if isinstance(t, _Tower)]
        devices = [next(t.parameters()).device for t in towers]
        a = [t.bn1(t.relu(t.conv1(x.to(d)))) for t, d in zip(towers, devices, strict=True)]
        a = [t.conv_drop(t.pool(y)) for t, y in zip(towers, self._lrn_pair(a, devices), strict=True)]
        a = [t.bn2(t.relu(t.conv2(y))) for t, y in zip(towers, a, strict=True)]
        a = [t.conv_drop(t.pool(y)) for t, y in zip(towers, self._lrn_pair(a, devices), strict=True)]
        a = [t.bn3(t.relu(t.conv3(y))) for t, y in zip(towers, self._both(a, devices), strict=True)]
        a = [t.bn4(t.relu(t.conv4(y))) for t, y in zip(towers, a, strict=True)]
        a = [t.conv_drop(t.pool(t.bn5(t.relu5(t.conv5(y))))).flatten(1) for t, y in zip(towers, a, strict=True)]
        h = [t.drop(t.bn6(t.relu(t.fc6(y)))) for t, y in zip(towers, self._both(a, devices), strict=True)]
        h = [t.drop(t.bn7(t.relu(t.fc7(y)))) for t, y in zip(towers, self._both(h, devices), strict=True)]
        return self.fc8(torch.cat([h[0], h[1].to(devices[0])], dim=1)).to(x.device)

    @staticmethod
    def is_backbone(name: str) -> bool:
        """Whether parameter ``name`` belongs to the convolutional backbone (``model.backbone_lr_scale``)."""
        parts = name.split(".")
        return len(parts) > 2 and parts[0] == "towers" and parts[2] in _BACKBONE

    def rectified_conv5(self) -> list[nn.Module]:
        """Each tower's conv5 ReLU: their outputs, joined along channels, are the grouped net's rectified conv5."""
        return [t.relu5 for t in self.towers if isinstance(t, _Tower)]

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, num_classes={self.num_classes}, tower_devices={self.tower_devices}"


def _check_devices(tower_devices: Sequence[str] | None) -> tuple[str, str] | None:
    if tower_devices is None:
        return None
    names = [] if isinstance(tower_devices, str) else [str(d) for d in tower_devices]
    try:
        devices = [torch.device(d) for d in names]
    except RuntimeError:
        devices = []
    if len(devices) != 2:
        raise ValueError(
            f"model.net.tower_devices={tower_devices!r} must name two devices, e.g. [cuda:0,cuda:1] "
            "(or [cpu,cpu]), or be null to keep both towers where the module is"
        )
    visible = torch.cuda.device_count()
    missing = [d for d in devices if d.type == "cuda" and (d.index or 0) >= visible]
    if missing:
        raise ValueError(f"model.net.tower_devices={names}: {missing[0]} is not available ({visible} GPU(s) visible)")
    return names[0], names[1]


def grouped_to_towers(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """A grouped paper ``AlexNet`` state_dict (keys under ``prefix``, e.g. ``"net."``) -> the tower form's.

    Every split layer's tensors are cut in two along dim 0 (output channels / units); other keys pass through.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        module, _, leaf = key.removeprefix(prefix).rpartition(".") if key.startswith(prefix) else (key, "", "")
        if module in TOWER_LAYERS:
            parts = [value, value] if leaf in _SHARED else value.chunk(2, dim=0)
            for t, part in enumerate(parts):
                out[f"{prefix}towers.{t}.{TOWER_LAYERS[module]}.{leaf}"] = part.clone()
        else:
            out[f"{prefix}{_WHOLE[module]}.{leaf}" if module in _WHOLE else key] = value
    return out


def towers_to_grouped(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The inverse of :func:`grouped_to_towers` (tensors gathered on the first tower's device)."""
    back = {v: k for k, v in {**TOWER_LAYERS, **_WHOLE}.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        parts = key.removeprefix(prefix).split(".") if key.startswith(prefix) else []
        if len(parts) == 4 and parts[0] == "towers" and parts[2] in back:
            if parts[1] == "0":  # gathered with tower 1's half
                other = state_dict[f"{prefix}towers.1.{parts[2]}.{parts[3]}"]
                joined = value if parts[3] in _SHARED else torch.cat([value, other.to(value.device)], dim=0)
                out[f"{prefix}{back[parts[2]]}.{parts[3]}"] = joined
        elif len(parts) == 2 and parts[0] in _WHOLE.values():
            out[f"{prefix}{back[parts[0]]}.{parts[1]}"] = value
        else:
            out[key] = value
    return out
