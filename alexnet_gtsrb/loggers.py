"""Building a config group's loggers, and Lightning's CSV and MLflow loggers with the changes this project needs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from alexnet_gtsrb.run_folder import CSV_TIME


def instantiate_group(group: Mapping[str, Any] | None) -> list[Any]:
    """Instantiate every entry of a callbacks/logger group that has a ``_target_`` and is not switched off
    (``enabled: false``, e.g. ``callbacks.early_stopping``)."""
    built = []
    for entry in (group or {}).values():
        if isinstance(entry, DictConfig) and "_target_" in entry and entry.get("enabled", True):
            # resolved while still attached to the whole config (interpolations such as ${oc.select:task_name})
            resolved: Any = OmegaConf.to_container(entry, resolve=True)
            built.append(instantiate({k: v for k, v in resolved.items() if k != "enabled"}))
    return built


class TimedCSVLogger(CSVLogger):
    """Lightning's CSVLogger with the wall-clock time (seconds since the epoch) on every row of ``metrics.csv``:
    the per-epoch table read back from it then has its minutes, as TensorBoard events (which carry theirs) do."""

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        super().log_metrics({**metrics, CSV_TIME: time.time()}, step)


class RunFolderMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger named after the run folder (default store ``<run folder>/mlruns``; with a database
    URI artifacts go to ``<run folder>/mlartifacts``). With ``log_model=True`` the best checkpoint is uploaded, not
    the files of the *last* ModelCheckpoint that saved (``last.ckpt``). MLflow 3's file store refuses to start
    unless ``MLFLOW_ALLOW_FILE_STORE=true``, set here unless set already."""

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
            tracking_uri=tracking_uri, run_name=run_name or folder.name, **kwargs, artifact_location=artifact_location
        )

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        kept = self._checkpoint_callback
        keep = self._log_model is True and kept is not None and kept.monitor is not None
        if not keep or checkpoint_callback.monitor is not None:  # keep the callback that tracks the best file
            super().after_save_checkpoint(checkpoint_callback)


class LoggerGroup:
    """A ``logger`` group's loggers outside a Trainer (``evaluate``, ``robustness``): scalars, TensorBoard figures."""

    def __init__(self, group: Mapping[str, Any] | None) -> None:
        self.loggers = instantiate_group(group)

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
