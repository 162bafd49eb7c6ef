"""The training order as a function of the run's seed and its position, so a resumed run continues it; the
DataLoader workers' set-up (:func:`worker_init`).

Why: a sampler drawing from torch's global generator replays epoch 1's order after a resume, and Lightning
restarts an interrupted epoch's loader from its first batch. Here epoch ``e`` draws its order and one augmentation
seed per position from a generator seeded with ``(seed, e)``, and the position is read from the trainer's restored
``global_step`` whenever the loader starts, so a resumed run yields the same (index, seed) pairs as one that never
stopped; the dataset reseeds its augmentation from the pair's seed, so neither the number of workers nor a restart
changes what an image becomes. Under DDP (Lightning wraps the sampler per rank) a mid-epoch resume restarts the
interrupted epoch's order from its beginning; an epoch-boundary resume is exact.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import signal
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import Sampler

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
Position = Callable[[], tuple[int, int]]  # -> (epoch, samples of that epoch already trained on)


class RunSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, augmentation seed)`` for the rest of the current epoch's order: a permutation, or with
    ``weights`` (one per sample) as many draws with replacement in proportion to them (class balancing)."""

    def __init__(self, size: int, seed: int, position: Position, weights: Sequence[float] | None = None) -> None:
        self.size = int(size)
        self.seed = int(seed)
        self.position = position
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None

    def __len__(self) -> int:
        return self.size

    def order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Epoch ``epoch``'s indices and per-position seeds (a pure function of the seed and the epoch)."""
        g = torch.Generator().manual_seed((self.seed * 0x9E3779B97F4A7C15 + int(epoch)) % 2**63)
        if self.weights is None:
            indices = torch.randperm(self.size, generator=g)
        else:
            indices = torch.multinomial(self.weights, self.size, replacement=True, generator=g)
        seeds = torch.randint(0, 2**62, (self.size,), generator=g)
        return indices, seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, done = self.position()
        indices, seeds = self.order(epoch)
        yield from zip(indices[done:].tolist(), seeds[done:].tolist(), strict=True)


def batches_per_epoch(loader_batches: int, limit: int | float) -> int:
    """Training batches per epoch under ``trainer.limit_train_batches`` (Lightning's own rule: an int caps the
    count, a float is a fraction rounded down)."""
    return min(loader_batches, limit) if isinstance(limit, int) else int(loader_batches * limit)


def trainer_position(trainer, loader_batches: int, batch_size: int, distributed: bool) -> tuple[int, int]:
    """(epoch, samples already trained on in it) from the trainer's restored ``global_step``; each epoch takes
    ``ceil(batches / accumulate_grad_batches)`` optimizer steps. Under DDP the offset is 0."""
    if trainer is None:
        return 0, 0
    batches = batches_per_epoch(loader_batches, trainer.limit_train_batches)
    if batches <= 0:
        return 0, 0
    accumulate = int(trainer.accumulate_grad_batches)
    steps_per_epoch = math.ceil(batches / accumulate)
    epoch, steps = divmod(int(trainer.global_step), steps_per_epoch)
    return epoch, 0 if distributed else steps * accumulate * batch_size


def worker_init(worker_id: int, rank: int = 0) -> None:
    """DataLoader worker set-up: ignore Ctrl+C, return freed image buffers to the OS, seed like Lightning.

    A Ctrl+C reaches the whole process group, and the main process (``GracefulStop``) needs its workers alive to
    finish the step and save a checkpoint. glibc's malloc raises its mmap threshold as it sees large frees, after
    which image buffers come from the heap and are never returned (each worker creeps up by hundreds of MB); a
    fixed 128 KiB threshold keeps them mmap-backed. Lightning seeds workers only without a ``worker_init_fn``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    if int(os.environ.get("PL_SEED_WORKERS", "0")):
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id, rank=rank)
