"""TensorBoard image callbacks: conv1's kernels shown in the two halves that feed conv2's two groups."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger


def _tensorboard(trainer: L.Trainer):
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            return lg.experiment
    return None


class Conv1KernelGrid(L.Callback):
    """Logs ``filters/conv1`` at train start and after every epoch: kernels 0-47 | 48-95 for a 2-group net.

    After training, the paper's figure 3 shows colour-agnostic kernels in one half and colour-specific
    ones in the other; this makes the same picture for any run.
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        self.every_n_epochs = max(1, int(every_n_epochs))

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tb = _tensorboard(trainer)
        net = getattr(pl_module, "net", None)
        net = getattr(net, "_orig_mod", net)  # torch.compile wrapper
        if tb is None or net is None or not trainer.is_global_zero:
            return
        from alexnet_gtsrb.models.alexnet import conv1_kernel_grid

        with torch.no_grad():
            grid = conv1_kernel_grid(net)
        tb.add_image("filters/conv1", grid.float().cpu(), global_step=trainer.global_step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._log(trainer, pl_module)


class LayerSummary(L.Callback):
    """Prints the Keras-style table (layer, output shape, params) once at fit start, on rank zero."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from alexnet_gtsrb.models.summary import format_summary, summary_rows

        net = getattr(pl_module.net, "_orig_mod", pl_module.net)
        size = int(pl_module.hparams.net.get("image_size", 227))
        print(format_summary(summary_rows(net, size), title=f"{type(net).__name__} at {size}x{size}"), flush=True)
