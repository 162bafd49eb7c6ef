"""Entry point: ``python -m alexnet_gtsrb.train experiment=baseline`` (Hydra composes conf/train.yaml).

``train(cfg)`` builds the DataModule, LightningModule, callbacks, loggers and Trainer, fits (or resumes:
docs/workflows.md, with sweeps and DDP), tests with the checkpoint the ``test_ckpt`` rule names, writes
``metrics.json`` and returns the metrics. ``ALEXNET_GTSRB_DUMP_SHARDS=<dir>``: each rank writes the sample indices it
draws in the first epoch to ``<dir>/rank<r>.json``. The tested checkpoint is fixed before any test result is seen
(:data:`alexnet_gtsrb.run_folder.TEST_CKPT_RULES`): ``last`` by default (with ``callbacks=ema`` the average),
because validation accuracy saturates (0.990-0.993 from epoch ~11 on the 4,962 validation images), so "best" picks
among near-ties by noise, and the recipes' one-cycle schedule anneals to the end.
"""

from __future__ import annotations

from alexnet_gtsrb.utils.early import answer_early

answer_early("train", "alexnet-gtsrb-train", __name__ == "__main__")  # --help/--version before torch is imported

import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from alexnet_gtsrb.callbacks.debug import ShardDump
from alexnet_gtsrb.callbacks.progress import PlainProgress
from alexnet_gtsrb.checkpoints import check_fits, read_checkpoint, resolve_ckpt_path
from alexnet_gtsrb.errors import ConfigError, NonFiniteLossError
from alexnet_gtsrb.evaluation.intervals import describe_test_set, format_accuracy, interval_metrics
from alexnet_gtsrb.evaluation.views import check_test_views
from alexnet_gtsrb.loggers import instantiate_group
from alexnet_gtsrb.models.pretrained import load_pretrained
from alexnet_gtsrb.provenance import provenance
from alexnet_gtsrb.run_folder import TEST_CKPT_RULES, check_test_ckpt, claim_run_folder
from alexnet_gtsrb.utils.cli import exit_on_user_error, hydra_entry_point, print_rank_zero, use_extensions
from alexnet_gtsrb.utils.files import atomic_write
from alexnet_gtsrb.utils.wrappers import global_batch_size

log = logging.getLogger(__name__)


def _write_metrics(
    cfg: DictConfig, trainer: L.Trainer, metrics: dict[str, float], extra: dict[str, Any], start: float
) -> None:
    """``<output_dir>/metrics.json`` with every final metric, the wall time and the checkpoints (rank zero)."""
    out_dir = cfg.get("paths", {}).get("output_dir")
    if trainer.global_rank != 0 or not out_dir:
        return
    path = Path(str(out_dir)) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
    data = {"metrics": clean, **extra, "wall_time_s": round(time.monotonic() - start, 3)}
    with atomic_write(path, "w") as f:  # never half-written: readers take a present file as complete
        f.write(json.dumps(data, indent=2, sort_keys=True))


def _best_checkpoint(trainer: L.Trainer) -> str:
    """The path of the best checkpoint so far ("" when none was saved)."""
    callback = trainer.checkpoint_callback
    return str(callback.best_model_path) if isinstance(callback, ModelCheckpoint) else ""


def _test_checkpoint(trainer: L.Trainer, rule: str) -> str:
    """The checkpoint file the ``test_ckpt`` rule names ("" for the weights in memory), printed with the rule. For
    ``last``: ``last.ckpt`` of the end-of-epoch callback (``callbacks.last_checkpoint``), else of any callback writing
    one (Lightning's ``ckpt_path="last"`` would take the newest ``last*.ckpt`` of any), its global step checked
    against the trainer's (the step checkpoint writes it mid-epoch too)."""
    named = [
        cb
        for cb in trainer.checkpoint_callbacks
        if isinstance(cb, ModelCheckpoint) and cb.dirpath and cb.filename == cb.CHECKPOINT_NAME_LAST
    ]
    named.sort(key=lambda cb: bool(cb._every_n_train_steps))  # the end-of-epoch callback first
    paths = [Path(str(cb.dirpath)) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}" for cb in named]
    path = _best_checkpoint(trainer) if rule == "best" else next((str(p) for p in paths if p.is_file()), "")
    if not path:
        why = "no checkpoint written (fast_dev_run, no validation, or no such checkpoint callback)"
        log.warning("test_ckpt=%s: %s: testing the weights in memory.", rule, why)
        return ""
    if rule == "last":
        step = read_checkpoint(path).get("global_step")
        if step != trainer.global_step:
            log.warning("%s is from global step %s, training ended at %d.", path, step, trainer.global_step)
    print_rank_zero(f"test checkpoint: {path} (test_ckpt={rule}: {TEST_CKPT_RULES[rule]})")
    return path


class _TestImageCount(L.Callback):
    """The test images really scored (fewer with ``trainer.limit_test_batches``), over all ranks: test/acc's n."""

    images = 0  # one test per train() call, each with a new counter

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, *_: Any) -> None:
        self.images += int(batch[1].numel())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.strategy.reduce(torch.tensor(float(self.images), device=pl_module.device), reduce_op="sum")
        self.images = int(round(float(total)))


def _use_test_views(views: int, datamodule: Any, model: Any) -> None:
    """``test_views`` (checked at start by :func:`check_test_views`) for the DataModule and
    ``GTSRBClassifier.test_views``."""
    datamodule.use_test_views(views)
    model.test_views = views
    if views == 10:
        print_rank_zero("test: 10 views per image (centre + 4 corner crops, each with a label-mapped flip)")


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit and test as the config says; returns (metrics, objects) for callers and tests."""
    start = time.monotonic()
    use_extensions(cfg)  # presets and networks registered outside the package
    rule = check_test_ckpt(cfg.get("test_ckpt", "last"))  # a typo stops the run now, not after training
    views = check_test_views(cfg.get("test_views", 1))  # likewise
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)

    datamodule = instantiate(cfg.data, _convert_="all")  # plain containers: weights_only checkpoints
    model = instantiate(cfg.model, _recursive_=False)
    if model.hparams.get("pretrained") and not cfg.get("ckpt_path"):  # a resumed run already holds its weights
        loaded = load_pretrained(model.net, str(model.hparams.pretrained))
        print_rank_zero(
            f"pretrained: {loaded['tensors']} tensors from {loaded['source']}; "
            f"{', '.join(loaded['head_left'])} initialised for {model.hparams.num_classes} classes"
        )
    callbacks = instantiate_group(cfg.get("callbacks"))
    if shards := os.environ.get("ALEXNET_GTSRB_DUMP_SHARDS"):
        callbacks.append(ShardDump(shards))
    callbacks.append(counter := _TestImageCount())
    mode = str(cfg.get("progress", "auto"))  # auto: plain lines when stdout is not a terminal (callbacks/progress.py)
    if mode not in ("auto", "bar", "plain"):
        raise ConfigError(f"progress={mode!r}; allowed: auto, bar, plain.")
    plain = mode == "plain" or (mode == "auto" and not sys.stdout.isatty())
    if plain:
        callbacks.append(PlainProgress(every_n_steps=int(cfg.get("progress_every_n_steps") or 0)))
    accel = str(cfg.trainer.get("accelerator", "auto"))
    switches: dict[str, Any] = {"enable_progress_bar": False} if plain else {}
    if cfg.trainer.get("sync_batchnorm") and (accel == "cpu" or (accel == "auto" and not torch.cuda.is_available())):
        # trainer=ddp_cpu mirrors trainer=ddp; torch's SyncBatchNorm needs GPU tensors, so on CPU each rank keeps
        # its own BatchNorm statistics (DDP still broadcasts rank 0's buffers before every training forward)
        log.warning("trainer.sync_batchnorm=true ignored on CPU (SyncBatchNorm runs on GPUs only).")
        switches["sync_batchnorm"] = False
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **switches)
    fitting = bool(cfg.get("train", True))
    run_dir = cfg.get("paths", {}).get("output_dir") if trainer.global_rank == 0 and fitting else None
    with claim_run_folder(run_dir, resuming=bool(cfg.get("ckpt_path"))):
        metrics = _fit_and_test(cfg, datamodule, model, trainer, start, counter, rule, views)
    return metrics, {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}


def _fit(cfg: DictConfig, datamodule: Any, model: L.LightningModule, trainer: L.Trainer) -> str | None:
    """Fit, or resume from ``cfg.ckpt_path`` (returned), checked against the model first: a truncated, pickled,
    foreign or mismatched file is one line naming it, not a traceback inside ``fit``."""
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir=cfg.get("paths", {}).get("output_dir"))
    if ckpt_path:
        check_fits(read_checkpoint(ckpt_path)["state_dict"], model, ckpt_path)
        print_rank_zero(f"resuming from {ckpt_path}")
    try:
        with warnings.catch_warnings():
            # the training order continues mid-epoch from the global step (data/sampling.py); Lightning's
            # "your dataloader is not resumable" does not apply
            warnings.filterwarnings("ignore", message=".*ended before the epoch ended and your dataloader.*")
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except NonFiniteLossError as exc:
        best = _best_checkpoint(trainer) or "none saved yet"
        raise NonFiniteLossError(f"{exc} Best checkpoint: {best}.") from None
    return ckpt_path


def _fit_and_test(
    cfg: DictConfig,
    datamodule: Any,
    model: L.LightningModule,
    trainer: L.Trainer,
    start: float,
    counter: _TestImageCount,
    rule: str,
    views: int,
) -> dict[str, float]:
    """Fit (or resume), write metrics.json, test with the ``test_ckpt`` rule's checkpoint on ``views`` views, write
    it again."""
    fitting, testing = bool(cfg.get("train", True)), bool(cfg.get("test", True))
    per_rank = int(cfg.data.batch_size)  # data.batch_size is per process
    global_batch = global_batch_size(per_rank, trainer)
    sizes = {"batch_size_per_rank": per_rank, "world_size": trainer.world_size, "batch_size_global": global_batch}
    for lg in trainer.loggers:
        lg.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True), **sizes})
    print_rank_zero(f"batch size: {per_rank} per rank x {trainer.world_size} rank(s) = {global_batch} global")
    ckpt_path = _fit(cfg, datamodule, model, trainer) if fitting else None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    extra: dict[str, Any] = {
        "provenance": provenance(trainer.strategy.root_device),
        "epochs": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "best_checkpoint": _best_checkpoint(trainer) or None,
        "resumed_from": ckpt_path,
        "test_ckpt": rule,
        **sizes,
    }
    if testing:
        # the fit's numbers are on disk before the test starts: an interrupted test loses nothing
        _write_metrics(cfg, trainer, metrics, extra, start)
        if not fitting:
            print_rank_zero("test: the weights in memory (train=false: no checkpoint rule applies)")
        tested = _test_checkpoint(trainer, rule) if fitting else ""
        extra["test_checkpoint"] = tested or None
        _use_test_views(views, datamodule, model)
        trainer.test(model, datamodule=datamodule, ckpt_path=tested or None, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if "val/acc_best" in metrics:
        print_rank_zero(f"val/acc_best: {metrics['val/acc_best']:.4f}")
    if "test/acc" in metrics and testing:
        # what the test set is, and test/acc as counts: the images tested and round(test/acc x images) correct
        images, test_set = counter.images, describe_test_set(r.label for r in datamodule.test_set.records)
        correct = round(metrics["test/acc"] * images)
        extra.update(test_set=test_set, test_images=images, test_correct=correct)
        if images > 0:
            metrics.update(interval_metrics("test/acc", correct, images))
            print_rank_zero(f"test set: {test_set['note']}")
            if images != test_set["images"]:
                print_rank_zero(f"tested: {images} of its {test_set['images']} images (trainer.limit_test_batches)")
            print_rank_zero(f"test/acc: {format_accuracy(correct, images)}")
    _write_metrics(cfg, trainer, metrics, extra, start)
    return metrics


def _objective(cfg: DictConfig) -> float | None:
    """Train, and return the configured metric (``optimized_metric``) for a sweeper."""
    metrics, _ = train(cfg)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


hydra_main = hydra_entry_point("train", _objective)


def main() -> None:
    """``alexnet-gtsrb-train``: check the extras the overrides need (Hydra's own error names none), register the Optuna
    sweeper (Hydra's scan of ``hydra_plugins`` misses editable installs), run :func:`hydra_main`."""
    from alexnet_gtsrb.utils.optional_deps import require_extras_for_overrides

    exit_on_user_error(require_extras_for_overrides)(sys.argv[1:])
    from hydra.core.plugins import Plugins

    from hydra_plugins.alexnet_gtsrb_optuna.optuna_sweeper import OptunaSweeper

    Plugins.instance().register(OptunaSweeper)
    hydra_main()


if __name__ == "__main__":
    main()
