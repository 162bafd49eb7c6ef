"""Where a number came from: the code (git commit, dirty tree), the library versions, the command, the host
and the device, recorded in ``metrics.json`` and in the TensorBoard HPARAMS session of every run."""

from __future__ import annotations

import platform
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

LIBRARIES = ("torch", "torchvision", "lightning", "hydra-core", "albumentations", "torchmetrics", "omegaconf")


def _git(*args: str) -> str | None:
    """``git <args>`` in the package's source tree; None outside a git checkout (an installed wheel)."""
    source = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(
            ["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def provenance(device: torch.device) -> dict[str, Any]:
    """The run's provenance: git commit and dirty flag (None when not run from a checkout), versions, command
    line, host name and ``device`` (as ``cpu`` or ``cuda:0 (NVIDIA H200)``)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "git_commit": commit,
        "git_dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        **{name: _version(name) for name in ("alexnet_gtsrb", *LIBRARIES)},
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "host": socket.gethostname(),
        "device": f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device),
    }
