"""TensorBoard callbacks (``conf/callbacks/default.yaml``): conv1's kernels, augmented training samples, the validation
confusion matrix and per-class accuracy (pictures to MLflow too), the HPARAMS session. Only the global-zero process
writes; every process takes part in the collective steps (the confusion matrix's sync)."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger
from torchmetrics.classification import MulticlassConfusionMatrix

from alexnet_gtsrb.callbacks.ema import EMAWeights
from alexnet_gtsrb.data.classes import class_name
from alexnet_gtsrb.plots import confusion_figure, conv1_kernel_grid, pyplot
from alexnet_gtsrb.provenance import provenance
from alexnet_gtsrb.utils.wrappers import global_batch_size

HPARAMS_METRICS = ("val/acc_best", "test/acc", "test/loss")


def _tensorboard(trainer: L.Trainer):
    return next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def _mlflow_runs(trainer: L.Trainer) -> list[tuple[Any, Any]]:
    """(client, run id) of each MLflow logger: the figures go to MLflow's store too."""
    return [(lg.experiment, lg.run_id) for lg in trainer.loggers if isinstance(lg, MLFlowLogger)]


def _log_image(trainer: L.Trainer, tag: str, image: torch.Tensor, step: int) -> None:
    """A (3, H, W) image in [0, 1] to TensorBoard and to each MLflow run (key ``tag`` with ``/`` as ``_``)."""
    tb = _tensorboard(trainer)
    if tb is not None:
        tb.add_image(tag, image, global_step=step)
    runs = _mlflow_runs(trainer)
    if runs:
        hwc = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        for client, run_id in runs:
            client.log_image(run_id, hwc, key=tag.replace("/", "_"), step=step)


def _log_step(trainer: L.Trainer) -> int:
    """The step Lightning gives epoch-level metrics (``val/acc``'s; its LearningRateMonitor uses it too)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


class Conv1KernelGrid(L.Callback):
    """Logs ``filters/conv1`` at train start and after every epoch: kernels 0-47 | 48-95 for a 2-group net (the
    paper's figure 3: colour-agnostic kernels in one half, colour-specific ones in the other)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.is_global_zero and (_tensorboard(trainer) is not None or _mlflow_runs(trainer)):
            with torch.no_grad():
                grid = conv1_kernel_grid(pl_module.net)
            _log_image(trainer, "filters/conv1", grid.float().cpu(), trainer.global_step)

    on_train_epoch_end = on_train_start


def denormalize_to_uint8(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The inverse of ``normalize_uint8`` (affine in float32, so rounding gives back the exact values): normalised
    float (B, 3, H, W) -> uint8 (B, 3, H, W); a uint8 (B, H, W, 3) batch is only permuted."""
    if x.dtype == torch.uint8:
        return x.permute(0, 3, 1, 2) if x.shape[-1] == 3 else x
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    return (x.float() * s + m).round().clamp(0, 255).to(torch.uint8)


class TrainSampleGrid(L.Callback):
    """Logs ``samples/train_augmented`` (up to ``max_images`` images of each fit's first training batch, augmented) and
    ``samples/train_augmented_labels``, taken from the step that trains on it: nothing extra is loaded, the sampler
    and RNG are untouched. The DataModule's (else the model's) mean/std give back the exact uint8 images."""

    def __init__(self, max_images: int = 32, nrow: int = 8) -> None:
        self.max_images, self.nrow, self._pending = max(1, int(max_images)), max(1, int(nrow)), False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = True

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._pending:
            return
        self._pending = False
        tb = _tensorboard(trainer)
        if not trainer.is_global_zero or (tb is None and not _mlflow_runs(trainer)):
            return
        from torchvision.utils import make_grid

        mean, std = pl_module.hparams["mean"], pl_module.hparams["std"]  # the normalisation the batches went through
        dm_hp = getattr(getattr(trainer, "datamodule", None), "hparams", None) or {}
        if dm_hp.get("mean") is not None and dm_hp.get("std") is not None:
            mean, std = dm_hp["mean"], dm_hp["std"]
        with torch.no_grad():
            samples = denormalize_to_uint8(batch[0][: self.max_images].detach(), mean, std).cpu()
            grid = make_grid(samples.float() / 255.0, nrow=self.nrow, padding=2, pad_value=1.0)
        _log_image(trainer, "samples/train_augmented", grid, trainer.global_step)
        if tb is not None:  # the labels as a Markdown table laid out like the grid (after the label-aware flip)
            cells = [class_tag(int(c)) for c in batch[1][: self.max_images].tolist()]
            width, nrow = min(self.nrow, len(cells)), self.nrow
            head = "| " + " | ".join(f"col {i}" for i in range(width)) + " |\n|" + "---|" * width
            rows = ["| " + " | ".join(cells[i : i + nrow]) + " |" for i in range(0, len(cells), nrow)]
            tb.add_text("samples/train_augmented_labels", "\n".join([head, *rows]), global_step=trainer.global_step)


def class_tag(class_id: int) -> str:
    """``NN_<short name>`` for a class: ``14_stop``, ``01_speed_limit_30km_h``."""
    slug = re.sub(r"[^a-z0-9]+", "_", class_name(class_id).lower()).strip("_")
    return f"{class_id:02d}_{slug[:32].rstrip('_')}"


class _ValConfusion(L.Callback):
    """The confusion matrix of ``validation_step``'s ``preds``/``target`` over each validation epoch (sanity checks
    excluded), summed over all processes, handed to :meth:`_log` on global zero."""

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = num_classes

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        n = int(self.num_classes or pl_module.hparams.num_classes)
        self.confmat = MulticlassConfusionMatrix(num_classes=n).to(pl_module.device)  # a fresh one per epoch

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, *_: Any) -> None:
        if not trainer.sanity_checking:  # validation_step's outputs are detached
            self.confmat.update(outputs["preds"], outputs["target"])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # Every process computes: under DDP this is the all-gather that sums the per-rank matrices.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            cm = self.confmat.compute().detach().cpu()
        if trainer.is_global_zero and int(cm.sum()) > 0:
            self._log(trainer, cm)

    def _log(self, trainer: L.Trainer, cm: torch.Tensor) -> None:
        raise NotImplementedError


class ValConfusionMatrix(_ValConfusion):
    """Logs ``val/confusion_matrix`` (:func:`alexnet_gtsrb.plots.confusion_figure`) after every validation epoch, in
    each MLflow run as ``figures/val_confusion_matrix_step<N>.png``."""

    def _log(self, trainer: L.Trainer, cm: torch.Tensor) -> None:
        tb, runs, step = _tensorboard(trainer), _mlflow_runs(trainer), _log_step(trainer)
        if tb is None and not runs:
            return
        figure = confusion_figure(cm)
        for client, run_id in runs:
            client.log_figure(run_id, figure, f"figures/val_confusion_matrix_step{step:06d}.png")
        if tb is not None:
            tb.add_figure("val/confusion_matrix", figure, global_step=step, close=False)
        pyplot().close(figure)


class ValClassAccuracy(_ValConfusion):
    """Logs ``val_class_acc/NN_<name>`` after every validation epoch: each class's accuracy (diagonal over row sum)
    for every class with images in the epoch; their mean weighted by class support is ``val/acc``."""

    def _log(self, trainer: L.Trainer, cm: torch.Tensor) -> None:
        support = cm.sum(dim=1)
        acc = cm.diag().double() / support.clamp_min(1).double()
        values = {f"val_class_acc/{class_tag(c)}": float(acc[c]) for c in range(len(support)) if support[c] > 0}
        step = _log_step(trainer)
        for lg in trainer.loggers:
            lg.log_metrics(values, step=step)


def _short_target(target: Any) -> str | None:
    return str(target).rsplit(".", 1)[-1] if target else None


def _flat_scalars(values: Mapping[str, Any], prefix: str = "") -> dict[str, str | int | float]:
    """Flat ``{"a/b": scalar}``: None dropped, booleans as "true"/"false", sequences and the rest as strings."""
    out: dict[str, str | int | float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat_scalars(value, f"{name}/"))
        elif isinstance(value, bool):
            out[name] = str(value).lower()
        elif isinstance(value, int | float | str):
            out[name] = value
        elif value is not None:
            out[name] = ",".join(map(str, value)) if isinstance(value, Iterable) else str(value)
    return out


def run_hparams(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """The run's key settings, from the model's and the DataModule's saved hyper-parameters and the trainer."""
    hp = pl_module.hparams
    net, opt, sched = (hp.get(k) or {} for k in ("net", "optimizer", "scheduler"))
    dm_hp = getattr(getattr(trainer, "datamodule", None), "hparams", None) or {}
    augment, batch = dm_hp.get("augment") or {}, dm_hp.get("batch_size")
    return {
        **{f"model/{k}": net.get(k) for k in ("variant", "groups", "lrn", "batch_norm", "dropout", "init")},
        **{f"model/{k}": hp.get(k) for k in ("label_smoothing", "channels_last")},
        "image_size": net.get("image_size", dm_hp.get("image_size")),
        "optimizer": _short_target(opt.get("_target_")),
        **{f"optimizer/{k}": opt.get(k) for k in ("lr", "weight_decay", "momentum")},
        "scheduler": _short_target(sched.get("_target_")) or "none",
        "data/batch_size": batch,
        "data/batch_size_global": global_batch_size(batch, trainer) if batch is not None else None,
        "data/augment": augment.get("preset"),
        "data/clahe": augment.get("clahe"),
        **{f"data/{k}": dm_hp.get(k) for k in ("roi_crop", "split", "class_balance")},
        "ema/decay": next((cb.decay for cb in getattr(trainer, "callbacks", []) if isinstance(cb, EMAWeights)), None),
        "trainer/max_epochs": trainer.max_epochs,
        "trainer/precision": trainer.precision,
        "trainer/world_size": trainer.world_size,
        "seed": int(os.environ["PL_GLOBAL_SEED"]) if os.environ.get("PL_GLOBAL_SEED") else None,
    }


class HParamsSummary(L.Callback):
    """Writes one HPARAMS-tab session once the run is over (after the test with ``wait_for_test``, else at fit end):
    the flat :func:`run_hparams` plus ``extra`` against the names of ``metrics``, whose values TensorBoard reads from
    the run's own scalars (``TensorBoardLogger.log_hyperparams`` would re-log them and fill ``hparams.yaml``)."""

    def __init__(
        self,
        metrics: Sequence[str] = HPARAMS_METRICS,
        wait_for_test: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.metrics = tuple(metrics)
        self.wait_for_test = bool(wait_for_test)
        self.extra = dict(extra or {})
        self._fit_metrics: set[str] = set()  # the metrics logged by the end of fitting
        self._written = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_metrics, self._written = set(), False

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_metrics = set(trainer.callback_metrics)
        if not self.wait_for_test:
            self._write(trainer, pl_module, self._fit_metrics)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, self._fit_metrics | set(trainer.callback_metrics))

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, logged: set[str]) -> None:
        tb = _tensorboard(trainer)
        if self._written or tb is None or not trainer.is_global_zero:
            return
        from torch.utils.tensorboard.summary import hparams

        where = provenance(trainer.strategy.root_device)
        params = _flat_scalars({**run_hparams(trainer, pl_module), "provenance": where, **self.extra})
        names = {k: 0.0 for k in self.metrics if k in logged}  # only the names matter (the values are the scalars')
        writer = tb._get_file_writer()  # as TensorBoardLogger.log_hyperparams does
        for summary in hparams(params, names):
            writer.add_summary(summary, trainer.global_step)
        tb.flush()
        self._written = True
