"""ImageNet weights for the ``torchvision`` variant: ``model.pretrained=imagenet`` or ``=/path/to/weights.pth``.

``imagenet`` goes through torchvision's weights API (``AlexNet_Weights.IMAGENET1K_V1``, cached in
``$TORCH_HOME/hub/checkpoints``); a local file is read as plain tensors (``weights_only=True``). The backbone and
FC6/FC7 are copied, the 1000-class head (``classifier.6``) is left as initialised, once, when a run starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet_gtsrb.errors import ConfigError, UserError
from alexnet_gtsrb.utils.files import MAX_CHECKPOINT_BYTES, check_regular_file

IMAGENET = "imagenet"
HEAD = "classifier.6."  # torchvision AlexNet's last Linear (1000 ImageNet classes)


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet AlexNet weights, through its weights API (cached after the first download)."""
    from torchvision.models import AlexNet_Weights

    weights = AlexNet_Weights.IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False)
    except OSError as exc:  # urllib's URLError and socket errors are OSErrors
        reason = str(getattr(exc, "reason", exc)).strip()[:160]
        raise UserError(
            f"model.pretrained=imagenet: cannot download torchvision's ImageNet AlexNet weights ({reason}). "
            f"Without internet, fetch {weights.url} elsewhere and pass model.pretrained=/path/to/"
            f"{weights.url.rsplit('/', 1)[-1]} (or put it in $TORCH_HOME/hub/checkpoints/)."
        ) from None


def file_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict saved with ``torch.save`` (a Lightning checkpoint's ``state_dict`` with ``net.`` prefixes too)."""
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise UserError(f"model.pretrained={p}: no such file (give a .pth state_dict, or imagenet).")
    fix = "Give model.pretrained=<a .pth state_dict file> or imagenet."
    check_regular_file(p, "model.pretrained weights file", MAX_CHECKPOINT_BYTES, fix)  # a pipe blocks torch.load
    try:
        raw = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zips, foreign files: one line
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(f"model.pretrained={p}: not a plain-tensor state_dict ({reason}).") from None
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = {k.removeprefix("net."): v for k, v in raw["state_dict"].items()}
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise UserError(f"model.pretrained={p}: expected a mapping of tensor names to tensors.")
    return {str(k): v for k, v in raw.items()}


def load_pretrained(net: nn.Module, source: str) -> dict[str, Any]:
    """Copy ``source``'s weights into ``net`` (the torchvision variant), all but the 1000-class head; a tensor
    missing, of another shape or non-finite stops with its name. Returns (source, tensors loaded, head left)."""
    if getattr(net, "variant", None) != "torchvision":
        raise ConfigError(
            f"model.pretrained={source}: ImageNet weights exist for torchvision's layout only; use "
            "model=alexnet_torchvision."
        )
    state = imagenet_state_dict() if source == IMAGENET else file_state_dict(source)
    own = net.state_dict()
    wanted = {k: v for k, v in own.items() if not k.startswith(HEAD)}
    for name, tensor in wanted.items():
        if name not in state:
            raise ConfigError(f"model.pretrained={source}: it has no tensor {name!r} (not a torchvision AlexNet?).")
        if state[name].shape != tensor.shape:
            raise ConfigError(
                f"model.pretrained={source}: {name} has shape {tuple(state[name].shape)}, the network "
                f"{tuple(tensor.shape)}."
            )
        if not torch.isfinite(state[name]).all():
            raise ConfigError(f"model.pretrained={source}: {name} holds NaN/inf values.")
    net.load_state_dict({k: state[k] for k in wanted}, strict=False)
    return {"source": source, "tensors": len(wanted), "head_left": sorted(k for k in own if k.startswith(HEAD))}
