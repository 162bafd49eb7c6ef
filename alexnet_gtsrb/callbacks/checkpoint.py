"""Lightning's ModelCheckpoint, with the paths it reads back from a checkpoint treated as data.

A resumed checkpoint restores the callback's paths (``best_model_path``, ``kth_best_model_path``,
``last_model_path``, the keys of ``best_k_models``); Lightning later deletes files it finds there with
``fs.rm(path, recursive=True)``, and its "is this file mine" test uses ``Path.absolute()``, which keeps ``..``: a
checkpoint naming ``<run>/checkpoints/../../victim`` would delete a file or a whole directory outside the run.
:class:`RunCheckpoint` restores only paths that resolve inside its own folder (and only well-formed scores), and
deletes only regular files (not links) inside it, with ``os.unlink``, never recursively.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)

_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")
_KEYS = (*_PATH_KEYS, "monitor", "best_model_score", "current_score", "dirpath", "best_k_models", "kth_value")


def inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """True when ``path``, with links and ``..`` resolved, lies strictly inside ``folder`` (also resolved)."""
    try:
        target, root = Path(path).resolve(), Path(folder).resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL byte
        return False
    return target != root and target.is_relative_to(root)


class RunCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that restores and deletes only files inside its own ``dirpath``."""

    @property
    def state_key(self) -> str:
        """ModelCheckpoint's key, so runs written by either class resume each other's callback state."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self.dirpath:  # set in setup(); without it nothing can be judged, so nothing is restored
            return
        clean, dropped = _clean_state(state_dict, str(self.dirpath))
        if dropped:
            log.warning(
                "the checkpoint's %s state names files outside this run's checkpoint folder %s or holds values of "
                "the wrong kind (%s): not restored, so nothing outside the folder is read or deleted.",
                type(self).__name__,
                self.dirpath,
                ", ".join(dropped)[:300],
            )
        super().load_state_dict(clean)

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if not trainer.is_global_zero:
            return
        path = Path(filepath)
        if self.dirpath and path.is_file() and not path.is_symlink() and inside(path, self.dirpath):
            path.unlink()
        elif path.exists() or path.is_symlink():
            log.warning("not deleting %s: only regular files inside %s are removed.", filepath, self.dirpath)


def _score(value: Any) -> bool:
    """True for what ModelCheckpoint keeps as a score: a one-element floating-point tensor."""
    return isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point()


def _clean_state(state_dict: Any, dirpath: str) -> tuple[dict[str, Any], list[str]]:
    """(the restorable part of a ModelCheckpoint state, what was dropped): paths only inside ``dirpath``, scores
    only one-element float tensors (another tensor would make Lightning's comparisons raise or broadcast), and
    ``dirpath`` itself only as a string (it is compared with ``==``)."""
    dropped = [] if isinstance(state_dict, Mapping) else [f"the whole state (a {type(state_dict).__name__})"]
    clean = {k: v for k, v in state_dict.items() if k in _KEYS} if not dropped else {}
    if not isinstance(clean.get("dirpath", dirpath), str):
        dropped.append("dirpath (not a string)")
        clean["dirpath"] = dirpath
    for key in _PATH_KEYS:
        value = clean.get(key)
        keep = isinstance(value, str) and (not value or inside(value, dirpath))
        if not keep and value is not None:
            dropped.append(f"{key}={str(value)[:80]}")
        clean[key] = value if keep else ""
    if (best_k := clean.get("best_k_models")) is not None:
        if not isinstance(best_k, Mapping):
            dropped.append("best_k_models (not a mapping)")
            best_k = {}
        kept = {p: s for p, s in best_k.items() if isinstance(p, str) and _score(s) and inside(p, dirpath)}
        dropped += [f"best_k_models[{str(p)[:80]!r}]" for p in best_k if p not in kept]
        clean["best_k_models"] = kept
    for key in ("best_model_score", "kth_value", "current_score"):
        if clean.get(key) is not None and not _score(clean[key]):
            dropped.append(f"{key} (not a one-element float tensor)")
            del clean[key]  # the callback keeps its own starting value
    if not clean["best_model_path"] or "best_model_score" not in clean:
        clean["best_model_score"] = None  # a score without its file would keep a better new one from saving
    return clean, dropped
