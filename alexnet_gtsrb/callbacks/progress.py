"""Plain progress lines, through logging to stdout and ``<task_name>.log``, for logs nobody watches (``nohup``, SLURM,
CI: a bar redraws one line with carriage returns): ``progress=plain``, or ``auto`` when stdout is not a terminal."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L

log = logging.getLogger(__name__)
SHOWN = ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class PlainProgress(L.Callback):
    """One log line per training epoch (and every ``every_n_steps`` steps, 0 = epochs only), rank zero: the epoch's
    metrics and an ETA from the time per epoch, or mid-epoch the mean loss since the previous line and an ETA from
    the step rate (the previous epoch's metrics would be stale, and epoch-based ETAs grow during an epoch)::

        epoch 3/16 step 1200 | train/loss 0.8120 val/acc 0.9010 | 412 img/s | elapsed 13m05s | ETA 41m10s
        epoch 2/16 step 150/389 | loss 1.2345 (50 steps) | 412 img/s | elapsed 6m10s | ETA 1h02m13s
    """

    def __init__(self, every_n_steps: int = 0) -> None:
        self.every_n_steps = max(0, int(every_n_steps))
        self._start = self._epoch_start = self._loss_sum = 0.0
        self._images = self._first_epoch = self._first_step = self._loss_steps = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()
        # a resumed run estimates from its own epochs and steps
        self._first_epoch, self._first_step = trainer.current_epoch, trainer.global_step

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start, self._images = time.monotonic(), 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        self._images += int(batch[1].numel())
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._loss_sum += float(loss)
            self._loss_steps += 1
        step, per_epoch, done = trainer.global_step, trainer.num_training_batches, batch_idx + 1
        if not (self.every_n_steps and step and step % self.every_n_steps == 0 and trainer.is_global_zero):
            return
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        left = per_epoch * (epochs - trainer.current_epoch) - done if epochs and not math.isinf(per_epoch) else None
        mean = f"loss {self._loss_sum / self._loss_steps:.4f} ({self._loss_steps} steps)" if self._loss_steps else ""
        head = f"epoch {trainer.current_epoch + 1}/{epochs or '?'} step {done}/{per_epoch}"
        self._log(trainer, head, mean, step - self._first_step, left)
        self._loss_sum, self._loss_steps = 0.0, 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._loss_sum, self._loss_steps = 0.0, 0
        if not trainer.is_global_zero:
            return
        metrics, epochs = trainer.callback_metrics, trainer.max_epochs
        shown = " ".join(f"{k} {float(metrics[k]):.4f}" for k in SHOWN if k in metrics)
        left = epochs - trainer.current_epoch - 1 if epochs and epochs > 0 else None
        head = f"epoch {trainer.current_epoch + 1}/{epochs} step {trainer.global_step}"
        self._log(trainer, head, shown, trainer.current_epoch + 1 - self._first_epoch, left)

    def _log(self, trainer: L.Trainer, head: str, detail: str, done: int, left: float | None) -> None:
        """``head | detail | img/s | elapsed | ETA``, the ETA from the ``done`` units so far and ``left`` to go."""
        now = time.monotonic()
        elapsed = now - self._start
        rate = self._images * trainer.world_size / max(now - self._epoch_start, 1e-9)
        parts = [head, detail, f"{rate:,.1f} img/s", f"elapsed {_clock(elapsed)}"]
        if done > 0 and left is not None:
            parts.append(f"ETA {_clock(elapsed / done * max(left, 0))}")
        log.info(" | ".join(p for p in parts if p))
