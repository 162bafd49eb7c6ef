"""Helpers shared by the test modules (no test module imports another): paths, subprocess runs, readers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def run_module(
    module: str, args: list[str], env_extra: dict | None = None, timeout: int = 600, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    """``python -m alexnet_gtsrb.<module> *args`` in a subprocess (the way a user runs it); output captured."""
    return subprocess.run(
        [sys.executable, "-m", f"alexnet_gtsrb.{module}", *args],
        cwd=cwd,
        env={**os.environ, **(env_extra or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_event_tags(event_dir: Path) -> dict[str, list]:
    """Every scalar and image tag in the TensorBoard event files under event_dir, with their events."""
    from alexnet_gtsrb.run_folder import read_events

    scalars, images = read_events(event_dir, recursive=True)
    return {**scalars, **images}


def run_train(args: list[str], env_extra: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m alexnet_gtsrb.train *args`` in a subprocess."""
    return run_module("train", args, env_extra=env_extra, timeout=timeout)


def tiny_overrides(synthetic_root: Path, batch_size: int = 16) -> list[str]:
    """experiment=demo shrunk to seconds: 67 px images from the tiny synthetic tree, no workers, no sanity steps."""
    return [
        "experiment=demo",
        f"data.data_dir={synthetic_root}",
        "data.synthetic=null",
        "data.image_size=67",
        f"data.batch_size={batch_size}",
        "data.num_workers=0",
        "trainer.num_sanity_val_steps=0",
        "callbacks.conv1_kernels=null",
    ]


class SignalAtTestStart:
    """A Lightning callback (``+callbacks.signal_at_test._target_=tests.helpers.SignalAtTestStart``) that sends
    SIGTERM to its own process when the test after training starts: a signal that lands during the test."""

    def __new__(cls):  # a real Callback subclass, built lazily so importing the helpers needs no Lightning
        import os
        import signal

        import lightning as L

        class _Signal(L.Callback):
            def on_test_batch_start(self, *args, **kwargs) -> None:
                os.kill(os.getpid(), signal.SIGTERM)

        return _Signal()


IMAGENET_FILE = "alexnet-owt-7be5be79.pth"  # the file name of torchvision's AlexNet_Weights.IMAGENET1K_V1 url


def fake_imagenet_weights(torch_home: Path, seed: int = 0) -> Path:
    """A torchvision-layout AlexNet state_dict (random, 1000 classes) where torchvision's weights API looks for
    the ImageNet file (``$TORCH_HOME/hub/checkpoints``): ``model.pretrained=imagenet`` then loads offline."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    path = torch_home / "hub" / "checkpoints" / IMAGENET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.alexnet().state_dict(), path)
    return path


def real_gtsrb_root() -> Path:
    """$GTSRB_ROOT as a Path; ``pytest.skip`` when it is unset or not a folder, ``pytest.fail`` instead when
    ``ALEXNET_GTSRB_REQUIRE_DATA=1``."""
    import pytest

    value = os.environ.get("GTSRB_ROOT")
    if not value or not Path(value).is_dir():
        reason = f"real GTSRB data not available at GTSRB_ROOT={value!r} (CI uses ../shared/gtsrb)"
        if os.environ.get("ALEXNET_GTSRB_REQUIRE_DATA") == "1":
            pytest.fail(f"{reason}; ALEXNET_GTSRB_REQUIRE_DATA=1 makes this a failure")
        pytest.skip(reason)
    return Path(value)


def compose_config(config_name: str, overrides: list[str]) -> Any:
    """``conf/<config_name>.yaml`` composed with ``overrides``, Hydra's global state cleared before and after
    (so a test can compose or run an entry point next)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
