"""Keras-style layer summary (output shapes, parameter counts) of a network, via forward hooks.

Why: the seed Keras script is known only through its printed ``model.summary()``; printing the same table for
our PyTorch models (counting BatchNorm running statistics as non-trainable parameters, as Keras does) makes
the reconstruction checkable line by line. The command line is :mod:`alexnet_gtsrb.models.summary`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["SummaryRow", "summary_rows", "format_summary"]

_STAT_BUFFERS = ("running_mean", "running_var")


class SummaryRow(tuple):
    """One layer: unpacks as ``(layer_name, output_shape, n_params)``, plus a ``non_trainable`` attribute.

    ``n_params`` counts the layer's trainable parameters; ``non_trainable`` counts its BatchNorm running
    mean/variance (and any frozen parameters) — what Keras reports as non-trainable params.
    """

    non_trainable: int

    def __new__(
        cls, layer_name: str, output_shape: tuple[int, ...], n_params: int, non_trainable: int = 0
    ) -> SummaryRow:
        row = super().__new__(cls, (layer_name, tuple(output_shape), int(n_params)))
        row.non_trainable = int(non_trainable)
        return row

    @property
    def layer_name(self) -> str:
        return self[0]

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self[1]

    @property
    def n_params(self) -> int:
        return self[2]

    def __repr__(self) -> str:
        return f"SummaryRow({self[0]!r}, {self[1]!r}, {self[2]!r}, non_trainable={self.non_trainable!r})"


def _own_counts(module: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters(recurse=False) if not p.requires_grad)
    stats = sum(b.numel() for name, b in module.named_buffers(recurse=False) if name in _STAT_BUFFERS)
    return trainable, frozen + stats


@torch.no_grad()
def summary_rows(net: nn.Module, image_size: int, in_channels: int = 3) -> list[SummaryRow]:
    """``(layer_name, output_shape, n_params)`` per leaf module, in call order (``nn.Identity`` skipped).

    Runs one eval-mode forward pass of a ``(1, in_channels, image_size, image_size)`` input on the net's
    device; the net's train/eval mode is restored afterwards. Output shapes exclude the batch dimension.
    """
    rows: list[SummaryRow] = []
    seen: set[int] = set()
    handles = []

    def hook(name: str):
        def record(module: nn.Module, _inputs: object, output: object) -> None:
            shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()
            trainable, non_trainable = (0, 0) if id(module) in seen else _own_counts(module)
            seen.add(id(module))
            rows.append(SummaryRow(f"{name} ({type(module).__name__})", shape, trainable, non_trainable))

        return record

    for name, module in net.named_modules():
        if next(module.children(), None) is None and not isinstance(module, nn.Identity):
            handles.append(module.register_forward_hook(hook(name or type(module).__name__)))
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = net.training
    net.eval()
    try:
        net(torch.zeros(1, in_channels, image_size, image_size, device=device, dtype=dtype))
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    # Parameters owned by non-leaf modules (rare) would otherwise be missed: report them as one extra row.
    counted = sum(r.n_params + r.non_trainable for r in rows)
    own_total = sum(p.numel() for p in net.parameters()) + sum(
        b.numel() for n, b in net.named_buffers() if n.rsplit(".", 1)[-1] in _STAT_BUFFERS
    )
    if own_total != counted:
        hooked = {id(m) for m in net.modules() if id(m) in seen}
        trainable = non_trainable = 0
        for m in net.modules():
            if id(m) not in hooked:
                t, nt = _own_counts(m)
                trainable, non_trainable = trainable + t, non_trainable + nt
        rows.append(SummaryRow("(parameters outside leaf modules)", (), trainable, non_trainable))
    return rows


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if shape else "-"


def format_summary(rows: Sequence[SummaryRow | tuple[str, tuple[int, ...], int]], title: str = "") -> str:
    """A Keras ``model.summary()``-like table: layer, output shape (CxHxW), Param # (incl. BN statistics).

    Totals: trainable params, non-trainable params (BatchNorm running mean/var, counted like Keras) and total.
    Plain 3-tuples are accepted (treated as all-trainable).
    """
    table = []
    trainable = non_trainable = 0
    for row in rows:
        name, shape, n = row[0], row[1], row[2]
        nt = getattr(row, "non_trainable", 0)
        trainable += n
        non_trainable += nt
        table.append((name, _fmt_shape(shape), f"{n + nt:,}"))
    w_name = max([len("Layer (type)"), *(len(r[0]) for r in table)])
    w_shape = max([len("Output shape"), *(len(r[1]) for r in table)])
    w_n = max([len("Param #"), *(len(r[2]) for r in table)])
    rule = "=" * (w_name + w_shape + w_n + 4)
    lines = [title] if title else []
    lines += [f"{'Layer (type)':<{w_name}}  {'Output shape':<{w_shape}}  {'Param #':>{w_n}}", rule]
    lines += [f"{a:<{w_name}}  {b:<{w_shape}}  {c:>{w_n}}" for a, b, c in table]
    lines += [
        rule,
        f"Total params: {trainable + non_trainable:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {non_trainable:,} (BatchNorm running mean/var, counted like Keras)",
    ]
    return "\n".join(lines)
