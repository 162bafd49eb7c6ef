"""Learning-rate schedule factories for ``conf/scheduler/*.yaml`` (``_partial_: true`` configs: the LightningModule
calls ``instantiate(cfg)(optimizer)``, so each takes the optimizer first and its parameters as keywords)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosineFactor:
    """lr multiplier: linear warm-up from ``start_factor`` to 1 over ``warmup``, then cosine to ``min_factor``. A
    callable object, not a closure, so ``LambdaLR.state_dict`` stores its parameters and a resume continues it."""

    def __init__(self, warmup: int, total: int, start_factor: float = 0.01, min_factor: float = 0.0) -> None:
        if warmup < 0 or total < 1:
            raise ValueError(f"warm-up cosine: need warmup_epochs >= 0 (got {warmup}) and total_epochs >= 1 ({total}).")
        if not 0.0 < start_factor <= 1.0 or not 0.0 <= min_factor <= 1.0:
            raise ValueError("warm-up cosine: start_factor must be in (0, 1] and min_lr_factor in [0, 1].")
        # a run shorter than the warm-up (fast_dev_run, smoke tests) warms up over the whole run
        self.warmup, self.total = min(int(warmup), int(total)), int(total)
        self.start_factor, self.min_factor = float(start_factor), float(min_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.start_factor + (1.0 - self.start_factor) * step / self.warmup
        decay = max(self.total - self.warmup, 1)
        progress = min((step - self.warmup) / decay, 1.0)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: Optimizer,
    warmup_epochs: int = 5,
    total_epochs: int = 50,
    warmup_start_factor: float = 0.01,
    min_lr_factor: float = 0.0,
) -> LambdaLR:
    """Cosine annealing with a linear warm-up, as one ``LambdaLR``: the lr rises linearly from
    ``warmup_start_factor * lr`` to ``lr`` over ``warmup_epochs``, then follows a half cosine down to
    ``min_lr_factor * lr`` at ``total_epochs``, and stays there. Units are scheduler steps: epochs with
    ``interval: epoch`` (the default config), optimizer steps with ``interval: step``."""
    return LambdaLR(optimizer, WarmupCosineFactor(warmup_epochs, total_epochs, warmup_start_factor, min_lr_factor))
