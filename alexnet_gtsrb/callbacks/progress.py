"""Progress for logs nobody watches: plain lines instead of a progress bar when stdout is not a terminal.

Under ``nohup``, SLURM or CI a progress bar redraws one line with carriage returns, or prints nothing until the
run ends. :class:`PlainProgress` logs one line after every training epoch (and every ``every_n_steps``
optimizer steps), through the logging system, so it reaches stdout and the run's ``<task_name>.log``::

    epoch 3/16 step 1200 | train/loss 0.812 train/acc 0.781 | val/loss 0.401 val/acc 0.901 val/acc_best 0.910 |
    412 img/s | elapsed 13m05s | ETA 41m10s

``train`` picks it (and switches the bar off) when ``progress=auto`` and stdout is not a terminal, or when
``progress=plain``.
"""

from __future__ import annotations

import logging
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
    """One plain log line per training epoch (and every ``every_n_steps`` steps, 0 = epochs only), rank zero."""

    def __init__(self, every_n_steps: int = 0) -> None:
        self.every_n_steps = max(0, int(every_n_steps))
        self._start = self._epoch_start = 0.0
        self._images = 0
        self._first_epoch = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()
        self._first_epoch = trainer.current_epoch  # a resumed run estimates from its own epochs

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start, self._images = time.monotonic(), 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        labels = batch[1] if isinstance(batch, list | tuple) and len(batch) > 1 else None
        self._images += int(labels.numel()) if labels is not None else 0
        step = trainer.global_step
        if self.every_n_steps and step and step % self.every_n_steps == 0:
            self._emit(trainer, f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} step {step}", final=False)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._emit(trainer, f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} step {trainer.global_step}", True)

    def _emit(self, trainer: L.Trainer, head: str, final: bool) -> None:
        if not trainer.is_global_zero:
            return
        now = time.monotonic()
        metrics = trainer.callback_metrics
        shown = " ".join(f"{k} {float(metrics[k]):.4f}" for k in SHOWN if k in metrics)
        rate = self._images * trainer.world_size / max(now - self._epoch_start, 1e-9)
        elapsed = now - self._start
        parts = [head, shown, f"{rate:,.1f} img/s", f"elapsed {_clock(elapsed)}"]
        done = trainer.current_epoch + (1 if final else 0) - self._first_epoch
        if done > 0 and trainer.max_epochs and trainer.max_epochs > 0:
            remaining = trainer.max_epochs - trainer.current_epoch - (1 if final else 0)
            parts.append(f"ETA {_clock(elapsed / done * max(remaining, 0))}")
        log.info(" | ".join(p for p in parts if p))
