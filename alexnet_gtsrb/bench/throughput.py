"""Timing, the result ``Row``, and the sections that need no data: ``ceiling``, ``lrn``, ``precision``, ``ema``.

The one timed loop is not ``torch.utils.benchmark.Timer``: that adds at least two hidden warm-up calls per
measurement (a bf16 training step on a CPU can take a minute) and runs on one thread unless told, and
``bench.warmup`` is exact. Busy cores count live DataLoader workers from /proc (elsewhere their share is missing).
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn, get_ema_multi_avg_fn


@dataclass
class Row:
    """One measurement. ``ratio`` is value / the value of row ``reference``; ``target`` like ">= 0.90"."""

    section: str
    what: str
    value: float | None
    unit: str
    ratio: float | None = None
    reference: str | None = None
    target: str | None = None
    note: str | None = None
    met: bool | None = None


def ratio(value: float | None, ref: float | None) -> float | None:
    """value / ref, or None when either is missing or ref is 0."""
    return None if value is None or not ref else value / ref


def device(cfg: DictConfig) -> torch.device:
    """The device Lightning would pick for ``trainer.accelerator`` (single device)."""
    acc = str(cfg.trainer.get("accelerator", "auto"))
    cuda = acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())
    return torch.device("cuda", 0) if cuda else torch.device("cpu")


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
        return None if self.t0 is None or self.t1 is None else self.images / (self.t1 - self.t0)

    def data_wait_fraction(self) -> float | None:
        """Share of the timed wall time between batches (fetching the next one, copying it to the device)."""
        return None if self.t0 is None or self.t1 is None else self.waited / (self.t1 - self.t0)


# -- the sections that need no data (config and options in, rows out) ----------------------------------------
def _steps(section: str, what: str, net: Any, batch: int, cfg: DictConfig, opts: dict, **kwargs: Any) -> Row:
    """A row of ``net``'s bare training img/s as configured, unless ``kwargs`` (of :func:`train_step`, warmup) say."""
    warmup = kwargs.pop("warmup", opts["warmup"])
    bf16 = str(cfg.trainer.get("precision", "32-true")).startswith("bf16")
    kwargs = {"bf16": bf16, "channels_last": bool(cfg.model.channels_last), **kwargs}
    step = train_step(net.to(device(cfg)), batch, int(cfg.data.image_size), **kwargs)
    seconds, cores = timed(step, opts["steps"], warmup, device(cfg))
    return Row(section, what, batch / seconds, "img/s", note=cores_note(cores))


def ema_config(cfg: DictConfig) -> DictConfig | None:
    """The configured EMA callback's config (``callbacks=ema``), or None when the run averages no weights."""
    found = [c for c in (cfg.get("callbacks") or {}).values() if isinstance(c, DictConfig)]
    return next((c for c in found if str(c.get("_target_")).endswith("EMAWeights")), None)


def top_ops(prof: Any, n: int) -> list[tuple[str, float, float, int]]:
    """The ``n`` operators with the most self CPU time: (name, self CPU us, share of all self CPU time, calls)."""
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [(e.key, e.self_cpu_time_total, e.self_cpu_time_total / total, e.count) for e in events[:n]]


def bench_ceiling(cfg: DictConfig, opts: dict[str, Any]) -> list[Row]:
    """a. Bare training steps on random tensors (the most the model can do here), then with the EMA update if any."""
    net, batch = instantiate(cfg.model.net).to(device(cfg)), int(cfg.data.batch_size)
    opt_cfg = cfg.model.get("optimizer") or cfg.get("optimizer")
    name = str(opt_cfg["_target_"]).rsplit(".", 1)[-1] + (" fused" if opt_cfg.get("fused") else "")
    train = {"optimizer": instantiate(opt_cfg), "label_smoothing": float(cfg.model.get("label_smoothing") or 0.0)}
    rows = [_steps("ceiling", f"bare train steps, random tensors ({name})", net, batch, cfg, opts, **train)]
    if (ema := ema_config(cfg)) is not None:
        decay = float(ema.get("decay", 0.998))
        average = AveragedModel(net, use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(decay))
        train["after_step"] = functools.partial(average.update_parameters, net)
        rows.append(_steps("ceiling", "the same + EMA update per step", net, batch, cfg, opts, **train))
        rows[1].ratio, rows[1].reference = ratio(rows[1].value, rows[0].value), "bare"
    return rows


def bench_lrn(cfg: DictConfig, opts: dict[str, Any]) -> list[Row]:
    """d. The paper model's training img/s without LRN, with the fast LRN and with torch's LRN."""
    from alexnet_gtsrb.models.alexnet import AlexNet

    batch, rows = int(opts["lrn_batch"] or cfg.data.batch_size), []
    classes, size = int(cfg.data.num_classes), int(cfg.data.image_size)
    kinds = (("no LRN", ""), ("fast LRN (alexnet_gtsrb.models.lrn)", "fast"), ("torch.nn.LocalResponseNorm", "torch"))
    for what, impl in kinds:
        torch.manual_seed(0)
        net = AlexNet(classes, size, "paper", 2, lrn=bool(impl), lrn_impl=impl or "fast", batch_norm=False)
        rows.append(_steps("lrn", f"paper model, {what}", net, batch, cfg, opts))
    rows[0].note = f"batch {batch}, {rows[0].note}"
    for r in rows[1:]:
        r.ratio, r.reference = ratio(r.value, rows[0].value), "no LRN"
    rows[1].target = ">= 0.75"
    return rows


def bench_precision(cfg: DictConfig, opts: dict[str, Any]) -> list[Row]:
    """f. Bare training img/s: fp32 NCHW, fp32 channels_last (the reference), bf16, torch.compile; top ops."""
    from torch.profiler import ProfilerActivity, profile

    batch, rows = int(opts["precision_batch"] or cfg.data.batch_size), []
    for what, half, channels_last, compiled in (
        ("fp32, NCHW", False, False, False),
        ("fp32, channels_last", False, True, False),
        ("bf16 autocast, channels_last", True, True, False),
        ("fp32, channels_last, torch.compile", False, True, True),
    ):
        torch.manual_seed(0)
        net, note = instantiate(cfg.model.net).to(device(cfg)), f"batch {batch}"
        if channels_last and not compiled:  # the two precisions the question is about
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                train_step(net, batch, int(cfg.data.image_size), half)()
            note += "; top ops: " + ", ".join(f"{op} {100 * share:.0f}%" for op, _, share, _ in top_ops(prof, 3))
        kwargs = {"bf16": half, "channels_last": channels_last, "warmup": max(1, opts["warmup"]) + compiled}
        rows.append(_steps("precision", what, torch.compile(net) if compiled else net, batch, cfg, opts, **kwargs))
        rows[-1].note = f"{note}; {rows[-1].note}"
    for r in rows[:1] + rows[2:]:
        r.ratio, r.reference = ratio(r.value, rows[1].value), rows[1].what
    return rows


def bench_ema(cfg: DictConfig, opts: dict[str, Any]) -> list[Row]:
    """g. One EMA update of ``model.net`` (weights and buffers): per-tensor ``avg_fn`` vs foreach, in ms."""
    net = instantiate(cfg.model.net).to(device(cfg))
    values = sum(t.numel() for t in (*net.parameters(), *net.buffers()) if t.is_floating_point())
    updates, rows = max(5, 5 * opts["steps"]), []
    for what, avg_fn, multi_avg_fn in (
        ("per-tensor avg_fn (EMAWeightAveraging)", get_ema_avg_fn(0.998), None),
        ("foreach multi_avg_fn (callbacks=ema)", None, get_ema_multi_avg_fn(0.998)),
    ):
        average = AveragedModel(net, use_buffers=True, avg_fn=avg_fn, multi_avg_fn=multi_avg_fn)
        seconds, cores = timed(functools.partial(average.update_parameters, net), updates, 1, device(cfg))
        note = f"{updates} updates of {values:,} values; {cores_note(cores)}"  # 1 warm-up: the first only copies
        rows.append(Row("ema", f"EMA update, {what}", 1000 * seconds, "ms", note=note))
    rows[1].ratio, rows[1].reference = ratio(rows[1].value, rows[0].value), rows[0].what.removeprefix("EMA update, ")
    return rows


COMPUTE = {"ceiling": bench_ceiling, "lrn": bench_lrn, "precision": bench_precision, "ema": bench_ema}
