"""Training-throughput measurement on synthetic data, shared by the tests and a ``bench`` command."""

from __future__ import annotations

import contextlib
import time

import torch
from torch import nn

__all__ = ["measure_train_throughput"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_train_throughput(
    net: nn.Module,
    batch: int = 64,
    image_size: int = 227,
    steps: int = 5,
    warmup: int = 3,
    bf16: bool = True,
    channels_last: bool = True,
    num_classes: int | None = None,
) -> float:
    """Images per second of full training steps (forward, cross-entropy, backward, SGD step) on random data.

    Uses ``net``'s device; ``bf16`` wraps the forward in bf16 autocast, ``channels_last`` converts the net and
    the input. The optimizer is SGD with momentum and ``lr=0`` so the weights do not drift (BatchNorm running
    statistics still update). ``warmup`` untimed steps precede ``steps`` timed ones. The net is left in train
    mode and in channels_last format when requested.
    """
    if steps < 1 or warmup < 0 or batch < 1:
        raise ValueError(f"need steps >= 1, warmup >= 0, batch >= 1; got {steps=}, {warmup=}, {batch=}")
    param = next(net.parameters())
    device = param.device
    if num_classes is None:
        num_classes = int(getattr(net, "num_classes", 0)) or 1000
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net.to(memory_format=memory_format)
    net.train()
    x = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, num_classes, (batch,), device=device)
    opt = torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - start)
