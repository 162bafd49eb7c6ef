"""Debugging aids: the layer table at fit start, and each DDP rank's sample indices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L

from alexnet_gtsrb.models.summary import format_summary, summary_rows
from alexnet_gtsrb.utils.wrappers import unwrap_compiled


class LayerSummary(L.Callback):
    """Prints the Keras-style table (layer, output shape, params) once at fit start, on rank zero."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        net: Any = unwrap_compiled(pl_module.net)  # type: ignore[arg-type]
        hparams: Any = pl_module.hparams
        size = int(hparams.net.get("image_size", 227))
        print(format_summary(summary_rows(net, size), title=f"{type(net).__name__} at {size}x{size}"), flush=True)


class ShardDump(L.Callback):
    """Each rank writes the training-sample indices its sampler yields in epoch 0 to ``<out_dir>/rank<r>.json``."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch != 0:
            return
        loader: Any = trainer.train_dataloader
        sampler = loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(0)  # what the loader iterates this epoch (Lightning sets it too)
        indices = [int(i[0] if isinstance(i, tuple | list) else i) for i in sampler]  # RunSampler: (index, seed)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "dataset_len": len(loader.dataset),
            "sampler": type(sampler).__name__,
            "indices": indices,
        }
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
