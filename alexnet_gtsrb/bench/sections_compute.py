"""The sections that need no data: ``ceiling``, ``lrn``, ``precision`` and ``ema`` (one function each).

Each takes the composed config and the validated bench options and returns its table rows.
"""

from __future__ import annotations

import functools
import gc
import time
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from alexnet_gtsrb.bench.options import Row, device, precision, ratio
from alexnet_gtsrb.bench.proc import CpuMeter, cores_note
from alexnet_gtsrb.bench.throughput import measure_train_throughput, timed_train_throughput

__all__ = ["bench_ceiling", "bench_ema", "bench_lrn", "bench_precision", "ema_callback_config"]


def _configured_rate(
    net: torch.nn.Module, batch: int, cfg: DictConfig, opts: dict[str, Any], **kwargs: Any
) -> tuple[float, float]:
    """img/s and busy cores of ``net``'s bare training steps at the configured size, precision, memory format."""
    return timed_train_throughput(
        net,
        batch=batch,
        image_size=int(cfg.data.image_size),
        steps=opts["steps"],
        warmup=opts["warmup"],
        bf16=precision(cfg)[1],
        channels_last=bool(cfg.model.channels_last),
        **kwargs,
    )


def ema_callback_config(cfg: DictConfig) -> DictConfig | None:
    """The configured EMA callback's config (``callbacks=ema``), or None when the run averages no weights."""
    callbacks = cfg.get("callbacks") or {}
    for c in callbacks.values():
        if isinstance(c, DictConfig) and str(c.get("_target_", "")).endswith("EMAWeights"):
            return c
    return None


def bench_ceiling(cfg: DictConfig, opts: dict[str, Any]) -> list[Row]:
    """a. Bare training steps of ``model.net`` on random tensors with the configured optimizer and loss: the most
    the model can do here; then the same steps each followed by the configured EMA update (if any)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    net = instantiate(cfg.model.net).to(device(cfg))
    opt_cfg = cfg.model.get("optimizer") or cfg.get("optimizer")
    name = str(opt_cfg["_target_"]).rsplit(".", 1)[-1]
    fused = " fused" if opt_cfg.get("fused") else ""
    kwargs = {"optimizer": instantiate(opt_cfg), "label_smoothing": float(cfg.model.get("label_smoothing") or 0.0)}
    batch = int(cfg.data.batch_size)
    value, cores = _configured_rate(net, batch, cfg, opts, **kwargs)
    rows = [Row("ceiling", f"bare train steps, random tensors ({name}{fused})", value, "img/s", note=cores_note(cores))]
    ema = ema_callback_config(cfg)
    if ema is not None:
        decay = float(ema.get("decay", 0.998))
        average = AveragedModel(net, use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(decay))
        update = functools.partial(average.update_parameters, net)
        value, cores = _configured_rate(net, batch, cfg, opts, after_step=update, **kwargs)
        rows.append(
            Row("ceiling", "the same + EMA update per step", value, "img/s", reference="bare", note=cores_note(cores))
        )
        rows[-1].ratio = ratio(value, rows[0].value)
        del average
    del net
    gc.collect()
    return rows


def bench_lrn(cfg: DictConfig, opts: dict[str, Any]) -> list[Row]:
    """d. The paper model's training img/s without LRN, with the fast LRN and with torch's LRN."""
    from alexnet_gtsrb.models.alexnet import AlexNet

    batch = int(opts["lrn_batch"] or cfg.data.batch_size)
    rows = []
    for lrn, impl in ((False, "fast"), (True, "fast"), (True, "torch")):
        torch.manual_seed(0)
        net = AlexNet(
            int(cfg.data.num_classes),
            int(cfg.data.image_size),
            variant="paper",
            groups=2,
            lrn=lrn,
            lrn_impl=impl,
            batch_norm=False,
            init="paper",
        ).to(device(cfg))
        value, cores = _configured_rate(net, batch, cfg, opts)
        del net
        gc.collect()
        if not lrn:
            rows.append(Row("lrn", "paper model, no LRN", value, "img/s", note=f"batch {batch}, {cores_note(cores)}"))
            continue
        what = "fast LRN (alexnet_gtsrb.models.lrn)" if impl == "fast" else "torch.nn.LocalResponseNorm"
        target = ">= 0.75" if impl == "fast" else None
        rows.append(
            Row(
                "lrn", f"paper model, {what}", value, "img/s", reference="no LRN", target=target, note=cores_note(cores)
            )
        )
    for r in rows[1:]:
        r.ratio = ratio(r.value, rows[0].value)
    return rows


def _profile_step(net: torch.nn.Module, batch: int, size: int, bf16: bool, top: int = 3) -> str:
    """torch.profiler over one training step: the ops with the most self CPU time, as 'op share%'."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        measure_train_throughput(net, batch=batch, image_size=size, steps=1, warmup=0, bf16=bf16)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return ", ".join(f"{e.key} {100 * e.self_cpu_time_total / total:.0f}%" for e in events[:top])


def bench_precision(cfg: DictConfig, opts: dict[str, Any]) -> list[Row]:
    """f. The configured network's bare training img/s in fp32 NCHW, fp32 channels_last, bf16 autocast +
    channels_last, and fp32 channels_last under ``torch.compile``; bf16 and fp32 steps profiled."""
    batch = int(opts["precision_batch"] or cfg.data.batch_size)
    size = int(cfg.data.image_size)
    base_what = "fp32, channels_last"
    rows: list[Row] = []
    variants = (
        ("fp32, NCHW", False, False, False),
        (base_what, False, True, False),
        ("bf16 autocast, channels_last", True, True, False),
        ("fp32, channels_last, torch.compile", False, True, True),
    )
    for what, bf16, channels_last, compiled in variants:
        torch.manual_seed(0)
        net = instantiate(cfg.model.net).to(device(cfg))
        note = f"batch {batch}"
        if not compiled:
            prof_net = net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            if channels_last:  # profile the two precisions the question is about
                note += "; top ops: " + _profile_step(prof_net, batch, size, bf16)
        run_net: Any = torch.compile(net) if compiled else net
        warmup = max(1, opts["warmup"]) + (1 if compiled else 0)  # compile happens in the first steps
        value, cores = timed_train_throughput(
            run_net,
            batch=batch,
            image_size=size,
            steps=opts["steps"],
            warmup=warmup,
            bf16=bf16,
            channels_last=channels_last,
        )
        ref = None if what == base_what else base_what
        rows.append(Row("precision", what, value, "img/s", reference=ref, note=f"{note}; {cores_note(cores)}"))
        del net, run_net
        gc.collect()
    base = next(r.value for r in rows if r.reference is None)
    for r in rows:
        r.ratio = ratio(r.value, base) if r.reference else None
    return rows


def bench_ema(cfg: DictConfig, opts: dict[str, Any]) -> list[Row]:
    """g. One EMA update of ``model.net`` (weights and buffers): per-tensor ``avg_fn`` vs foreach."""
    from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn, get_ema_multi_avg_fn

    net = instantiate(cfg.model.net).to(device(cfg))
    values = sum(t.numel() for t in (*net.parameters(), *net.buffers()) if t.is_floating_point())
    updates = max(5, 5 * opts["steps"])
    per_tensor = "per-tensor avg_fn (EMAWeightAveraging)"
    rows: list[Row] = []
    for what, kwargs in (
        (per_tensor, {"avg_fn": get_ema_avg_fn(0.998)}),
        ("foreach multi_avg_fn (callbacks=ema)", {"multi_avg_fn": get_ema_multi_avg_fn(0.998)}),
    ):
        average = AveragedModel(net, use_buffers=True, **kwargs)
        average.update_parameters(net)  # the first update only copies
        meter = CpuMeter()
        start = time.perf_counter()
        for _ in range(updates):
            average.update_parameters(net)
        ms = (time.perf_counter() - start) / updates * 1000
        note = f"{updates} updates of {values:,} values; {cores_note(meter.cores())}"
        ref = None if what == per_tensor else per_tensor
        rows.append(Row("ema", f"EMA update, {what}", ms, "ms", reference=ref, note=note))
        del average
    rows[1].ratio = ratio(rows[1].value, rows[0].value)
    del net
    gc.collect()
    return rows
