"""GTSRBClassifier: the LightningModule that trains a network (``model.net``) with cross-entropy.

The network, optimizer and scheduler arrive as Hydra configs and are built here, so the checkpoint's
hyper-parameters are plain data and ``GTSRBClassifier.load_from_checkpoint(path)`` needs no arguments.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning import LightningModule
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from alexnet_gtsrb.allowlist import check_model_configs
from alexnet_gtsrb.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_uint8
from alexnet_gtsrb.errors import ConfigError, NonFiniteLossError
from alexnet_gtsrb.utils.rng import restore_rng_states, rng_states

log = logging.getLogger(__name__)
STAGES = ("train", "val", "test")


def _plain(cfg: Any) -> Any:
    """DictConfig -> plain containers (checkpoints then load with ``weights_only=True``)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def _build(group: str, cfg: Mapping[str, Any], arg: Any) -> Any:
    """``instantiate(cfg)(arg)`` for an optimizer or scheduler; an impossible value (torch's ValueError, e.g.
    ``Invalid learning rate: -1``) becomes one line naming the config group."""
    try:
        return instantiate(cfg)(arg)
    except (ValueError, TypeError) as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise ConfigError(
            f"{group} ({cfg.get('_target_')}): {cause}. Check the {group}.* values (e.g. {group}.lr must be > 0)."
        ) from None


class GTSRBClassifier(LightningModule):
    """Cross-entropy classifier with torchmetrics accuracy per stage and config-built optimisation."""

    @property
    def hparams(self) -> Any:
        """Lightning's saved hyper-parameters (an attribute dict), typed loosely so attribute access type-checks."""
        return super().hparams

    def __init__(
        self,
        net: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        num_classes: int = 43,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        decay_bias_and_norm: bool = False,
        pretrained: str | None = None,
        backbone_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not float(backbone_lr_scale) > 0:
            raise ConfigError(f"model.backbone_lr_scale={backbone_lr_scale} must be > 0 (1: one learning rate).")
        configs = {"net": _plain(net), "optimizer": _plain(optimizer), "scheduler": _plain(scheduler)}
        check_model_configs(configs, "model config")  # they may come from a checkpoint file: check before building
        self.save_hyperparameters(
            {
                **configs,
                "num_classes": int(num_classes),
                "label_smoothing": float(label_smoothing),
                "channels_last": bool(channels_last),
                "compile": bool(compile),
                "mean": list(mean),
                "std": list(std),
                "decay_bias_and_norm": bool(decay_bias_and_norm),
                "pretrained": None if pretrained is None else str(pretrained),  # applied by train.py, once
                "backbone_lr_scale": float(backbone_lr_scale),
            }
        )
        self.net: torch.nn.Module = instantiate(self.hparams.net)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        # One metric object per stage (keys can't be "train": nn.Module.train exists).
        self.metrics = torch.nn.ModuleDict()
        for s in STAGES:
            self.metrics[f"{s}_acc"] = MulticlassAccuracy(num_classes=int(num_classes), average="micro")
            self.metrics[f"{s}_loss"] = MeanMetric()
        self.val_acc_best: Any = MaxMetric()
        self._resumed_val_acc_best: float | None = None
        self.test_views = 1  # set by train.py from the config's test_views (1 or 10) before the test

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a normalised float batch, or for raw uint8 (B, H, W, 3) images."""
        if x.dtype == torch.uint8:
            x = self.preprocess(x)
        return self.net(x)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> the normalised float batch the network was trained on."""
        return normalize_uint8(images, self.hparams.mean, self.hparams.std, self.hparams.channels_last)

    def configure_model(self) -> None:
        """Compile the network when asked (called once per process, after the strategy is set up)."""
        if self.hparams.compile and not isinstance(self.net, torch._dynamo.eval_frame.OptimizedModule):
            self.net = torch.compile(self.net)  # type: ignore[assignment]

    # -- steps ------------------------------------------------------------------------------------------
    def _shared_step(
        self, batch: Any, stage: str, logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, accuracy and their logging; ``logits_fn`` (default: the network) maps the images to logits
        (log-probabilities work too: cross-entropy of log p is -log p_y)."""
        x, y = batch
        logits = (logits_fn or self)(x)
        smoothing = self.hparams.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
        acc: Any = self.metrics[f"{stage}_acc"]
        mean_loss: Any = self.metrics[f"{stage}_loss"]
        mean_loss(loss.detach(), weight=y.numel())
        acc(logits.detach(), y)
        self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=stage != "train")
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        if stage == "train":  # a per-step curve too, under its own name
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        return loss, logits.detach(), y

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch, "train")[0]
        if not torch.isfinite(loss.detach()):  # one host sync per step; a diverged run must not go on
            raise NonFiniteLossError(self._divergence_message(float(loss.detach())))
        return loss

    def _divergence_message(self, value: float) -> str:
        lrs = sorted({g["lr"] for opt in self.trainer.optimizers for g in opt.param_groups})
        lr_text = ", ".join(f"{lr:.3g}" for lr in lrs)
        return (
            f"training loss is {value} at epoch {self.current_epoch}, global step {self.global_step} "
            f"(learning rate now {lr_text}; optimizer.lr={self.hparams.optimizer.get('lr')}). The run diverged: "
            "the usual cause is a learning rate too high for this model/batch size (try optimizer.lr 10x lower), "
            "or no normalisation (model=alexnet_bn), or fp16 overflow (trainer.precision=32-true or bf16-mixed); "
            "trainer.gradient_clip_val=1.0 also helps. No checkpoint was written after the loss broke: "
            "the best and last checkpoints are those of the last finite step."
        )

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """Returns predictions and targets for callbacks (confusion matrix, per-class accuracy)."""
        loss, logits, y = self._shared_step(batch, "val")
        return {"loss": loss, "preds": logits.argmax(dim=-1), "target": y}

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """One view per image, or with ``test_views = 10`` the paper's ten (5 crops of the enlarged test image and
        their label-mapped flips, softmax averaged: :func:`alexnet_gtsrb.evaluation.views.ten_view_probabilities`)."""
        if self.test_views == 1:
            self._shared_step(batch, "test")
            return
        from alexnet_gtsrb.evaluation.views import ten_view_probabilities

        size = int(self.hparams.net["image_size"])
        self._shared_step(batch, "test", lambda x: ten_view_probabilities(self, x, size).clamp_min(1e-12).log())

    def on_train_start(self) -> None:
        # Sanity-check validation must not count towards the best accuracy; a resumed run keeps its best.
        self._check_schedule_length()
        self.val_acc_best.reset()
        if self.global_step:  # a resumed run: say where it continues (the restored loop position)
            log.info("training continues at epoch %d, global step %d", self.current_epoch, self.global_step)
        resumed = self._resumed_val_acc_best
        if resumed is not None:
            self.val_acc_best(torch.tensor(resumed, device=self.device))
            self._resumed_val_acc_best = None

    def _check_schedule_length(self) -> None:
        """A resumed one-cycle schedule keeps the first run's length: refuse a run that needs more steps now,
        instead of failing with torch's "Tried to step N times" later."""
        needed = self._steps_needed()
        for config in self.trainer.lr_scheduler_configs:
            total = getattr(config.scheduler, "total_steps", None)
            if (
                isinstance(config.scheduler, torch.optim.lr_scheduler.OneCycleLR)
                and total is not None
                and total < needed
            ):
                raise ConfigError(
                    f"scheduler=onecycle: the resumed schedule is {total} steps long, but this run needs {needed} "
                    f"(global step {self.global_step} + the rest of trainer.max_epochs={self.trainer.max_epochs} at "
                    "the current batches per epoch). One-cycle keeps its length: resume with the first run's "
                    "trainer.max_epochs, data.batch_size and trainer.limit_train_batches, or use scheduler=step, "
                    "plateau or none to train longer."
                )

    def _steps_needed(self) -> int:
        """The optimizer steps this fit will have taken when it ends: the restored global step plus what is left
        of the current epoch and the remaining epochs at the *current* batches per epoch (a resume may change
        data.batch_size or trainer.limit_train_batches). Lightning's own estimate assumes a fresh run."""
        t = self.trainer
        estimate = int(t.estimated_stepping_batches)
        if not self.global_step or t.max_epochs is None or t.max_epochs < 0 or math.isinf(t.num_training_batches):
            return estimate
        accumulate = int(t.accumulate_grad_batches)
        per_epoch = math.ceil(t.num_training_batches / accumulate)
        done = t.fit_loop.epoch_loop.batch_progress.current.ready if t.fit_loop.restarting else 0  # mid-epoch
        needed = self.global_step + (t.max_epochs - t.current_epoch) * per_epoch - math.ceil(done / accumulate)
        return min(needed, t.max_steps) if t.max_steps and t.max_steps > 0 else needed

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to save NaN/inf weights; store the best validation accuracy (torchmetrics states are not saved)."""
        bad = [n for n, p in self.net.named_parameters() if not torch.isfinite(p.detach()).all()]
        if bad:
            raise NonFiniteLossError(
                f"parameters {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} hold NaN/inf at epoch "
                f"{self.current_epoch}, global step {self.global_step}: the run diverged (lower optimizer.lr, "
                "or set trainer.gradient_clip_val); the checkpoint was not written, earlier ones are kept."
            )
        if self.val_acc_best.update_called:
            checkpoint["val_acc_best"] = float(self.val_acc_best.compute())
        checkpoint["rng_states"] = rng_states()  # a resumed run continues the random draws (dropout, batch aug.)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Remember the stored best accuracy; ``on_train_start`` restores it when fitting resumes."""
        best = checkpoint.get("val_acc_best")
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"  # not load_from_checkpoint/test
        self._resumed_val_acc_best = float(best) if best is not None and fitting else None
        if fitting:
            restore_rng_states(checkpoint.get("rng_states"), "checkpoint")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        val_acc: Any = self.metrics["val_acc"]
        self.val_acc_best(val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self(x).float().softmax(dim=-1)

    # -- optimisation -----------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        """Optimizer and scheduler from their ``_partial_`` configs; ``interval``/``monitor`` are Lightning's."""
        hp = self.hparams
        optimizer = _build("optimizer", hp.optimizer, self._param_groups())
        if not hp.scheduler:
            return optimizer
        scheduler_cfg = dict(hp.scheduler)
        interval = scheduler_cfg.pop("interval", "epoch")
        monitor = scheduler_cfg.pop("monitor", "val/acc")
        if scheduler_cfg.get("_target_", "").endswith("OneCycleLR"):
            if float(hp.get("backbone_lr_scale", 1.0)) != 1.0:
                raise ConfigError(
                    "model.backbone_lr_scale needs a schedule that scales each group's lr (scheduler=cosine, step, "
                    "plateau or none); scheduler=onecycle sets one max_lr for all groups."
                )
            scheduler_cfg.setdefault("total_steps", int(self.trainer.estimated_stepping_batches))
            if getattr(self.trainer, "ckpt_path", None) and _one_cycle_problem(scheduler_cfg):
                # resuming: the checkpoint's schedule replaces this one; only its construction must not fail
                scheduler_cfg["total_steps"] += 1
            _check_one_cycle_phases(scheduler_cfg)
        scheduler = _build("scheduler", scheduler_cfg, optimizer)
        lr_scheduler = {"scheduler": scheduler, "interval": interval, "monitor": monitor}
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler}

    def _param_groups(self) -> list[dict[str, Any]]:
        """No weight decay on biases and normalisation parameters (1-D tensors), unless asked (paper); with
        ``backbone_lr_scale`` != 1 the convolutional backbone (the parameters the network's ``is_backbone(name)``
        names) gets its own groups at ``optimizer.lr x backbone_lr_scale`` (fine-tuning)."""
        hp = self.hparams
        scale = float(hp.get("backbone_lr_scale", 1.0))
        is_backbone = getattr(self.net, "is_backbone", None)
        if scale != 1.0 and not callable(is_backbone):
            raise ConfigError(
                f"model.backbone_lr_scale={scale:g} needs a network that names its backbone (an is_backbone(name) "
                f"method); {type(self.net).__name__} has none: set model.backbone_lr_scale=1."
            )
        kinds = ("all",) if hp.decay_bias_and_norm else ("weights", "no_decay")
        parts = ("", "backbone_") if scale != 1.0 else ("",)
        params: dict[str, list[torch.nn.Parameter]] = {p + k: [] for p in parts for k in kinds}
        for name, p in getattr(self.net, "_orig_mod", self.net).named_parameters():  # compiled: the original names
            if p.requires_grad:
                part = "backbone_" if scale != 1.0 and is_backbone(name) else ""  # type: ignore[misc]
                kind = "all" if hp.decay_bias_and_norm else ("no_decay" if p.ndim <= 1 else "weights")
                params[part + kind].append(p)
        groups: list[dict[str, Any]] = []
        for name, ps in params.items():
            group: dict[str, Any] = {"params": ps, "name": name}
            if name.endswith("no_decay"):
                group["weight_decay"] = 0.0
            if name.startswith("backbone_"):
                group["lr"] = float(hp.optimizer["lr"]) * scale
            groups.append(group)
        return groups


def _one_cycle_problem(cfg: Mapping[str, Any]) -> str | None:
    """Why torch's OneCycleLR cannot run this config (None when it can): it divides by each phase's length in
    steps, so a phase of zero steps (a warm-up of exactly one step: ``pct_start x total_steps == 1``) fails
    with ZeroDivisionError when the scheduler is built."""
    total, pct = int(cfg["total_steps"]), float(cfg.get("pct_start", 0.3))
    if total < 1:
        return f"the run has {total} optimizer steps; it needs at least one."
    ends = [pct * total - 1, total - 1]
    if cfg.get("three_phase", False):
        ends = [pct * total - 1, 2 * pct * total - 2, total - 1]
    starts = [0.0, *ends[:-1]]
    if any(abs(end - start) < 1e-9 for start, end in zip(starts, ends, strict=True)):
        return (
            f"pct_start={pct:g} of {total} optimizer steps leaves a phase of zero steps, which torch's OneCycleLR "
            "cannot run (division by zero). Change scheduler.pct_start, or the run's length (trainer.max_epochs, "
            "trainer.limit_train_batches, data.batch_size)."
        )
    return None


def _check_one_cycle_phases(cfg: Mapping[str, Any]) -> None:
    """One line before training instead of torch's ZeroDivisionError (see :func:`_one_cycle_problem`)."""
    problem = _one_cycle_problem(cfg)
    if problem:
        raise ConfigError(f"scheduler=onecycle: {problem}")
