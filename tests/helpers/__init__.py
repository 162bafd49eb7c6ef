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


#: ``python -m alexnet_gtsrb.<name>`` -> the module whose ``main`` that runs (the console scripts' targets too)
ENTRY_MODULES = {
    "bench": "alexnet_gtsrb.bench.__main__",
    "data.download": "alexnet_gtsrb.data.download.__main__",
    "data.synthetic": "alexnet_gtsrb.data.synthetic.cli",
}
ARGPARSE_MAINS = ("report", "data.download", "data.synthetic")  # main(argv) -> exit status; the rest are Hydra's


def run_in_process(
    module: str, args: list[str], env_extra: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``python -m alexnet_gtsrb.<module> *args`` run in this process: the entry point's ``main`` with
    ``sys.argv`` set, Hydra's global state cleared before and after, ``SystemExit`` caught as the return code,
    stdout and stderr captured; the environment, working folder, logging handlers, signal handlers and torch's
    thread count are restored afterwards. The result reads like :func:`run_module`'s, so a test can use either.

    For error paths and config checks, where the process boundary is not what is tested (it saves the ~7 s of
    CPU that importing torch, Lightning and the package costs a fresh interpreter). Signals, DDP, console
    scripts and one wiring run per entry point stay in real subprocesses (:func:`run_module`)."""
    import contextlib
    import importlib
    import io
    import logging
    import signal

    import torch
    from hydra.core.global_hydra import GlobalHydra

    main = importlib.import_module(ENTRY_MODULES.get(module, f"alexnet_gtsrb.{module}")).main
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_env, saved_cwd = sys.argv[:], dict(os.environ), os.getcwd()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    saved_threads = torch.get_num_threads()
    code: int | str | None = 0
    GlobalHydra.instance().clear()
    try:
        sys.argv = [f"alexnet_gtsrb.{module}", *args]
        os.environ.update(env_extra or {})
        os.chdir(cwd or ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                result = main(args) if module in ARGPARSE_MAINS else main()
                code = result if module in ARGPARSE_MAINS and isinstance(result, int) else 0
            except SystemExit as exc:
                code = exc.code
    finally:
        GlobalHydra.instance().clear()
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        for handler in root.handlers[:]:
            if handler not in saved_handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in saved_handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(saved_level)
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
        torch.set_num_threads(saved_threads)
    returncode = code if isinstance(code, int) else (0 if code is None else 1)
    if isinstance(code, str):
        err.write(code + "\n")
    return subprocess.CompletedProcess(sys.argv, returncode, out.getvalue(), err.getvalue())


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
