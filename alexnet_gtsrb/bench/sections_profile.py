"""The ``profile`` section: where a steady training step's time goes, named.

Three views of the configured run, each on real files:

- Lightning's ``SimpleProfiler`` over ``e2e_warmup + steps`` batches of ``fit`` with the configured EMA callback:
  milliseconds per batch of each hook (fetching the next batch, the transfer hook that augments on the device,
  forward + loss, backward, optimizer step, the EMA update);
- ``torch.profiler`` over ``steps`` batches of the main process: the operators with the most self CPU time;
- per-stage timers of the per-item pipeline (what each loader worker does per image: decode, ROI crop, each
  albumentations step) and, with ``data.augment.on_device``, of the batch augmentation, in one process.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from alexnet_gtsrb.bench.options import Row
from alexnet_gtsrb.bench.sections_compute import ema_callback_config
from alexnet_gtsrb.bench.sections_data import fit_batches
from alexnet_gtsrb.data.io import decode_rgb, roi_crop

__all__ = ["bench_profile"]

_TOP_OPS = 6
_STAGE_ITEMS = 300
_STEP_PARTS = ("optimizer_step", "training_step", "backward")


def _fit(cfg: DictConfig, dm: Any, batches: int, callbacks: list, profiler: Any = None) -> None:
    """:func:`fit_batches` with the configured EMA callback too (its update is part of every step)."""
    ema = ema_callback_config(cfg)
    fit_batches(cfg, dm, batches, [*([instantiate(ema)] if ema is not None else []), *callbacks], profiler)


def _hook_rows(cfg: DictConfig, opts: dict[str, Any], dm: Any) -> list[Row]:
    from lightning.pytorch.profilers import SimpleProfiler

    warmup, steps = opts["e2e_warmup"], opts["steps"]
    profiler = SimpleProfiler()
    _fit(cfg, dm, warmup + steps, [], profiler)
    per_batch = profiler.recorded_durations
    step_ms = _timed_ms_per_batch(per_batch.get("run_training_batch", []), warmup, steps)
    rows = []
    keep = []
    for action, durations in per_batch.items():
        if len(durations) < warmup + steps or action.startswith("run_training_epoch"):
            continue  # once-per-fit actions, and the epoch that holds everything
        ms = _timed_ms_per_batch(durations, warmup, steps)
        if ms is not None and ms >= 0.5:
            keep.append((ms, action))
    hooks = {a: m for m, a in keep}
    parts = [next((m for a, m in hooks.items() if a.endswith(f".{name}")), None) for name in _STEP_PARTS]
    step, closure, backward = parts
    if step is not None and closure is not None and backward is not None:
        # optimizer_step wraps the closure (training_step + backward) and the optimizer's own step()
        keep.append((step - closure - backward, "optimizer.step() itself (optimizer_step - training_step - backward)"))
    for ms, action in sorted(keep, reverse=True):
        share = ms / step_ms if step_ms else None
        note = "per training batch (SimpleProfiler; nested hooks count in their callers too)"
        rows.append(Row("profile", f"hook: {action}", ms, "ms/batch", ratio=share, reference="batch", note=note))
    return rows


def _timed_ms_per_batch(durations: list[float], warmup: int, steps: int) -> float | None:
    """Milliseconds per timed batch of an action recorded ``k`` times per batch: its last ``k * steps`` calls."""
    calls = len(durations) // (warmup + steps)
    return 1000.0 * sum(durations[-calls * steps :]) / steps if calls else None


def _op_rows(cfg: DictConfig, opts: dict[str, Any], dm: Any) -> list[Row]:
    import lightning as L
    from torch.profiler import ProfilerActivity, profile

    steps = opts["steps"]
    warmup = opts["e2e_warmup"]
    prof = profile(activities=[ProfilerActivity.CPU])

    class Window(L.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx + 1 == warmup:
                prof.start()
            elif batch_idx + 1 == warmup + steps:
                prof.stop()

    _fit(cfg, dm, warmup + steps, [Window()])
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = []
    for e in events[:_TOP_OPS]:
        ms = e.self_cpu_time_total / 1000.0 / steps
        rows.append(
            Row(
                "profile",
                f"op: {e.key}",
                ms,
                "ms/batch",
                ratio=e.self_cpu_time_total / total,
                reference="self CPU",
                note=f"torch.profiler, main process, {steps} batches, {e.count // steps} calls per batch",
            )
        )
    return rows


def _stage_rows(cfg: DictConfig, dm: Any) -> list[Row]:
    """Per-item stage timers of the uncached training pipeline, and the batch augmentation per batch."""
    from alexnet_gtsrb.data.transforms import build_transform

    ds = dm.train_set
    n = min(_STAGE_ITEMS, len(ds))
    rng = np.random.default_rng(0)
    records = [ds.records[i] for i in rng.choice(len(ds), size=n, replace=False)]
    preset = dm.augment.get("preset", "none")
    ops = build_transform(preset, int(cfg.data.image_size), train=True, params=dm.augment).transforms
    spent: dict[str, float] = {"decode": 0.0, "ROI crop": 0.0}
    for op in ops:
        spent.setdefault(type(op).__name__, 0.0)
    for r in records:
        t = time.perf_counter()
        image = decode_rgb(r.path)
        spent["decode"] += time.perf_counter() - t
        if ds.roi and r.roi is not None:
            t = time.perf_counter()
            image = roi_crop(image, r.roi, (r.width, r.height))
            spent["ROI crop"] += time.perf_counter() - t
        for op in ops:
            t = time.perf_counter()
            image = op(image=image)["image"]
            spent[type(op).__name__] += time.perf_counter() - t
    total = sum(spent.values()) or 1.0
    how = "on_device: the workers only read the cache" if dm.batch_augment else "in each loader worker"
    rows = [
        Row(
            "profile",
            f"item stage: {stage}",
            1e6 * s / n,
            "us/item",
            ratio=s / total,
            reference="item",
            note=f"uncached per-item pipeline ({how}), {n} items, 1 process",
        )
        for stage, s in sorted(spent.items(), key=lambda kv: -kv[1])
    ]
    if dm.batch_augment is not None:
        batch = int(cfg.data.batch_size)
        images = torch.stack([ds[i][0] for i in range(min(batch, len(ds)))])
        dm.batch_augment.floats(images)
        t = time.perf_counter()
        for _ in range(5):
            dm.batch_augment.floats(images)
        ms = (time.perf_counter() - t) / 5 * 1000
        note = f"data.augment.on_device: the gtsrb preset's random ops on a batch of {images.shape[0]}"
        rows.append(Row("profile", "batch stage: BatchAugment", ms, "ms/batch", note=note))
    return rows


def bench_profile(cfg: DictConfig, opts: dict[str, Any], dm: Any) -> list[Row]:
    """h. The hooks of a steady training step, the top operators, and the per-item/batch pipeline stages."""
    return [*_hook_rows(cfg, opts, dm), *_op_rows(cfg, opts, dm), *_stage_rows(cfg, dm)]
