"""An exponential moving average of the weights on Lightning's ``WeightAveraging``: checkpoints hold the average as
``state_dict`` (what evaluate, predict and export load) and the training weights as ``current_model_state``. Unlike
Lightning's ``EMAWeightAveraging``, the update is torch's foreach ``get_ema_multi_avg_fn`` (about 10x faster on
CPU, docs/performance.md), and a checkpoint loaded outside fitting keeps the average (``WeightAveraging`` would
reload the raw ``current_model_state``, so the test after training would not measure the validated average)."""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from alexnet_gtsrb.errors import ConfigError


class EMAWeights(WeightAveraging):
    """Average the weights (and BatchNorm statistics) with ``avg = decay * avg + (1 - decay) * w`` every step;
    validation, checkpoints and the weights left after training are the average (horizon ~``1 / (1 - decay)``)."""

    def __init__(self, decay: float = 0.998) -> None:
        if not 0.0 <= float(decay) < 1.0:
            raise ConfigError(f"callbacks.ema.decay={decay} must lie in [0, 1) (e.g. 0.998: ~500 steps).")
        super().__init__(use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(float(decay)))
        self.decay = float(decay)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        with warnings.catch_warnings():  # our configure_model only compiles (model.compile): nothing is sharded
            warnings.filterwarnings("ignore", message=".*overrides the configure_model callback")
            super().setup(trainer, pl_module, stage)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # evaluating a checkpoint: its state_dict already is the average
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
