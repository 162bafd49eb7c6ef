"""Timing helpers: bare training steps on random tensors, and the steady-state timer of a Lightning ``fit``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from alexnet_gtsrb.bench.proc import CpuMeter

__all__ = ["SteadyStateTimer", "measure_train_throughput", "timed_train_throughput"]


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
    optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
    label_smoothing: float = 0.0,
    after_step: Callable[[], None] | None = None,
) -> float:
    """Images per second of full training steps (forward, cross-entropy, backward, optimizer step) on random data.

    Uses ``net``'s device; ``bf16`` wraps the forward in bf16 autocast, ``channels_last`` converts the net and
    the input. ``optimizer`` builds the optimizer from the parameters (the run's own, e.g. a partial of the
    configured one); by default SGD with momentum. Its learning rate is set to 0 so the weights do not drift
    (the optimizer still does all its work; BatchNorm running statistics still update). ``after_step`` runs
    after each optimizer step (an EMA update, say). ``warmup`` untimed steps precede ``steps`` timed ones. The
    net is left in train mode and in channels_last format when requested.
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
    opt = optimizer(net.parameters()) if optimizer else torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9)
    for group in opt.param_groups:
        group["lr"] = 0.0
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = nn.functional.cross_entropy(net(x), y, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def timed_train_throughput(net: nn.Module, **kwargs: Any) -> tuple[float, float]:
    """:func:`measure_train_throughput` (same keywords) and the cores this process tree kept busy meanwhile."""
    meter = CpuMeter()
    value = measure_train_throughput(net, **kwargs)
    return value, meter.cores()


class SteadyStateTimer(Callback):
    """Times training from the end of batch ``warmup`` to the end of the last batch, counting the images.

    Worker start-up, the first prefetch and one-off allocations fall in the warm-up batches; what remains is
    the steady state a long run sees. It also sums, over the timed batches, the time from the end of one batch
    to the start of the next: Lightning fetches the next batch from the loader and copies it to the device
    there, so that share of the time is the time the device waits for data (:meth:`data_wait_fraction`).
    """

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup = warmup
        self.device = device
        self.t0: float | None = None
        self.t1: float | None = None
        self.images = 0
        self.meter = CpuMeter()
        self.cores: float | None = None
        self._last_end: float | None = None
        self.waited = 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._last_end is not None and batch_idx + 1 > self.warmup:
            self.waited += time.perf_counter() - self._last_end

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        _sync(self.device)
        now = time.perf_counter()
        if batch_idx + 1 == self.warmup:
            self.t0 = now
            self.meter.start()
        elif batch_idx + 1 > self.warmup:
            self.images += int(batch[1].numel())
            self.t1 = now
            self.cores = self.meter.cores()
        self._last_end = now

    def data_wait_fraction(self) -> float | None:
        """Share of the timed wall time between batches (fetching the next one, copying it to the device)."""
        if self.t0 is None or self.t1 is None or self.t1 <= self.t0:
            return None
        return self.waited / (self.t1 - self.t0)

    def rate(self) -> float | None:
        """Images per second over the timed batches, or None when there were none."""
        if self.t0 is None or self.t1 is None or self.images == 0:
            return None
        return self.images / (self.t1 - self.t0)
