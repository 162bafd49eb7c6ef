"""The sections that need no data: ``ceiling``, ``lrn``, ``precision`` and ``ema`` (config and options in, rows out)."""

from __future__ import annotations

import functools
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn, get_ema_multi_avg_fn

from alexnet_gtsrb.bench.options import Row, bf16, device, ratio
from alexnet_gtsrb.bench.throughput import cores_note, timed, train_step

__all__ = ["bench_ceiling", "bench_ema", "bench_lrn", "bench_precision", "ema_callback_config", "top_ops"]


def _steps(section: str, what: str, net: Any, batch: int, cfg: DictConfig, opts: dict, **kwargs: Any) -> Row:
    """A row of ``net``'s bare training img/s on the configured device at the configured image size; precision,
    memory format and warm-up as configured unless ``kwargs`` (of :func:`train_step`, and ``warmup``) say."""
    warmup = kwargs.pop("warmup", opts["warmup"])
    kwargs = {"bf16": bf16(cfg), "channels_last": bool(cfg.model.channels_last), **kwargs}
    step = train_step(net.to(device(cfg)), batch, int(cfg.data.image_size), **kwargs)
    seconds, cores = timed(step, opts["steps"], warmup, device(cfg))
    return Row(section, what, batch / seconds, "img/s", note=cores_note(cores))


def ema_callback_config(cfg: DictConfig) -> DictConfig | None:
    """The configured EMA callback's config (``callbacks=ema``), or None when the run averages no weights."""
    found = [c for c in (cfg.get("callbacks") or {}).values() if isinstance(c, DictConfig)]
    return next((c for c in found if str(c.get("_target_")).endswith("EMAWeights")), None)


def top_ops(prof: Any, n: int) -> list[tuple[str, float, float, int]]:
    """The ``n`` operators of a torch.profiler run with the most self CPU time: (name, self CPU us, share of all
    self CPU time, calls)."""
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [(e.key, e.self_cpu_time_total, e.self_cpu_time_total / total, e.count) for e in events[:n]]


def bench_ceiling(cfg: DictConfig, opts: dict[str, Any]) -> list[Row]:
    """a. Bare training steps of ``model.net`` on random tensors with the configured optimizer and loss: the most
    the model can do here; then the same steps each followed by the configured EMA update (if any)."""
    net, batch = instantiate(cfg.model.net).to(device(cfg)), int(cfg.data.batch_size)
    opt_cfg = cfg.model.get("optimizer") or cfg.get("optimizer")
    name = str(opt_cfg["_target_"]).rsplit(".", 1)[-1] + (" fused" if opt_cfg.get("fused") else "")
    train = {"optimizer": instantiate(opt_cfg), "label_smoothing": float(cfg.model.get("label_smoothing") or 0.0)}
    rows = [_steps("ceiling", f"bare train steps, random tensors ({name})", net, batch, cfg, opts, **train)]
    if (ema := ema_callback_config(cfg)) is not None:
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
    for what, impl in (
        ("no LRN", ""),
        ("fast LRN (alexnet_gtsrb.models.lrn)", "fast"),
        ("torch.nn.LocalResponseNorm", "torch"),
    ):
        torch.manual_seed(0)
        net = AlexNet(classes, size, "paper", 2, lrn=bool(impl), lrn_impl=impl or "fast", batch_norm=False)
        rows.append(_steps("lrn", f"paper model, {what}", net, batch, cfg, opts))
    rows[0].note = f"batch {batch}, {rows[0].note}"
    for r in rows[1:]:
        r.ratio, r.reference = ratio(r.value, rows[0].value), "no LRN"
    rows[1].target = ">= 0.75"
    return rows


def bench_precision(cfg: DictConfig, opts: dict[str, Any]) -> list[Row]:
    """f. The configured network's bare training img/s in fp32 NCHW, fp32 channels_last (the reference), bf16
    autocast + channels_last and fp32 channels_last under ``torch.compile``; the fp32 and bf16 steps' top ops."""
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
        update = functools.partial(average.update_parameters, net)
        seconds, cores = timed(update, updates, 1, device(cfg))  # 1 warm-up: the first update only copies
        note = f"{updates} updates of {values:,} values; {cores_note(cores)}"
        rows.append(Row("ema", f"EMA update, {what}", 1000 * seconds, "ms", note=note))
    rows[1].ratio, rows[1].reference = ratio(rows[1].value, rows[0].value), rows[0].what.removeprefix("EMA update, ")
    return rows
