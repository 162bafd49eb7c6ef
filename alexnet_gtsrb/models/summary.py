"""Keras-style layer summary (output shapes, parameter counts) of a network, via forward hooks; the command
``python -m alexnet_gtsrb.models.summary [hydra overrides]`` prints it for any model config (``--help``: Hydra's).

Why: the seed Keras script is known only through its printed ``model.summary()``; the same table for our models
(BatchNorm running statistics counted as non-trainable, as Keras does) makes the reconstruction checkable.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from alexnet_gtsrb.utils.cli import CONFIG_PATH, exit_on_user_error

__all__ = ["SummaryRow", "summary_rows", "format_summary", "main"]


@dataclass(frozen=True)
class SummaryRow:
    """One layer, unpacking as ``(layer_name, output_shape, n_params)`` (trainable); ``non_trainable`` counts its
    BatchNorm running mean/variance (and any frozen parameters), as Keras does."""

    layer_name: str
    output_shape: tuple[int, ...]
    n_params: int
    non_trainable: int = 0

    def __iter__(self) -> Iterator[Any]:
        return iter((self.layer_name, self.output_shape, self.n_params))

    def __len__(self) -> int:
        return 3


def _own_counts(module: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters(recurse=False) if not p.requires_grad)
    stats = sum(b.numel() for name, b in module.named_buffers(recurse=False) if name in ("running_mean", "running_var"))
    return trainable, frozen + stats


@torch.no_grad()
def summary_rows(net: nn.Module, image_size: int, in_channels: int = 3) -> list[SummaryRow]:
    """A row per leaf module in call order (``nn.Identity`` skipped) from one eval-mode forward pass of a
    ``(1, in_channels, image_size, image_size)`` input on the net's device; output shapes exclude the batch."""
    rows: list[SummaryRow] = []
    seen: set[int] = set()

    def record(name: str, module: nn.Module, _inputs: object, output: object) -> None:
        shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()
        trainable, non_trainable = (0, 0) if id(module) in seen else _own_counts(module)
        seen.add(id(module))
        rows.append(SummaryRow(f"{name} ({type(module).__name__})", shape, trainable, non_trainable))

    handles = [
        module.register_forward_hook(functools.partial(record, name or type(module).__name__))
        for name, module in net.named_modules()
        if next(module.children(), None) is None and not isinstance(module, nn.Identity)
    ]
    param = next(net.parameters())
    was_training = net.training
    net.eval()
    try:
        net(torch.zeros(1, in_channels, image_size, image_size, device=param.device, dtype=param.dtype))
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    # Parameters owned by non-leaf (or uncalled) modules would otherwise be missed: one extra row for them.
    rest = [_own_counts(m) for m in net.modules() if id(m) not in seen]
    trainable, non_trainable = sum(t for t, _ in rest), sum(nt for _, nt in rest)
    if trainable or non_trainable:
        rows.append(SummaryRow("(parameters outside leaf modules)", (), trainable, non_trainable))
    return rows


def format_summary(rows: Sequence[SummaryRow | tuple[str, tuple[int, ...], int]], title: str = "") -> str:
    """A Keras ``model.summary()``-like table (Param # includes BN statistics) with the total, trainable and
    non-trainable counts. Plain 3-tuples are all-trainable."""
    heads = ("Layer (type)", "Output shape", "Param #")
    table = [heads]
    trainable = non_trainable = 0
    for row in rows:
        name, shape, n = row
        nt = getattr(row, "non_trainable", 0)
        trainable, non_trainable = trainable + n, non_trainable + nt
        table.append((name, "x".join(str(d) for d in shape) or "-", f"{n + nt:,}"))
    w_name, w_shape, w_n = (max(len(r[i]) for r in table) for i in range(3))
    rule = "=" * (w_name + w_shape + w_n + 4)
    header, *body = [f"{a:<{w_name}}  {b:<{w_shape}}  {c:>{w_n}}" for a, b, c in table]
    lines = [*([title] if title else []), header, rule, *body]
    lines += [
        rule,
        f"Total params: {trainable + non_trainable:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {non_trainable:,} (BatchNorm running mean/var, counted like Keras)",
    ]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="summary")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """The table for any model config, e.g. ``model=alexnet_seed data.image_size=150 data.num_classes=10``
    (``conf/summary.yaml`` composes the training config); nothing is written to disk."""
    net = instantiate(cfg.model.net)
    spec = " ".join(f"{k}={v}" for k, v in cfg.model.net.items() if k != "_target_")
    print(format_summary(summary_rows(net, int(cfg.model.net.image_size)), title=f"AlexNet {spec}"))


if __name__ == "__main__":
    main()
