"""Lightning's ModelCheckpoint, with the paths it reads back from a checkpoint treated as data.

A resumed checkpoint restores the callback's state: ``best_model_path``, ``kth_best_model_path``,
``last_model_path`` and the keys of ``best_k_models``. Lightning later deletes files it finds there (the old best
when a better one is written, the previous ``last``) through ``fs.rm(path, recursive=True)``, and its own
"is this file mine" test uses ``Path.absolute()``, which keeps ``..``. A shared run folder whose checkpoint names
``<run>/checkpoints/../../victim`` would then delete a file or a whole directory outside the run.

:class:`RunCheckpoint` closes both ends: on restore, a path that does not resolve inside this callback's own
folder is dropped with one warning line; on delete, only a regular file that resolves inside that folder is
removed, with ``os.unlink`` (never a directory, never recursively, never through a link pointing elsewhere).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)

_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")


def inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """True when ``path``, with links and ``..`` resolved, lies strictly inside ``folder`` (also resolved)."""
    try:
        target = Path(path).resolve()
        root = Path(folder).resolve()
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
        clean = dict(state_dict)
        dropped: list[str] = []
        for key in _PATH_KEYS:
            value = clean.get(key)
            if not isinstance(value, str | os.PathLike) or (value and not inside(value, self.dirpath)):
                if value:
                    dropped.append(f"{key}={value}")
                clean[key] = ""
        best_k = clean.get("best_k_models")
        if best_k is not None:
            kept = {}
            for path, score in best_k.items() if isinstance(best_k, dict) else []:
                if isinstance(path, str) and isinstance(score, torch.Tensor) and inside(path, self.dirpath):
                    kept[path] = score
                else:
                    dropped.append(f"best_k_models[{path!r}]")
            if not isinstance(best_k, dict):
                dropped.append("best_k_models (not a mapping)")
            clean["best_k_models"] = kept
        if not isinstance(clean.get("best_model_score"), torch.Tensor | None):
            dropped.append("best_model_score (not a tensor)")
            clean["best_model_score"] = None
        if "kth_value" in clean and not isinstance(clean["kth_value"], torch.Tensor):
            dropped.append("kth_value (not a tensor)")
            del clean["kth_value"]  # the callback keeps its own starting value
        if not clean["best_model_path"]:
            clean["best_model_score"] = None  # a score without its file would keep a better new one from saving
        if dropped:
            log.warning(
                "the checkpoint's %s state names files outside this run's checkpoint folder %s (%s): not "
                "restored, so nothing outside the folder is read or deleted.",
                type(self).__name__,
                self.dirpath,
                ", ".join(dropped)[:300],
            )
        super().load_state_dict(clean)

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if not trainer.is_global_zero:
            return
        path = Path(filepath)
        if not self.dirpath or path.is_symlink() or not path.is_file() or not inside(path, self.dirpath):
            if path.exists() or path.is_symlink():
                log.warning("not deleting %s: only regular files inside %s are removed.", filepath, self.dirpath)
            return
        path.unlink()
