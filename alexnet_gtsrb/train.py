"""Entry point: ``python -m alexnet_gtsrb.train experiment=baseline`` (Hydra composes conf/train.yaml).

``train(cfg)`` builds the DataModule, the LightningModule, callbacks, loggers and the Trainer from the
config, fits, tests on the official test images with the checkpoint the config's ``test_ckpt`` rule names,
writes ``metrics.json`` into the run folder and returns the metrics.

**Which checkpoint is tested** is fixed in the config before any test result is seen (``test_ckpt``, see
:data:`alexnet_gtsrb.run_folder.TEST_CKPT_RULES`): ``last`` (the default) is ``checkpoints/last.ckpt``, the
weights at the end of the last epoch (with ``callbacks=ema`` the EMA average, which the EMA callback stores as
the checkpoint's ``state_dict``); ``best`` is the epoch with the highest ``val/acc``. The default is ``last``
because validation accuracy saturates (0.990-0.993 from epoch ~11 on the 4,962 validation images), so "best"
picks among near-ties by noise, and the recipes' one-cycle schedule anneals to the end. The same file is what
``metrics.json`` reports (``test_checkpoint``) and what ``evaluate ckpt_path=<run folder>`` scores. test/acc
is printed and stored with its 95% Wilson interval and a line saying what the test set is.

Research workflows (all outputs of a run live in its Hydra run folder, ``logs/<task_name>/runs/<time>``):

- **Resume a run in place** (same folder, same TensorBoard run, same epoch/step/optimizer/scheduler state
  and best validation accuracy)::

      python -m alexnet_gtsrb.train experiment=demo \\
          ckpt_path=last hydra.run.dir=logs/demo/runs/2026-11-28_17-50-00

  ``ckpt_path=last`` takes the newest ``last.ckpt`` under the run folder named by ``hydra.run.dir``.
  Repeat the first run's overrides (or none that change the model); only ``trainer.max_epochs`` and the like
  should differ. ``ckpt_path=<file.ckpt>`` also resumes the state, but into a new run folder.
  ``checkpoints/last.ckpt`` is rewritten after every epoch (``callbacks.last_checkpoint``). The resumed run
  continues the training order, the augmentation and dropout draws where they stopped, mid-epoch too
  (:mod:`alexnet_gtsrb.data.sampling`, the generators' states in the checkpoint). The restored
  scheduler keeps its own horizon: ``step``/``plateau`` extend to a larger ``max_epochs``; ``onecycle`` and
  ``cosine`` do not (a resume that would step past a one-cycle schedule stops at start, in one line).
- **DDP on CPU** (two gloo processes; Lightning re-runs this command for rank 1 with the same
  ``hydra.run.dir``, so both ranks share one run folder; only rank 0 logs and writes files;
  ``sync_batchnorm`` is switched off on CPU, where torch's SyncBatchNorm does not run)::

      python -m alexnet_gtsrb.train experiment=demo trainer=ddp_cpu trainer.devices=2

  ``data.batch_size`` is per process: the global batch is ``batch_size x devices x num_nodes`` (printed at
  start and logged as hyper-parameters). ``ALEXNET_GTSRB_DUMP_SHARDS=<dir>`` makes each rank write the sample
  indices it draws in the first epoch to ``<dir>/rank<r>.json`` (a debugging aid).
- **Sweeps**: ``python -m alexnet_gtsrb.train -m experiment=demo model.net.lrn=true,false optimizer.lr=1e-3,1e-2``
  runs one job per sub-folder of ``logs/<task_name>/multiruns/<time>``; ``main`` returns ``optimized_metric``
  and :class:`alexnet_gtsrb.sweeps.SweepSummary` writes ``summary.csv``/``summary.md`` at the sweep root.
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

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from alexnet_gtsrb.callbacks.debug import ShardDump
from alexnet_gtsrb.callbacks.progress import PlainProgress
from alexnet_gtsrb.checkpoints import check_checkpoint_file, check_fits, read_checkpoint, resolve_ckpt_path
from alexnet_gtsrb.errors import ConfigError, NonFiniteLossError
from alexnet_gtsrb.evaluation.intervals import describe_test_set, format_accuracy, interval_metrics
from alexnet_gtsrb.models.pretrained import load_pretrained
from alexnet_gtsrb.provenance import device_name, provenance
from alexnet_gtsrb.run_folder import TEST_CKPT_RULES, check_test_ckpt, claim_run_folder
from alexnet_gtsrb.utils.cli import CONFIG_PATH, exit_on_user_error, print_rank_zero, use_extensions
from alexnet_gtsrb.utils.files import atomic_write
from alexnet_gtsrb.utils.wrappers import global_batch_size

log = logging.getLogger(__name__)
DUMP_SHARDS_ENV = "ALEXNET_GTSRB_DUMP_SHARDS"


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a callbacks/logger group that has a ``_target_`` and is not switched off
    (``enabled: false``, e.g. ``callbacks.early_stopping``)."""
    if not group:
        return []
    built = []
    for entry in group.values():
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            continue
        if not entry.get("enabled", True):
            continue
        # resolved while still attached to the whole config (interpolations such as ${oc.select:task_name})
        resolved = OmegaConf.to_container(entry, resolve=True)
        assert isinstance(resolved, dict)
        built.append(instantiate({k: v for k, v in resolved.items() if k != "enabled"}))
    return built


def _cpu_sync_batchnorm_off(trainer_cfg: DictConfig) -> dict[str, Any]:
    """``sync_batchnorm=False`` when training on CPUs: torch's SyncBatchNorm needs GPU tensors.

    ``trainer=ddp_cpu`` asks for it so the config mirrors ``trainer=ddp``; on CPU processes each rank then keeps
    its own BatchNorm statistics (DDP still broadcasts rank 0's buffers before every training forward).
    """
    import torch

    accel = str(trainer_cfg.get("accelerator", "auto"))
    on_cpu = accel == "cpu" or (accel == "auto" and not torch.cuda.is_available())
    if trainer_cfg.get("sync_batchnorm") and on_cpu:
        log.warning("trainer.sync_batchnorm=true ignored on CPU (SyncBatchNorm runs on GPUs only).")
        return {"sync_batchnorm": False}
    return {}


def _batch_sizes(cfg: DictConfig, trainer: L.Trainer) -> dict[str, int]:
    """Per-process and global batch size (data.batch_size is per process)."""
    per_rank = int(cfg.data.batch_size)
    return {
        "batch_size_per_rank": per_rank,
        "world_size": int(trainer.world_size),
        "batch_size_global": global_batch_size(per_rank, trainer),
    }


def _write_metrics(cfg: DictConfig, trainer: L.Trainer, metrics: dict[str, float], extra: dict[str, Any]) -> None:
    """``<output_dir>/metrics.json`` with every final metric, the wall time and the checkpoints (rank zero)."""
    if trainer.global_rank != 0:
        return
    out_dir = cfg.get("paths", {}).get("output_dir")
    if not out_dir:
        return
    path = Path(str(out_dir)) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
    with atomic_write(path, "w") as f:  # never half-written: readers take a present file as complete
        f.write(json.dumps({"metrics": clean, **extra}, indent=2, sort_keys=True))


def _best_checkpoint(trainer: L.Trainer) -> str:
    """The path of the best checkpoint so far ("" when none was saved)."""
    callback = trainer.checkpoint_callback
    return str(callback.best_model_path) if isinstance(callback, ModelCheckpoint) else ""


def _last_checkpoint(trainer: L.Trainer) -> str:
    """``<dirpath>/last.ckpt`` of the end-of-epoch checkpoint callback (``callbacks.last_checkpoint``: a
    ModelCheckpoint named ``last`` without a step interval), else of any callback writing a ``last`` file;
    "" when there is no such file. Named explicitly: Lightning's ``ckpt_path="last"`` takes whichever
    ``last*.ckpt`` (``last-vN.ckpt`` included) in any checkpoint callback's folder was modified last."""
    named = [
        cb
        for cb in trainer.checkpoint_callbacks
        if isinstance(cb, ModelCheckpoint) and cb.dirpath and cb.filename == cb.CHECKPOINT_NAME_LAST
    ]
    named.sort(key=lambda cb: bool(cb._every_n_train_steps))  # the end-of-epoch callback first
    for cb in named:
        path = Path(str(cb.dirpath)) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
        if path.is_file():
            return str(path)
    return ""


def _test_checkpoint(cfg: DictConfig, trainer: L.Trainer, fitted: bool) -> str:
    """The checkpoint file the ``test_ckpt`` rule names ("" for the weights in memory), printed with the rule.

    ``last`` must hold the end of training: its ``global_step`` is checked against the trainer's (the step
    interval callback also writes ``last.ckpt``, mid-epoch; the end-of-epoch write comes after it).
    """
    rule = check_test_ckpt(cfg.get("test_ckpt", "last"))
    if not fitted:
        print_rank_zero("test: the weights in memory (train=false: no checkpoint rule applies)")
        return ""
    path = _best_checkpoint(trainer) if rule == "best" else _last_checkpoint(trainer)
    if not path:
        why = "no checkpoint written (fast_dev_run, no validation, or no such checkpoint callback)"
        log.warning("test_ckpt=%s: %s: testing the weights in memory.", rule, why)
        return ""
    if rule == "last":
        import torch

        checked = check_checkpoint_file(path)
        step = torch.load(checked, map_location="cpu", weights_only=True, mmap=True).get("global_step")
        if step != trainer.global_step:
            log.warning("%s is from global step %s, training ended at %d.", path, step, trainer.global_step)
    print_rank_zero(f"test checkpoint: {path} (test_ckpt={rule}: {TEST_CKPT_RULES[rule]})")
    return path


class _TestImageCount(L.Callback):
    """Counts the test images the test really scored (``trainer.limit_test_batches`` makes it fewer than the test
    set), summed over DDP ranks: the n of test/acc's interval."""

    def __init__(self) -> None:
        self.images = 0

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.images = 0

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        self.images += int(batch[1].numel())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import torch

        total = trainer.strategy.reduce(torch.tensor(float(self.images), device=pl_module.device), reduce_op="sum")
        self.images = int(round(float(total)))


def _test_accuracy(datamodule: Any, counter: _TestImageCount, metrics: dict[str, float]) -> dict[str, Any]:
    """What the test set is, and test/acc as counts: the images tested and the correct answers,
    round(test/acc x images)."""
    records = datamodule.test_set.records
    return {
        "test_set": describe_test_set(r.label for r in records),
        "test_images": counter.images,
        "test_correct": round(metrics["test/acc"] * counter.images),
    }


def _plain_progress(cfg: DictConfig) -> bool:
    """``progress``: ``bar`` (Lightning's progress bar), ``plain`` (a log line per epoch), or ``auto``: plain
    lines when stdout is not a terminal (nohup, SLURM, CI, ``> run.log``), where a bar shows nothing useful."""
    mode = str(cfg.get("progress", "auto"))
    if mode not in ("auto", "bar", "plain"):
        raise ConfigError(f"progress={mode!r}; allowed: auto, bar, plain.")
    return mode == "plain" or (mode == "auto" and not sys.stdout.isatty())


def _resume_from(cfg: DictConfig, model: L.LightningModule) -> str | None:
    """The checkpoint to resume from (``ckpt_path``), read as plain data and checked against the model first:
    a truncated, pickled, foreign or mismatched file is one line naming it, not a traceback inside ``fit``."""
    run_dir = cfg.get("paths", {}).get("output_dir")
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir=run_dir)
    if ckpt_path:
        check_fits(read_checkpoint(ckpt_path)["state_dict"], model, ckpt_path)
        print_rank_zero(f"resuming from {ckpt_path}")
    return ckpt_path


def _use_test_views(cfg: DictConfig, datamodule: Any, model: L.LightningModule) -> None:
    """``test_views``: 1 (the evaluation pipeline's single view) or 10 (the paper's five crops and their
    label-mapped flips, softmax averaged, cut from the enlarged test image)."""
    views = cfg.get("test_views", 1)
    if views not in (1, 10) or isinstance(views, bool):
        raise ConfigError(f"test_views={views!r}; allowed: 1 (one centre view), 10 (the paper's 5 crops + flips).")
    datamodule.use_test_views(int(views))
    model_any: Any = model  # GTSRBClassifier.test_views
    model_any.test_views = int(views)
    if views == 10:
        print_rank_zero("test: 10 views per image (centre + 4 corner crops, each with a label-mapped flip)")


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit and test as the config says; returns (metrics, objects) for callers and tests."""
    start = time.monotonic()
    use_extensions(cfg)  # presets and networks registered outside the package
    check_test_ckpt(cfg.get("test_ckpt", "last"))  # a typo stops the run now, not after training
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
    callbacks = _instantiate_group(cfg.get("callbacks"))
    if os.environ.get(DUMP_SHARDS_ENV):
        callbacks.append(ShardDump(os.environ[DUMP_SHARDS_ENV]))
    counter = _TestImageCount()
    callbacks.append(counter)
    plain = _plain_progress(cfg)
    if plain:
        callbacks.append(PlainProgress(every_n_steps=int(cfg.get("progress_every_n_steps") or 0)))
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        **({"enable_progress_bar": False} if plain else {}),
        **_cpu_sync_batchnorm_off(cfg.trainer),
    )
    fitting = bool(cfg.get("train", True))
    run_dir = cfg.get("paths", {}).get("output_dir") if trainer.global_rank == 0 and fitting else None
    with claim_run_folder(run_dir, resuming=bool(cfg.get("ckpt_path"))):
        metrics = _fit_and_test(cfg, datamodule, model, trainer, start, counter)
    return metrics, {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}


def _fit(cfg: DictConfig, datamodule: Any, model: L.LightningModule, trainer: L.Trainer) -> str | None:
    """Fit, or resume from ``cfg.ckpt_path``; returns the checkpoint resumed from."""
    ckpt_path = _resume_from(cfg, model)
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
) -> dict[str, float]:
    """Fit (or resume), write metrics.json, test with the ``test_ckpt`` rule's checkpoint, write it again."""
    sizes = _batch_sizes(cfg, trainer)
    for lg in trainer.loggers:
        lg.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True), **sizes})
    print_rank_zero(
        f"batch size: {sizes['batch_size_per_rank']} per rank x {sizes['world_size']} rank(s) "
        f"= {sizes['batch_size_global']} global"
    )
    ckpt_path = _fit(cfg, datamodule, model, trainer) if cfg.get("train", True) else None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = _best_checkpoint(trainer)
    extra: dict[str, Any] = {
        "provenance": provenance(device_name(trainer.strategy.root_device)),
        "epochs": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "best_checkpoint": best or None,
        "resumed_from": ckpt_path,
        **sizes,
    }
    extra["test_ckpt"] = check_test_ckpt(cfg.get("test_ckpt", "last"))
    if cfg.get("test", True):
        # the fit's numbers are on disk before the test starts: an interrupted test loses nothing
        _write_metrics(cfg, trainer, metrics, {**extra, "wall_time_s": round(time.monotonic() - start, 3)})
        tested = _test_checkpoint(cfg, trainer, fitted=bool(cfg.get("train", True)))
        extra["test_checkpoint"] = tested or None
        _use_test_views(cfg, datamodule, model)
        trainer.test(model, datamodule=datamodule, ckpt_path=tested or None, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if "val/acc_best" in metrics:
        print_rank_zero(f"val/acc_best: {metrics['val/acc_best']:.4f}")
    if "test/acc" in metrics and cfg.get("test", True):
        counts = _test_accuracy(datamodule, counter, metrics)
        extra.update(counts)
        if counts["test_images"] > 0:
            metrics.update(interval_metrics("test/acc", counts["test_correct"], counts["test_images"]))
            print_rank_zero(f"test set: {counts['test_set']['note']}")
            if counts["test_images"] != counts["test_set"]["images"]:
                print_rank_zero(
                    f"tested: {counts['test_images']} of its {counts['test_set']['images']} images "
                    "(trainer.limit_test_batches)"
                )
            print_rank_zero(f"test/acc: {format_accuracy(counts['test_correct'], counts['test_images'])}")
    _write_metrics(cfg, trainer, metrics, {**extra, "wall_time_s": round(time.monotonic() - start, 3)})
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
@exit_on_user_error
def hydra_main(cfg: DictConfig) -> float | None:
    """Compose, train, and return the configured metric for a sweeper."""
    metrics, _ = train(cfg)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


def main() -> None:
    """``python -m alexnet_gtsrb.train`` and the ``alexnet-gtsrb-train`` console script: first check that the
    optional extras behind ``hparams_search=optuna`` / ``cluster=slurm`` are installed (one line and exit 2 if
    not; Hydra's own error names neither), then let Hydra compose and run :func:`hydra_main`."""
    import sys

    from alexnet_gtsrb.utils.optional_deps import require_extras_for_overrides

    exit_on_user_error(require_extras_for_overrides)(sys.argv[1:])
    register_sweeper()
    hydra_main()


def register_sweeper() -> None:
    """Register the project's Optuna sweeper with Hydra, whose scan of ``hydra_plugins`` misses editable installs."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.alexnet_gtsrb_optuna.optuna_sweeper import OptunaSweeper

    Plugins.instance().register(OptunaSweeper)


if __name__ == "__main__":
    main()
