"""The global random generators' states as plain data, saved in every checkpoint and restored on resume.

Dropout masks and the on-device batch augmentation draw from torch's global generator; ``seed_everything`` on
resume would restart it, so the resumed steps would repeat the first steps' draws. Saved as tensors and plain
tuples, so the checkpoint still loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def rng_states() -> dict[str, Any]:
    """torch (CPU, and each CUDA device once CUDA is in use), numpy's legacy global and Python's ``random``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Any, source: str) -> None:
    """Set the generators from :func:`rng_states`' output; a missing or malformed entry is left as seeded, with
    one warning line (the run goes on, only its random draws differ from an uninterrupted run)."""
    if not isinstance(states, dict):
        if states is not None:
            log.warning("%s: rng_states is not a mapping; random generators not restored.", source)
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
        log.warning(
            "%s: rng_states could not be restored (%s); random draws differ from an uninterrupted run.",
            source,
            type(exc).__name__,
        )
