"""TensorBoard callbacks: conv1's kernels, augmented training samples, the validation confusion matrix and
per-class accuracy, and the run's hyper-parameters with its final metrics (the HPARAMS tab). The three
pictures go to MLflow too when ``logger`` includes it (images with a step, the confusion matrix as a figure).

Each one is an entry of ``conf/callbacks/default.yaml`` and can be dropped with ``~callbacks.<name>``. Only the
global-zero process writes; every process takes part in the collective steps (the confusion matrix's sync).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

from alexnet_gtsrb.callbacks.ema import EMAWeights
from alexnet_gtsrb.data.classes import class_name
from alexnet_gtsrb.plots import confusion_figure, conv1_kernel_grid
from alexnet_gtsrb.provenance import device_name, provenance
from alexnet_gtsrb.utils.wrappers import global_batch_size

HPARAMS_METRICS = ("val/acc_best", "test/acc", "test/loss")


def _tensorboard(trainer: L.Trainer):
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            return lg.experiment
    return None


def _mlflow_runs(trainer: L.Trainer) -> list[tuple[Any, Any]]:
    """(client, run id) of each MLflow logger: the figures go to MLflow's store too."""
    return [(lg.experiment, lg.run_id) for lg in trainer.loggers if isinstance(lg, MLFlowLogger)]


def _log_image(trainer: L.Trainer, tag: str, image: torch.Tensor, step: int) -> None:
    """A (3, H, W) image in [0, 1] to TensorBoard (``tag``) and to each MLflow run (key ``tag`` with ``/`` as
    ``_``, one image per step in MLflow's image view)."""
    tb = _tensorboard(trainer)
    if tb is not None:
        tb.add_image(tag, image, global_step=step)
    runs = _mlflow_runs(trainer)
    if runs:
        hwc = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        for client, run_id in runs:
            client.log_image(run_id, hwc, key=tag.replace("/", "_"), step=step)


def _log_figure(trainer: L.Trainer, tag: str, make_figure: Any, step: int) -> None:
    """A matplotlib figure to TensorBoard and, as ``figures/<tag>_step<N>.png``, to each MLflow run."""
    import matplotlib.pyplot as plt

    tb, runs = _tensorboard(trainer), _mlflow_runs(trainer)
    if tb is None and not runs:
        return
    figure = make_figure()
    for client, run_id in runs:
        client.log_figure(run_id, figure, f"figures/{tag.replace('/', '_')}_step{step:06d}.png")
    if tb is not None:
        tb.add_figure(tag, figure, global_step=step, close=False)
    plt.close(figure)


def _log_step(trainer: L.Trainer) -> int:
    """The step Lightning gives epoch-level metrics (what ``val/acc`` is plotted against); Lightning's own
    LearningRateMonitor uses it too."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


class Conv1KernelGrid(L.Callback):
    """Logs ``filters/conv1`` at train start and after every epoch: kernels 0-47 | 48-95 for a 2-group net.

    After training, the paper's figure 3 shows colour-agnostic kernels in one half and colour-specific
    ones in the other; this makes the same picture for any run.
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        self.every_n_epochs = max(1, int(every_n_epochs))

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = getattr(pl_module, "net", None)
        if net is None or not trainer.is_global_zero or (_tensorboard(trainer) is None and not _mlflow_runs(trainer)):
            return
        with torch.no_grad():
            grid = conv1_kernel_grid(net)
        _log_image(trainer, "filters/conv1", grid.float().cpu(), trainer.global_step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._log(trainer, pl_module)


# -- augmented training samples --------------------------------------------------------------------------------
def denormalize_to_uint8(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The inverse of ``normalize_uint8``: a normalised float (B, 3, H, W) batch -> uint8 (B, 3, H, W).

    The normalisation is affine in float32, so rounding gives back the exact uint8 values. A uint8
    (B, H, W, 3) batch (not normalised yet) is only permuted.
    """
    if x.dtype == torch.uint8:
        return x.permute(0, 3, 1, 2) if x.shape[-1] == 3 else x
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    return (x.float() * s + m).round().clamp(0, 255).to(torch.uint8)


class TrainSampleGrid(L.Callback):
    """Logs ``samples/train_augmented``: up to ``max_images`` images of the first training batch, as the
    network gets them (augmented), once per fit (also after a resume), and ``samples/train_augmented_labels``:
    their labels (after the label-aware flip) as a text table laid out like the grid.

    The batch is taken in ``on_train_batch_start``, from the step that trains on it: nothing extra is loaded and
    the loop's iterator, sampler and RNG are untouched. By then ``GTSRBDataModule.on_after_batch_transfer`` has
    normalised it, so the DataModule's (else the model's) mean/std turn it back into the exact uint8 images.
    """

    def __init__(self, max_images: int = 32, nrow: int = 8) -> None:
        self.max_images = max(1, int(max_images))
        self.nrow = max(1, int(nrow))
        self._pending = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = True

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._pending:
            return
        images = batch[0] if isinstance(batch, list | tuple) else batch
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
            return  # not an image batch: try the next one
        self._pending = False
        tb = _tensorboard(trainer)
        if not trainer.is_global_zero or (tb is None and not _mlflow_runs(trainer)):
            return
        from torchvision.utils import make_grid

        from alexnet_gtsrb.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        mean, std = _mean_std(trainer, pl_module, IMAGENET_MEAN, IMAGENET_STD)
        with torch.no_grad():
            samples = denormalize_to_uint8(images[: self.max_images].detach(), mean, std).cpu()
            grid = make_grid(samples.float() / 255.0, nrow=self.nrow, padding=2, pad_value=1.0)
        _log_image(trainer, "samples/train_augmented", grid, trainer.global_step)
        labels = batch[1] if isinstance(batch, list | tuple) and len(batch) > 1 else None
        if isinstance(labels, torch.Tensor) and tb is not None:
            text = sample_labels_markdown(labels[: self.max_images].tolist(), self.nrow)
            tb.add_text("samples/train_augmented_labels", text, global_step=trainer.global_step)


def sample_labels_markdown(labels: Sequence[int], nrow: int) -> str:
    """The labels of a sample grid as a Markdown table laid out like the grid (``nrow`` per row): the label
    each image trains with, i.e. after the label-aware flip (a flipped "keep right" shows as "keep left")."""
    cells = [class_tag(int(c)) for c in labels]
    rows = [cells[i : i + nrow] for i in range(0, len(cells), nrow)]
    width = min(nrow, len(cells))
    head = "| " + " | ".join(f"col {i}" for i in range(width)) + " |\n|" + "---|" * width
    return "\n".join([head, *("| " + " | ".join(r) + " |" for r in rows)])


def _mean_std(trainer: L.Trainer, pl_module: L.LightningModule, mean: Any, std: Any) -> tuple[Any, Any]:
    """The normalisation the batches went through: the DataModule's, else the model's, else the defaults."""
    for owner in (getattr(trainer, "datamodule", None), pl_module):
        hp = getattr(owner, "hparams", None) or {}
        if hp.get("mean") is not None and hp.get("std") is not None:
            return hp["mean"], hp["std"]
    return mean, std


# -- validation confusion matrix and per-class accuracy -----------------------------------------------------
def class_tag(class_id: int) -> str:
    """``NN_<short name>`` for a class: ``14_stop``, ``01_speed_limit_30km_h``."""
    slug = re.sub(r"[^a-z0-9]+", "_", class_name(class_id).lower()).strip("_")
    return f"{class_id:02d}_{slug[:32].rstrip('_')}"


class _ValConfusion(L.Callback):
    """Accumulates a torchmetrics ``MulticlassConfusionMatrix`` from ``validation_step``'s returned
    ``{"preds", "target"}`` over each validation epoch (sanity checks excluded) and hands the matrix, summed
    over all processes, to :meth:`_log` on global zero."""

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = num_classes
        self.confmat: Any = None  # a MulticlassConfusionMatrix once setup() knows the class count

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.confmat is not None:
            return
        from torchmetrics.classification import MulticlassConfusionMatrix

        n = self.num_classes or (getattr(pl_module, "hparams", None) or {}).get("num_classes")
        if not n:
            raise ValueError(f"{type(self).__name__}: set num_classes (the model has no hparams.num_classes).")
        self.confmat = MulticlassConfusionMatrix(num_classes=int(n))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.confmat = self.confmat.to(pl_module.device)
        self.confmat.reset()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or not isinstance(outputs, Mapping):
            return
        preds, target = outputs.get("preds"), outputs.get("target")
        if preds is None or target is None or target.numel() == 0:
            return
        self.confmat.update(preds.detach(), target.detach())

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
    """Logs ``val/confusion_matrix`` after every validation epoch: the row-normalised matrix drawn by
    :func:`alexnet_gtsrb.plots.confusion_figure` (rows: true class, columns: predicted)."""

    def _log(self, trainer: L.Trainer, cm: torch.Tensor) -> None:
        _log_figure(trainer, "val/confusion_matrix", lambda: confusion_figure(cm), _log_step(trainer))


class ValClassAccuracy(_ValConfusion):
    """Logs ``val_class_acc/NN_<name>`` after every validation epoch: the accuracy on each class's validation
    images (confusion-matrix diagonal over row sums), for every class with images in the epoch; their mean
    weighted by class support is ``val/acc``."""

    def __init__(self, num_classes: int | None = None, prefix: str = "val_class_acc") -> None:
        super().__init__(num_classes)
        self.prefix = prefix

    def _log(self, trainer: L.Trainer, cm: torch.Tensor) -> None:
        support = cm.sum(dim=1)
        acc = cm.diag().double() / support.clamp_min(1).double()
        values = {f"{self.prefix}/{class_tag(c)}": float(acc[c]) for c in range(len(support)) if support[c] > 0}
        step = _log_step(trainer)
        for lg in trainer.loggers:
            lg.log_metrics(values, step=step)


# -- hyper-parameters with the final metrics ------------------------------------------------------------------
def _short_target(target: Any) -> str | None:
    return str(target).rsplit(".", 1)[-1] if target else None


def _flat_scalars(values: Mapping[str, Any], prefix: str = "") -> dict[str, str | int | float]:
    """Flat ``{"a/b": scalar}``: None dropped, booleans as "true"/"false", sequences and the rest as strings."""
    out: dict[str, str | int | float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat_scalars(value, f"{name}/"))
        elif value is None:
            continue
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, int | float | str):
            out[name] = value
        elif isinstance(value, torch.Tensor) and value.numel() == 1:
            out[name] = value.item()
        elif isinstance(value, Iterable):
            out[name] = ",".join(str(v) for v in value)
        else:
            out[name] = str(value)
    return out


def run_hparams(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """The run's key settings, from the model's and the DataModule's saved hyper-parameters and the trainer."""
    hp = getattr(pl_module, "hparams", None) or {}
    net = hp.get("net") or {}
    opt = hp.get("optimizer") or {}
    sched = hp.get("scheduler") or {}
    dm_hp = getattr(getattr(trainer, "datamodule", None), "hparams", None) or {}
    augment = dm_hp.get("augment") or {}
    batch = dm_hp.get("batch_size")
    callbacks: list[Any] = getattr(trainer, "callbacks", [])
    return {
        "model/variant": net.get("variant"),
        "model/groups": net.get("groups"),
        "model/lrn": net.get("lrn"),
        "model/batch_norm": net.get("batch_norm"),
        "model/dropout": net.get("dropout"),
        "model/init": net.get("init"),
        "model/label_smoothing": hp.get("label_smoothing"),
        "model/channels_last": hp.get("channels_last"),
        "image_size": net.get("image_size", dm_hp.get("image_size")),
        "optimizer": _short_target(opt.get("_target_")),
        "optimizer/lr": opt.get("lr"),
        "optimizer/weight_decay": opt.get("weight_decay"),
        "optimizer/momentum": opt.get("momentum"),
        "scheduler": _short_target(sched.get("_target_")) or "none",
        "data/batch_size": batch,
        "data/batch_size_global": global_batch_size(batch, trainer) if batch is not None else None,
        "data/augment": augment.get("preset"),
        "data/clahe": augment.get("clahe"),
        "data/roi_crop": dm_hp.get("roi_crop"),
        "data/split": dm_hp.get("split"),
        "data/class_balance": dm_hp.get("class_balance"),
        "ema/decay": next((cb.decay for cb in callbacks if isinstance(cb, EMAWeights)), None),
        "trainer/max_epochs": trainer.max_epochs,
        "trainer/precision": trainer.precision,
        "trainer/world_size": trainer.world_size,
        "seed": int(os.environ["PL_GLOBAL_SEED"]) if os.environ.get("PL_GLOBAL_SEED") else None,
    }


class HParamsSummary(L.Callback):
    """Writes one HPARAMS-tab session into the run's TensorBoard folder once the run is over: its flat
    hyper-parameters (:func:`run_hparams` plus ``extra``) against ``metrics`` (``val/acc_best``, ``test/acc``,
    ``test/loss``).

    The session lists the metric names; TensorBoard reads their values from the run's own scalars (the last
    point of each tag), so nothing is logged twice. It is written after the test that follows fitting
    (``wait_for_test``, set from the config's ``test`` flag), else when fitting ends, and once per run.
    Lightning's ``TensorBoardLogger.log_hyperparams(params, metrics)`` would write the same three summaries but
    also re-log the metrics as scalars and merge the flat keys into ``hparams.yaml``; the logger's
    ``default_hp_metric: false`` keeps it from writing a placeholder ``hp_metric`` session at start.
    """

    def __init__(
        self,
        metrics: Sequence[str] = HPARAMS_METRICS,
        wait_for_test: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.metrics = tuple(metrics)
        self.wait_for_test = bool(wait_for_test)
        self.extra = dict(extra or {})
        self._fit_metrics: dict[str, float] = {}
        self._written = False

    def _collect(self, trainer: L.Trainer) -> dict[str, float]:
        return {k: float(v) for k, v in trainer.callback_metrics.items() if k in self.metrics}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_metrics, self._written = {}, False

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_metrics = self._collect(trainer)
        if not self.wait_for_test:
            self._write(trainer, pl_module, self._fit_metrics)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, {**self._fit_metrics, **self._collect(trainer)})

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, metrics: dict[str, float]) -> None:
        tb = _tensorboard(trainer)
        if self._written or tb is None or not trainer.is_global_zero:
            return
        from torch.utils.tensorboard.summary import hparams

        where = provenance(device_name(trainer.strategy.root_device))
        params = _flat_scalars({**run_hparams(trainer, pl_module), "provenance": where, **self.extra})
        names = {k: metrics[k] for k in self.metrics if k in metrics}  # only the names matter, in this order
        writer = tb._get_file_writer()  # as TensorBoardLogger.log_hyperparams does
        for summary in hparams(params, names):
            writer.add_summary(summary, trainer.global_step)
        tb.flush()
        self._written = True
