"""Timing: the one timed loop of every section, bare training steps on random tensors, the steady-state timer of
a Lightning ``fit``, and the cores this process tree kept busy meanwhile (live DataLoader workers are read from
/proc; elsewhere their share is missing).

The loop is not ``torch.utils.benchmark.Timer``: that adds at least two hidden warm-up calls per measurement (a
bf16 training step on a CPU can take a minute) and runs on one thread unless told, and ``bench.warmup`` is exact.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

__all__ = ["SteadyStateTimer", "cores_note", "measure_train_throughput", "timed", "train_step", "usable_cores"]


def cpu_seconds() -> float:
    """CPU seconds used so far by this process, its finished children and its live ones."""
    total = sum(sum(resource.getrusage(w)[:2]) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    for listing in Path("/proc/self/task").glob("*/children"):  # one file per thread: the children it started
        with contextlib.suppress(OSError, IndexError, ValueError):
            for pid in listing.read_text().split():
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # utime, stime: 11, 12
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cores_note(cores: float) -> str:
    """``"1.95/2 cores busy"``: well under the usable count means other jobs took the CPU meanwhile."""
    return f"{cores:.2f}/{usable_cores()} cores busy"


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    fn: Callable[[], Any], calls: int, warmup: int = 0, device: torch.device | None = None
) -> tuple[float, float]:
    """Seconds per call of ``fn`` over ``calls`` calls after ``warmup`` untimed ones (a CUDA ``device`` is
    synchronised at both ends), and the cores this process tree kept busy meanwhile."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(calls):
        fn()
    _sync(device)
    wall = time.perf_counter() - start
    return wall / calls, (cpu_seconds() - cpu) / max(wall, 1e-9)


def train_step(
    net: nn.Module,
    batch: int,
    image_size: int,
    bf16: bool = True,
    channels_last: bool = True,
    num_classes: int | None = None,
    optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
    label_smoothing: float = 0.0,
    after_step: Callable[[], None] | None = None,
) -> Callable[[], None]:
    """One training step (forward, cross-entropy, backward, optimizer step, ``after_step``) of ``net`` on fixed
    random data on its device. ``bf16``: the forward under bf16 autocast; ``channels_last``: the net (converted
    now) and the input. ``optimizer`` builds one from the parameters (default SGD with momentum); its learning
    rate is set to 0 so the weights stay put while it does all its work (BatchNorm statistics still update)."""
    device = next(net.parameters()).device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net.to(memory_format=memory_format).train()
    x = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, num_classes or int(getattr(net, "num_classes", 0)) or 1000, (batch,), device=device)
    opt = optimizer(net.parameters()) if optimizer else torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9)
    for group in opt.param_groups:
        group["lr"] = 0.0

    def step() -> None:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(net(x), y, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()

    return step


def measure_train_throughput(
    net: nn.Module, batch: int = 64, image_size: int = 227, steps: int = 5, warmup: int = 3, **step_kwargs: Any
) -> float:
    """Images per second of ``steps`` :func:`train_step` calls (keywords: bf16, channels_last, num_classes,
    optimizer, label_smoothing, after_step) after ``warmup`` untimed ones."""
    if steps < 1 or warmup < 0 or batch < 1:
        raise ValueError(f"need steps >= 1, warmup >= 0, batch >= 1; got {steps=}, {warmup=}, {batch=}")
    step = train_step(net, batch, image_size, **step_kwargs)
    return batch / timed(step, steps, warmup, next(net.parameters()).device)[0]


class SteadyStateTimer(Callback):
    """Times ``fit`` from the end of batch ``warmup`` to the end of the last batch, counting the images (worker
    start-up, the first prefetch and one-off allocations fall in the warm-up). It also sums, over the timed
    batches, the time from the end of one batch to the start of the next: Lightning fetches the next batch and
    copies it to the device there, so that share is the time the device waits for data."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.t0: float | None = None
        self.t1: float | None = None
        self.last_end: float | None = None
        self.images, self.waited, self.cpu0, self.cores = 0, 0.0, 0.0, 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.last_end is not None and batch_idx >= self.warmup:
            self.waited += time.perf_counter() - self.last_end

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        _sync(self.device)
        self.last_end = now = time.perf_counter()
        if batch_idx + 1 == self.warmup:
            self.t0, self.cpu0 = now, cpu_seconds()
        elif batch_idx >= self.warmup and self.t0 is not None:
            self.images, self.t1 = self.images + int(batch[1].numel()), now
            self.cores = (cpu_seconds() - self.cpu0) / max(now - self.t0, 1e-9)

    def rate(self) -> float | None:
        """Images per second over the timed batches, or None when there were none."""
        return self.images / (self.t1 - self.t0) if self.t0 is not None and self.t1 is not None else None

    def data_wait_fraction(self) -> float | None:
        """Share of the timed wall time between batches (fetching the next one, copying it to the device)."""
        return self.waited / (self.t1 - self.t0) if self.t0 is not None and self.t1 is not None else None
