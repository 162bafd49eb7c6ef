"""Loggers whose stores live in the run folder (``conf/logger/csv.yaml``, ``mlflow.yaml``, ``many.yaml``):
Lightning's CSV and MLflow loggers with the two changes this project needs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

from alexnet_gtsrb.run_folder import CSV_TIME


class TimedCSVLogger(CSVLogger):
    """Lightning's CSVLogger with the wall-clock time on every row of ``metrics.csv`` (column ``wall_time``,
    seconds since the epoch): the per-epoch table read back from it then has its minutes, as TensorBoard events
    (which carry their own wall time) do."""

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        super().log_metrics({**metrics, CSV_TIME: time.time()}, step)


class RunFolderMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger for one run folder (the store is shared, ``conf/logger/mlflow.yaml``; without a
    tracking URI it is ``<run folder>/mlruns``): the run is named after the folder, and with
    ``log_model=True`` the checkpoint uploaded at the end is the best one (``epoch_NNN.ckpt``).

    Lightning uploads, at the end of training, the files of the *last* ModelCheckpoint callback that saved; here
    that would be ``last_checkpoint`` (``last.ckpt``, saved after ``model_checkpoint`` every epoch). This logger
    keeps the callback that monitors a metric once one has saved, so ``model_checkpoint``'s best file is uploaded
    (as the artifact ``epoch_NNN/epoch_NNN.ckpt``, next to Lightning's ``metadata.yaml`` and ``aliases.txt``).

    MLflow 3's file store (``file:`` tracking URIs) refuses to start unless ``MLFLOW_ALLOW_FILE_STORE=true``
    (it is in maintenance mode); for a ``file:`` URI this sets that variable in the process unless it is set
    already. A database store works too: ``tracking_uri=sqlite:///<run folder>/mlflow.db``; artifacts then go to
    ``artifact_location``, by default ``<run folder>/mlartifacts``.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        tracking_uri: str | None = None,
        run_name: str | None = None,
        artifact_location: str | None = None,
        **kwargs: Any,
    ) -> None:
        folder = Path(run_dir).resolve()
        tracking_uri = tracking_uri or f"file:{folder / 'mlruns'}"
        if tracking_uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        elif artifact_location is None:
            artifact_location = str(folder / "mlartifacts")
        super().__init__(
            tracking_uri=tracking_uri,
            run_name=run_name or folder.name,
            artifact_location=artifact_location,
            **kwargs,
        )

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        kept = self._checkpoint_callback
        monitors = getattr(checkpoint_callback, "monitor", None) is not None
        if self._log_model is True and kept is not None and kept.monitor is not None and not monitors:
            return  # keep the callback that tracks the best checkpoint
        super().after_save_checkpoint(checkpoint_callback)


class LoggerGroup:
    """The loggers of a ``logger`` config group, built outside a Trainer (``evaluate``, ``robustness``): scalars at
    a step to every logger, figures to TensorBoard, then each logger finalised."""

    def __init__(self, group: Mapping[str, Any] | None) -> None:
        from hydra.utils import instantiate
        from omegaconf import DictConfig

        configs = (group or {}).values()
        self.loggers = [instantiate(c) for c in configs if isinstance(c, DictConfig) and "_target_" in c]

    def scalars(self, values: Mapping[str, float], step: int = 0) -> None:
        for lg in self.loggers:
            lg.log_metrics(dict(values), step=step)

    def figure(self, tag: str, fig_fn: Callable[[], Any]) -> None:
        """``fig_fn()`` (a matplotlib figure, built only when a TensorBoard logger is there) under ``tag``."""
        for lg in self.loggers:
            if isinstance(lg, TensorBoardLogger):
                lg.experiment.add_figure(tag, fig_fn(), global_step=0, close=True)

    def close(self) -> None:
        for lg in self.loggers:
            lg.finalize("success")
