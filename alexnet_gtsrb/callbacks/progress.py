"""Progress for logs nobody watches: plain lines instead of a progress bar when stdout is not a terminal.

Under ``nohup``, SLURM or CI a progress bar redraws one line with carriage returns, or prints nothing until the
run ends. :class:`PlainProgress` logs one line after every training epoch (and every ``every_n_steps``
optimizer steps, see the class), through the logging system, so it reaches stdout and the run's
``<task_name>.log``::

    epoch 3/16 step 1200 | train/loss 0.812 train/acc 0.781 | val/loss 0.401 val/acc 0.901 val/acc_best 0.910 |
    412 img/s | elapsed 13m05s | ETA 41m10s

``train`` picks it (and switches the bar off) when ``progress=auto`` and stdout is not a terminal, or when
``progress=plain``.
"""

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
    """One plain log line per training epoch (and every ``every_n_steps`` steps, 0 = epochs only), rank zero.

    An epoch line shows the epoch's logged metrics and an ETA from the time per finished epoch (validation
    included). A mid-epoch line shows where the epoch stands (``step i/N``), the mean training loss of the steps
    since the previous line, and an ETA from the step rate of this fit (the metrics of the previous epoch would
    be stale there, and epochs-based ETAs grow while an epoch is under way)::

        epoch 2/16 step 150/389 | loss 1.2345 (50 steps) | 412 img/s | elapsed 6m10s | ETA 1h02m13s
    """

    def __init__(self, every_n_steps: int = 0) -> None:
        self.every_n_steps = max(0, int(every_n_steps))
        self._start = self._epoch_start = 0.0
        self._images = 0
        self._first_epoch = self._first_step = 0
        self._loss_sum, self._loss_steps = 0.0, 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()
        # a resumed run estimates from its own epochs and steps
        self._first_epoch, self._first_step = trainer.current_epoch, trainer.global_step

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start, self._images = time.monotonic(), 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        labels = batch[1] if isinstance(batch, list | tuple) and len(batch) > 1 else None
        self._images += int(labels.numel()) if labels is not None else 0
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._loss_sum += float(loss.detach()) if hasattr(loss, "detach") else float(loss)
            self._loss_steps += 1
        step = trainer.global_step
        if self.every_n_steps and step and step % self.every_n_steps == 0 and trainer.is_global_zero:
            self._step_line(trainer, batch_idx + 1)

    def _step_line(self, trainer: L.Trainer, done_in_epoch: int) -> None:
        now = time.monotonic()
        per_epoch = trainer.num_training_batches
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        head = f"epoch {trainer.current_epoch + 1}/{epochs or '?'} step {done_in_epoch}/{per_epoch}"
        parts = [head]
        if self._loss_steps:
            parts.append(f"loss {self._loss_sum / self._loss_steps:.4f} ({self._loss_steps} steps)")
        self._loss_sum, self._loss_steps = 0.0, 0
        parts.append(f"{self._images * trainer.world_size / max(now - self._epoch_start, 1e-9):,.1f} img/s")
        elapsed = now - self._start
        parts.append(f"elapsed {_clock(elapsed)}")
        steps = trainer.global_step - self._first_step
        if steps > 0 and epochs is not None and not math.isinf(per_epoch):
            left = per_epoch - done_in_epoch + (epochs - trainer.current_epoch - 1) * per_epoch
            parts.append(f"ETA {_clock(elapsed / steps * max(left, 0))}")
        log.info(" | ".join(parts))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._loss_sum, self._loss_steps = 0.0, 0
        if not trainer.is_global_zero:
            return
        now = time.monotonic()
        metrics = trainer.callback_metrics
        shown = " ".join(f"{k} {float(metrics[k]):.4f}" for k in SHOWN if k in metrics)
        rate = self._images * trainer.world_size / max(now - self._epoch_start, 1e-9)
        elapsed = now - self._start
        head = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} step {trainer.global_step}"
        parts = [head, shown, f"{rate:,.1f} img/s", f"elapsed {_clock(elapsed)}"]
        done = trainer.current_epoch + 1 - self._first_epoch
        if done > 0 and trainer.max_epochs and trainer.max_epochs > 0:
            remaining = trainer.max_epochs - trainer.current_epoch - 1
            parts.append(f"ETA {_clock(elapsed / done * max(remaining, 0))}")
        log.info(" | ".join(p for p in parts if p))
