"""The sections that read the GTSRB tree: ``e2e``, ``pipeline``, ``memory`` and ``profile`` (config, options and
the set-up DataModule in, rows out)."""

from __future__ import annotations

import contextlib
import gc
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import ConcatDataset, Subset

from alexnet_gtsrb.bench.throughput import Row, SteadyStateTimer, cores_note, device, ema_config, timed, top_ops
from alexnet_gtsrb.data.io import decode_rgb, roi_box, roi_crop

MIB = 1024 * 1024
#: Lightning ``fit`` for timing: one device, no validation, checkpointing, logger, progress bar or summary.
FIT_ONLY: dict[str, Any] = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, devices=1)
FIT_ONLY |= dict(enable_model_summary=False, max_epochs=1, min_epochs=1, limit_val_batches=0, num_sanity_val_steps=0)


def fit_batches(
    cfg: DictConfig, dm: Any, batches: int, callbacks: list, ema: bool = False, profiler: Any = None
) -> None:
    """Lightning ``fit`` of ``batches`` training batches of the configured model on ``dm`` with only ``callbacks``
    (and the configured EMA callback with ``ema``) and no LR scheduler (a plateau one needs validation metrics)."""
    model_cfg: Any = OmegaConf.to_container(cfg.model, resolve=True)
    ema_cfg = ema_config(cfg) if ema else None
    callbacks = [*([instantiate(ema_cfg)] if ema_cfg is not None else []), *callbacks]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, profiler=profiler, limit_train_batches=batches, **FIT_ONLY)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(does not have many workers|limit_val_batches).*")
        trainer.fit(instantiate({**model_cfg, "scheduler": None}, _recursive_=False), datamodule=dm)
    del trainer
    gc.collect()


def bench_e2e(cfg: DictConfig, opts: dict[str, Any], dm: Any) -> list[Row]:
    """b. Lightning ``fit`` from disk with the configured model, precision, augmentation and workers."""
    warmup, steps = opts["e2e_warmup"], opts["steps"]
    timer = SteadyStateTimer(warmup, device(cfg))
    fit_batches(cfg, dm, warmup + steps, [timer])
    timed_batches = timer.images // int(cfg.data.batch_size)
    note = f"{warmup} warm-up + {timed_batches} timed batches, {cores_note(timer.cores)} (incl. workers)"
    if timer.rate() is None:
        note = f"no timed batches: the training loader has fewer than {warmup + 1} batches"
    wait = "time from one batch's end to the next one's start: loader + copy to the device; 0 = never waits"
    return [
        Row("e2e", "Lightning fit, GTSRB from disk", timer.rate(), "img/s", None, "ceiling", ">= 0.90", note),
        Row("e2e", "waiting for the next batch", timer.data_wait_fraction(), "of fit time", note=wait),
    ]


def bench_pipeline(cfg: DictConfig, opts: dict[str, Any], dm: Any) -> list[Row]:
    """c. Items/s of the training dataset in one process vs torchvision v2 on PIL doing the same work (decode, ROI
    crop, affine, colour jitter, resize; uint8 out) on the same files, interleaved in rounds on one random item
    list once the files are in the page cache, so load from other processes hits both alike."""
    from PIL import Image
    from torchvision.transforms import v2

    ds, n, size = dm.train_set, opts["items"], int(cfg.data.image_size)
    affine = v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))
    jitter, to_uint8 = v2.ColorJitter(brightness=0.2, contrast=0.2), v2.ToDtype(torch.uint8, scale=True)
    tf = v2.Compose([affine, jitter, v2.Resize((size, size)), v2.PILToTensor(), to_uint8])

    def reference(i: int) -> torch.Tensor:
        r = ds.records[i]
        with Image.open(r.path) as opened:
            im = opened.convert("RGB")
        return tf(im.crop(roi_box(r.roi, im.size, (r.width, r.height))) if ds.roi and r.roi is not None else im)

    order = np.random.default_rng(int(cfg.get("seed") or 0)).choice(len(ds), size=n, replace=n > len(ds)).tolist()
    for i in set(order):
        Path(ds.records[i].path).read_bytes()
    sides, rounds = {"project": ds.__getitem__, "reference": reference}, max(1, min(4, n // 50))
    spent = dict.fromkeys(sides, 0.0)
    for r in range(-1, rounds):  # round -1: the warm-up, untimed
        for name, fn in sides.items():
            t = time.perf_counter()
            for i in order[:10] if r < 0 else order[r::rounds]:
                fn(i)
            spent[name] += time.perf_counter() - t if r >= 0 else 0.0
    what = f"project dataset (cv2 + albumentations, {dm.augment.get('preset', 'none')})"
    x = spent["reference"] / spent["project"]
    return [
        Row("pipeline", what, n / spent["project"], "items/s", x, "torchvision", ">= 2x", f"{n} items, 1 process"),
        Row("pipeline", "torchvision v2 on PIL (same work)", n / spent["reference"], "items/s", note="reference"),
    ]


def _resident(pid: int | str, *fields: str) -> int:
    """Resident bytes of a process, the sum of these /proc/PID/smaps_rollup fields (0 without /proc). A forked
    worker's RSS counts every page it shares with the main process; its copy-on-write growth (refcounts touching
    the record list) and leaks show in its private (USS) fields."""
    with contextlib.suppress(OSError):
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        return 1024 * sum(int(x.split()[1]) for x in lines if x.startswith(fields))
    return 0


def bench_memory(cfg: DictConfig, opts: dict[str, Any], dm: Any) -> list[Row]:
    """e. RSS of the main process and USS of the workers while the training loader runs over its items repeated
    3x, after the first batch, 1x and 3x (3x as a ratio of 1x); the loader's items/s."""
    n = min(opts["memory_records"] or len(dm.train_set), len(dm.train_set))
    # the project's loader settings (workers, prefetch, pinning, collate), in order: the class-balancing
    # sampler draws indices of the real training split, not of this list
    it = iter(dm._loader(ConcatDataset([Subset(dm.train_set, range(n))] * 3), train=False))
    pids, seen, start = [w.pid for w in getattr(it, "_workers", [])], 0, time.perf_counter()
    marks: dict[str, tuple[int, int, int]] = {}
    for batch in it:
        seen += len(batch[0])
        for name, due in (("first batch", True), ("1x", seen >= n), ("3x", seen >= 3 * n)):
            if due and name not in marks:  # read while the workers are alive
                uss = sum(_resident(p, "Private_Clean:", "Private_Dirty:") for p in pids)
                marks[name] = (seen, _resident("self", "Rss:"), uss)
    rate = seen / (time.perf_counter() - start)
    del it
    rows, workers = [], [(2, f"private RSS (USS) of {len(pids)} loader workers, sum")] if pids else []
    for k, who in [(1, "RSS main process"), *workers]:
        for name, mark in marks.items():
            rows.append(Row("memory", f"{who}, after {name} ({mark[0]} items)", mark[k] / MIB, "MiB"))
            if name == "3x" and marks["1x"][k]:
                rows[-1].ratio, rows[-1].reference, rows[-1].target = mark[k] / marks["1x"][k], "after 1x", "<= 1.05"
    loader = f"loader throughput over {seen} items (batch {int(cfg.data.batch_size)})"
    return [*rows, Row("memory", loader, rate, "items/s", note=f"{len(pids)} workers")]


def _hook_rows(cfg: DictConfig, opts: dict[str, Any], dm: Any) -> list[Row]:
    """SimpleProfiler's actions that run once or more per batch, in ms per timed batch (the last ``steps``)."""
    from lightning.pytorch.profilers import SimpleProfiler

    warmup, steps, profiler = opts["e2e_warmup"], opts["steps"], SimpleProfiler()
    fit_batches(cfg, dm, warmup + steps, [], ema=True, profiler=profiler)
    hooks = {}
    for action, durations in profiler.recorded_durations.items():
        calls = len(durations) // (warmup + steps)  # per batch; 0: once per fit
        ms = 1000.0 * sum(durations[-calls * steps :]) / steps if calls else 0.0
        if ms >= 0.5 and not action.startswith("run_training_epoch"):  # the epoch holds everything
            hooks[action] = ms
    step, closure, backward = (
        next((ms for a, ms in hooks.items() if a.endswith(f".{name}")), None)
        for name in ("optimizer_step", "training_step", "backward")
    )
    if step is not None and closure is not None and backward is not None:
        # optimizer_step wraps the closure (training_step + backward) and the optimizer's own step()
        hooks["optimizer.step() itself (optimizer_step - training_step - backward)"] = step - closure - backward
    batch = hooks.get("run_training_batch")
    note = "per training batch (SimpleProfiler; nested hooks count in their callers too)"
    return [
        Row("profile", f"hook: {action}", ms, "ms/batch", ms / batch if batch else None, "batch", note=note)
        for action, ms in sorted(hooks.items(), key=lambda kv: -kv[1])
    ]


def _op_rows(cfg: DictConfig, opts: dict[str, Any], dm: Any) -> list[Row]:
    """torch.profiler's top operators of the main process over the ``steps`` batches after ``e2e_warmup``."""
    from torch.profiler import ProfilerActivity, profile

    warmup, steps, prof = opts["e2e_warmup"], opts["steps"], profile(activities=[ProfilerActivity.CPU])

    class Window(L.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx + 1 == warmup:
                prof.start()
            elif batch_idx + 1 == warmup + steps:
                prof.stop()

    fit_batches(cfg, dm, warmup + steps, [Window()], ema=True)
    note = f"torch.profiler, main process, {steps} batches, {{}} calls per batch"
    return [
        Row("profile", f"op: {op}", us / 1000 / steps, "ms/batch", share, "self CPU", note=note.format(n // steps))
        for op, us, share, n in top_ops(prof, 6)
    ]


def _stage_rows(cfg: DictConfig, dm: Any) -> list[Row]:
    """Per-item stage timers of the uncached training pipeline, and the batch augmentation per batch."""
    from alexnet_gtsrb.data.transforms import build_transform

    ds, size = dm.train_set, int(cfg.data.image_size)
    n = min(300, len(ds))
    ops = build_transform(dm.augment.get("preset", "none"), size, train=True, params=dm.augment).transforms
    records = [ds.records[i] for i in np.random.default_rng(0).choice(len(ds), size=n, replace=False)]
    spent = {"decode": 0.0, "ROI crop": 0.0} | {type(op).__name__: 0.0 for op in ops}
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
    how = "on_device: the workers only read the cache" if dm.batch_augment else "in each loader worker"
    note, total = f"uncached per-item pipeline ({how}), {n} items, 1 process", sum(spent.values()) or 1.0
    rows = [
        Row("profile", f"item stage: {stage}", 1e6 * s / n, "us/item", s / total, "item", note=note)
        for stage, s in sorted(spent.items(), key=lambda kv: -kv[1])
    ]
    if dm.batch_augment is not None:
        batch = torch.stack([ds[i][0] for i in range(min(int(cfg.data.batch_size), len(ds)))])
        ms = 1000 * timed(lambda: dm.batch_augment.floats(batch), 5, warmup=1)[0]
        note = f"data.augment.on_device: the gtsrb preset's random ops on a batch of {len(batch)}"
        rows.append(Row("profile", "batch stage: BatchAugment", ms, "ms/batch", note=note))
    return rows


def bench_profile(cfg: DictConfig, opts: dict[str, Any], dm: Any) -> list[Row]:
    """h. Where a steady training step's time goes: Lightning's SimpleProfiler hooks and torch.profiler's top
    operators over ``fit`` with the configured EMA, and the per-item and batch pipeline stages."""
    return [*_hook_rows(cfg, opts, dm), *_op_rows(cfg, opts, dm), *_stage_rows(cfg, dm)]


DATA = {"e2e": bench_e2e, "pipeline": bench_pipeline, "memory": bench_memory, "profile": bench_profile}
