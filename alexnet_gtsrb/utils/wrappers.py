"""What wraps a network at run time: torch.compile's module (unwrapped), the ranks of DDP (the global batch size)."""

from __future__ import annotations

from typing import Any

from torch import nn


def unwrap_compiled(net: nn.Module) -> nn.Module:
    """The original module of a ``torch.compile`` wrapper (``_orig_mod``), or ``net`` itself."""
    return getattr(net, "_orig_mod", net)


def global_batch_size(per_rank: int, trainer: Any) -> int:
    """Images per optimizer step: ``data.batch_size`` (per process) x processes x gradient accumulation."""
    return int(per_rank) * int(trainer.world_size) * int(trainer.accumulate_grad_batches)
