"""Feature-map sizes of a stack of convolutions and poolings, computed from the layers' arithmetic (no forward
pass): what the classifier's input size is, and the smallest image a network accepts."""

from __future__ import annotations

from torch import nn


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _pair0(v: int | str | tuple[int, ...]) -> int:
    if isinstance(v, str):  # padding='same'/'valid' is not used by any variant
        raise NotImplementedError(f"string padding {v!r}")
    return v[0] if isinstance(v, tuple) else int(v)


def spatial_trace(features: nn.Sequential, image_size: int) -> list[int] | None:
    """Spatial size after each layer of ``features`` for a square input, or None if one drops below 1."""
    size, trace = image_size, []
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            size = _out_size(size, layer.kernel_size[0], layer.stride[0], _pair0(layer.padding), layer.dilation[0])
        elif isinstance(layer, nn.MaxPool2d):
            if layer.ceil_mode:
                raise NotImplementedError("ceil_mode pooling is not used by any AlexNet variant")
            size = _out_size(
                size,
                _pair0(layer.kernel_size),
                _pair0(layer.stride),
                _pair0(layer.padding),
                _pair0(layer.dilation),
            )
        if size < 1:
            return None
        trace.append(size)
    return trace


def min_image_size(features: nn.Sequential) -> int:
    """Smallest square input for which no feature map of ``features`` drops below 1x1."""
    for size in range(1, 4097):
        if spatial_trace(features, size) is not None:
            return size
    raise ValueError("no input size up to 4096 fits this network")
