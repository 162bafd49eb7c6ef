"""Checkpoint files: where ``ckpt_path`` points (a file, a run folder, ``last``) and how they are written.

Every checkpoint (best, last, step-interval, on signal) goes through :class:`AtomicCheckpointIO`: a
temporary file in the target folder, fsync, rename over the old one, so a crash or SIGKILL at any moment
leaves either the old complete file or the new complete one. Lightning's default writer stages the bytes in
the system temp folder and *moves* them, which is a copy (not atomic) when that folder is on another file
system. Reading checkpoints back (plain data only) is :mod:`alexnet_gtsrb.inference`'s job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from alexnet_gtsrb.errors import UserError
from alexnet_gtsrb.utils.files import atomic_write


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` through a temporary file in the same folder, fsync and rename."""
    with atomic_write(path) as f:
        torch.save(obj, f)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint writer, made atomic for local paths (remote URLs keep Lightning's way)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        fs = get_filesystem(path)
        if "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))


def resolve_ckpt_path(ckpt_path: str | None, run_dir: str | Path | None = None) -> str | None:
    """The checkpoint file to load or resume from.

    - a ``.ckpt`` file: itself;
    - a run folder: the newest ``last*.ckpt`` under it;
    - ``last``: the newest ``last*.ckpt`` under ``run_dir`` (this run's output folder, i.e. the folder named by
      ``hydra.run.dir=...``), so the run continues in place.
    """
    if ckpt_path in (None, "", "null"):
        return None
    if str(ckpt_path) == "last":
        if run_dir is None:
            raise UserError("ckpt_path=last needs the run folder: add hydra.run.dir=<the run folder to continue>.")
        found = _newest_last(Path(run_dir))
        if found is None:
            raise UserError(
                f"ckpt_path=last: no last.ckpt under {run_dir}. Name the run folder to continue with "
                "hydra.run.dir=<folder>, or pass ckpt_path=<file.ckpt>."
            )
        return str(found)
    path = Path(str(ckpt_path)).expanduser()
    if path.is_dir():
        found = _newest_last(path)
        if found is None:
            raise UserError(f"ckpt_path={ckpt_path}: no last.ckpt under this folder.")
        return str(found)
    if not path.is_file():
        raise UserError(f"ckpt_path={ckpt_path}: no such checkpoint file.")
    return str(path)


def _newest_last(folder: Path) -> Path | None:
    """The most recently written ``last*.ckpt`` under ``folder`` (None when there is none)."""
    if not folder.is_dir():
        return None
    found = sorted(folder.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None
