"""Checkpoint files: where ``ckpt_path`` points, how they are written (atomically) and read back (safely).

Reading (:func:`read_checkpoint`) refuses pickled objects, configs naming a ``_target_`` outside the allowlist
(:mod:`alexnet_gtsrb.allowlist`) and tensors their storage cannot hold, before anything is built or any tensor's
values are read. Writing (:class:`AtomicCheckpointIO`) goes through a temporary file in the target folder, fsync
and rename, so a crash at any moment leaves the old complete file or the new one: Lightning's default writer stages
the bytes in the system temp folder and *moves* them, a copy when that folder is on another file system.
"""

from __future__ import annotations

import errno
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from alexnet_gtsrb.allowlist import UnsafeCheckpointError, check_config, check_model_configs, walk
from alexnet_gtsrb.errors import UserError
from alexnet_gtsrb.models.alexnet import old_layout_problem
from alexnet_gtsrb.utils.files import MAX_CHECKPOINT_BYTES, atomic_write, check_regular_file


class CheckpointError(UserError):
    """A checkpoint file that cannot be used: unreadable, foreign, non-finite, or not fitting the model."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically. A full disk surfaces from torch as ``OSError(ENOSPC)`` or as a
    ``RuntimeError`` from its zip writer ("unexpected pos"): one line naming the folder (the old file is intact)."""
    try:
        with atomic_write(path) as f:
            torch.save(obj, f)
    except (OSError, RuntimeError) as exc:
        text = str(exc)
        full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text
        if not (full or ("inline_container" in text and "unexpected pos" in text)):
            raise
        raise CheckpointError(
            f"no space left on the device of {Path(path).parent} while writing {Path(path).name}: the previous "
            "checkpoint there (if any) is intact. Free some space, or move the run folder (hydra.run.dir=...) "
            "and resume with ckpt_path=<the last checkpoint>."
        ) from None


def _local(path: _PATH) -> Path | None:
    """``path`` as a local Path, or None for a remote URL (which keeps Lightning's way)."""
    text = str(path)
    return None if "://" in text and not text.startswith("file://") else Path(text.removeprefix("file://"))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint writer, made atomic for local paths (remote URLs keep Lightning's way)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        local = _local(path)
        if local is None or storage_options is not None:  # Lightning's writer refuses storage_options
            super().save_checkpoint(checkpoint, path, storage_options)
        else:
            atomic_torch_save(checkpoint, local)

    def remove_checkpoint(self, path: _PATH) -> None:
        """Delete one checkpoint file: a local path is unlinked only when it is a regular file (Lightning's
        writer removes recursively, so a directory named by a hostile checkpoint's callback state would go)."""
        local = _local(path)
        if local is None:
            super().remove_checkpoint(path)
        elif local.is_file() and not local.is_symlink():
            local.unlink()


def resolve_ckpt_path(ckpt_path: str | None, run_dir: str | Path | None = None) -> str | None:
    """The checkpoint file to load or resume from: a ``.ckpt`` file is itself, a folder gives the newest
    ``last*.ckpt`` under it, and ``last`` the newest ``last*.ckpt`` under ``run_dir`` (this run's output folder,
    the one ``hydra.run.dir=...`` names), so the run continues in place."""
    if ckpt_path in (None, "", "null"):
        return None
    last = str(ckpt_path) == "last"
    if last and run_dir is None:
        raise UserError("ckpt_path=last needs the run folder: add hydra.run.dir=<the run folder to continue>.")
    path = Path(str(run_dir if last else ckpt_path)).expanduser()
    if last or path.is_dir():
        found = sorted(path.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime) if path.is_dir() else []
        if found:
            return str(found[-1])
        raise UserError(
            f"ckpt_path=last: no last.ckpt under {run_dir}. Name the run folder to continue with "
            "hydra.run.dir=<folder>, or pass ckpt_path=<file.ckpt>."
            if last
            else f"ckpt_path={ckpt_path}: no last.ckpt under this folder."
        )
    if not path.exists():
        raise UserError(f"ckpt_path={ckpt_path}: no such checkpoint file.")
    return str(check_checkpoint_file(path))


def check_checkpoint_file(path: str | Path) -> Path:
    """``path`` once it is a regular file within :data:`MAX_CHECKPOINT_BYTES` (a named pipe would make
    ``torch.load`` wait forever); one-line :class:`CheckpointError` naming it otherwise."""
    fix = "Pass ckpt_path=<a .ckpt file written by training>."
    try:
        return check_regular_file(path, "checkpoint", MAX_CHECKPOINT_BYTES, fix, CheckpointError)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file.") from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents as plain data, checked by :func:`check_contents`; nothing is built. Loaded with
    ``weights_only=True``, so a pickled object is refused instead of run; that, a truncated or foreign file, and a
    pipe, device or oversized file (refused unread) are one line naming the file."""
    check_checkpoint_file(path)
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else type(exc).__name__
        raise UnsafeCheckpointError(
            f"{path}: not a plain-data checkpoint (it holds pickled objects, which could run code when loaded: "
            f"{reason}); refused. Checkpoints written by this project hold plain data only."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint (truncated, corrupt or another kind of file: "
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''})."
        ) from None
    return check_contents(raw, path)


def check_contents(raw: Any, path: str | Path) -> dict[str, Any]:
    """``raw`` (a loaded checkpoint) as a dict once its layout, tensors and configs (the allowlist) pass. Every
    tensor must be dense and fit its storage (``storage_offset`` + element count, times element size), judged before
    any value is read: a crafted file can pair a one-element storage with a 100000x100000 shape (zero or overlapping
    strides) and make the first operation on it allocate 40 GB (``torch.load`` refuses negative strides itself)."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("state_dict"), Mapping):
        raise CheckpointError(f"{path}: not a Lightning checkpoint of this project (no state_dict).")
    if not isinstance(raw.get("hyper_parameters"), Mapping):
        raise CheckpointError(f"{path}: not a checkpoint of this project (no hyper_parameters to rebuild the model).")
    for key in ("datamodule_hyper_parameters", "callbacks", "loops"):
        if not isinstance(raw.get(key), Mapping | None):
            raise CheckpointError(f"{path}: its {key} is a {type(raw[key]).__name__}, not a mapping; refused.")
    for key, t in walk(raw, str(path)):  # also bounds the nesting of everything in the file
        if not isinstance(t, torch.Tensor):
            continue
        if t.layout != torch.strided or t.is_quantized:
            problem = f"is a {t.layout} tensor, which this project never writes"
        elif (need := (t.storage_offset() + t.numel()) * t.element_size()) > t.untyped_storage().nbytes():
            problem = (
                f"declares shape {tuple(t.shape)} (strides {t.stride()}, offset {t.storage_offset()}), {need} bytes, "
                f"over a storage of {t.untyped_storage().nbytes()} bytes"
            )
        else:
            continue
        raise CheckpointError(
            f"{path}: tensor {key!r} {problem}; refused before reading it (a damaged or crafted file)."
        )
    check_model_configs(raw["hyper_parameters"], f"{path}: hyper_parameters")
    check_config(raw.get("datamodule_hyper_parameters") or {}, f"{path}: datamodule_hyper_parameters")
    return dict(raw)


def check_finite(state_dict: Mapping[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint whose floating-point tensors hold NaN or inf, or whose BatchNorm running variance is
    negative (its square root is NaN), naming the first such tensor. Run it after :func:`check_fits`: then every
    tensor it reads has the model's shape."""
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            continue
        bad = "NaN/inf values" if not torch.isfinite(value).all() else None
        if bad is None and str(name).endswith("running_var") and bool((value < 0).any()):
            bad = "a negative BatchNorm variance"
        if bad:
            raise CheckpointError(
                f"{path}: tensor {name!r} holds {bad}; refused (predictions from it would be garbage). "
                "Use an earlier checkpoint of the run."
            )


def check_fits(state_dict: Mapping[str, Any], model: torch.nn.Module, path: str | Path) -> None:
    """Refuse a checkpoint whose weights do not fit ``model`` (missing/unexpected keys, other shapes)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    if missing and (old_layout := old_layout_problem(state_dict)):
        raise CheckpointError(f"{path}: {old_layout}.")
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} {tuple(v.shape)} vs the model's {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(expected[k].shape)
    ]
    found = [(missing, "missing tensor(s)"), (unexpected, "unexpected tensor(s)"), (wrong, "of another shape")]
    problems = [f"{len(keys)} {what}, e.g. {keys[0]}" for keys, what in found if keys]
    if problems:
        raise CheckpointError(
            f"{path}: its weights do not fit this model ({'; '.join(problems)}). Resume with the overrides the "
            "run was started with (model, data.image_size, data.num_classes), or start a new run."
        )
