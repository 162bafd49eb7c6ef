"""GTSRBClassifier: the LightningModule that trains a network (``model.net``) with cross-entropy. The network,
optimizer and scheduler arrive as Hydra configs and are built here, so the checkpoint's hyper-parameters are plain
data and ``GTSRBClassifier.load_from_checkpoint(path)`` needs no arguments."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
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

log = logging.getLogger(__name__)


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
        configs = {  # plain containers: checkpoints then load with weights_only=True
            k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v
            for k, v in (("net", net), ("optimizer", optimizer), ("scheduler", scheduler))
        }
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
        for s in ("train", "val", "test"):
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
        if torch.isfinite(loss.detach()):  # one host sync per step; a diverged run must not go on
            return loss
        lrs = sorted({g["lr"] for opt in self.trainer.optimizers for g in opt.param_groups})
        raise NonFiniteLossError(
            f"training loss is {float(loss.detach())} at epoch {self.current_epoch}, global step {self.global_step} "
            f"(learning rate now {', '.join(f'{lr:.3g}' for lr in lrs)}; optimizer.lr="
            f"{self.hparams.optimizer.get('lr')}). The run diverged: "
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
        """One view per image, or with ``test_views = 10`` the paper's ten (:mod:`alexnet_gtsrb.evaluation.views`)."""
        if self.test_views == 1:
            self._shared_step(batch, "test")
            return
        from alexnet_gtsrb.evaluation.views import ten_view_probabilities

        size = int(self.hparams.net["image_size"])
        self._shared_step(batch, "test", lambda x: ten_view_probabilities(self, x, size).clamp_min(1e-12).log())

    def on_train_start(self) -> None:
        # A resumed one-cycle schedule keeps the first run's length: refuse a run that needs more steps now,
        # instead of failing with torch's "Tried to step N times" later.
        needed = self._steps_needed()
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) and scheduler.total_steps < needed:
                raise ConfigError(
                    f"scheduler=onecycle: the resumed schedule is {scheduler.total_steps} steps long, but this run "
                    f"needs {needed} (global step {self.global_step} + the rest of trainer.max_epochs="
                    f"{self.trainer.max_epochs} at the current batches per epoch). One-cycle keeps its length: resume "
                    "with the first run's trainer.max_epochs, data.batch_size and trainer.limit_train_batches, or use "
                    "scheduler=step, plateau or none to train longer."
                )
        # Sanity-check validation must not count towards the best accuracy; a resumed run keeps its best.
        self.val_acc_best.reset()
        if self.global_step:  # a resumed run: say where it continues (the restored loop position)
            log.info("training continues at epoch %d, global step %d", self.current_epoch, self.global_step)
        if self._resumed_val_acc_best is not None:
            self.val_acc_best(torch.tensor(self._resumed_val_acc_best, device=self.device))
            self._resumed_val_acc_best = None

    def _steps_needed(self) -> int:
        """The optimizer steps this fit will have taken when it ends, at the *current* batches per epoch (a resume
        may change data.batch_size or trainer.limit_train_batches); Lightning's own estimate assumes a fresh run."""
        t = self.trainer
        if not self.global_step or t.max_epochs is None or t.max_epochs < 0 or math.isinf(t.num_training_batches):
            return int(t.estimated_stepping_batches)
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
        checkpoint["rng_states"] = _rng_states()  # a resumed run continues the random draws (dropout, batch aug.)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Remember the stored best accuracy; ``on_train_start`` restores it when fitting resumes."""
        best = checkpoint.get("val_acc_best")
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"  # not load_from_checkpoint/test
        self._resumed_val_acc_best = float(best) if best is not None and fitting else None
        if fitting:
            _restore_rng_states(checkpoint.get("rng_states"))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        val_acc: Any = self.metrics["val_acc"]
        self.val_acc_best(val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Class probabilities for ``trainer.predict`` (a batch is images or (images, labels))."""
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self(x).float().softmax(dim=-1)

    def configure_optimizers(self) -> Any:
        """Optimizer and scheduler from their ``_partial_`` configs; ``interval``/``monitor`` are Lightning's."""
        hp = self.hparams
        optimizer = _build("optimizer", hp.optimizer, self._param_groups())
        if not hp.scheduler:
            return optimizer
        scheduler_cfg = dict(hp.scheduler)
        lr_scheduler = {k: scheduler_cfg.pop(k, v) for k, v in (("interval", "epoch"), ("monitor", "val/acc"))}
        if scheduler_cfg.get("_target_", "").endswith("OneCycleLR"):
            if hp.backbone_lr_scale != 1.0:
                raise ConfigError(
                    "model.backbone_lr_scale needs a schedule that scales each group's lr (scheduler=cosine, step, "
                    "plateau or none); scheduler=onecycle sets one max_lr for all groups."
                )
            scheduler_cfg.setdefault("total_steps", int(self.trainer.estimated_stepping_batches))
            _check_one_cycle_phases(scheduler_cfg, resuming=bool(getattr(self.trainer, "ckpt_path", None)))
        lr_scheduler["scheduler"] = _build("scheduler", scheduler_cfg, optimizer)
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler}

    def _param_groups(self) -> list[dict[str, Any]]:
        """No weight decay on biases and normalisation parameters (1-D tensors), unless asked (paper); with
        ``backbone_lr_scale`` != 1 the network's ``is_backbone(name)`` parameters get their own groups at
        ``optimizer.lr x backbone_lr_scale`` (fine-tuning)."""
        hp = self.hparams
        scale = hp.backbone_lr_scale
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
        return [
            {
                "params": ps,
                "name": name,
                **({"weight_decay": 0.0} if name.endswith("no_decay") else {}),
                **({"lr": float(hp.optimizer["lr"]) * scale} if name.startswith("backbone_") else {}),
            }
            for name, ps in params.items()
        ]


def _check_one_cycle_phases(cfg: dict[str, Any], resuming: bool = False) -> None:
    """One line before training instead of torch's ZeroDivisionError: OneCycleLR divides by each phase's length in
    steps, so a phase of zero steps (``pct_start x total_steps == 1``) fails when built. ``resuming``: the
    checkpoint's schedule replaces this one, so a step is added to ``cfg["total_steps"]`` instead."""
    total, pct = int(cfg["total_steps"]), float(cfg.get("pct_start", 0.3))
    ends = [pct * total - 1, *([2 * pct * total - 2] if cfg.get("three_phase", False) else []), total - 1]
    zero_phase = any(abs(end - start) < 1e-9 for start, end in zip([0.0, *ends[:-1]], ends, strict=True))
    if resuming and (total < 1 or zero_phase):
        cfg["total_steps"] += 1
        _check_one_cycle_phases(cfg)
    elif total < 1:
        raise ConfigError(f"scheduler=onecycle: the run has {total} optimizer steps; it needs at least one.")
    elif zero_phase:
        raise ConfigError(
            f"scheduler=onecycle: pct_start={pct:g} of {total} optimizer steps leaves a phase of zero steps, which "
            "torch's OneCycleLR cannot run (division by zero). Change scheduler.pct_start, or the run's length "
            "(trainer.max_epochs, trainer.limit_train_batches, data.batch_size)."
        )


def _rng_states() -> dict[str, Any]:
    """The global generators' states as tensors and plain tuples (``weights_only`` loads them), for the checkpoint:
    torch (CPU, and each CUDA device once CUDA is in use), numpy's legacy global and Python's ``random``. Dropout and
    the on-device batch augmentation draw from torch's; ``seed_everything`` alone would repeat the first draws."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng_states(states: Any) -> None:
    """Set the generators from :func:`_rng_states`' output; a missing or malformed entry is left as seeded."""
    if states is None:
        return
    try:
        torch.set_rng_state(states["torch"])
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, np.asarray(keys.numpy(), dtype=np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = states["python"]
        random.setstate((version, tuple(internal), gauss_next))
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        log.warning("checkpoint: rng_states not restored (%s); random draws differ from an uninterrupted run.", exc)
