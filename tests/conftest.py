"""Shared fixtures: the real GTSRB tree (from $GTSRB_ROOT, skipped when absent), tiny synthetic trees, one short
training run on them (at chance level), and a small network trained to be clearly above chance (``separable_model``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tests.helpers import CONF, compose_config, real_gtsrb_root


def pytest_configure(config) -> None:
    """Under pytest-xdist each worker (and every process it starts) gets one torch thread: two workers on two
    cores then keep both cores busy without oversubscribing them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["MKL_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``gpu`` are skipped where CUDA is absent (CI, this project's CPU machines)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (pytest -m gpu on a GPU machine)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not a parameter id that reads "gpu"
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _the_slow_marker_tells_the_truth(request, monkeypatch) -> None:
    """A test that trains (enters Lightning's fit loop) or starts a Python process must be marked ``slow``:
    ``make test-fast`` skips exactly those, so the marker has to be right. An unmarked one fails here, naming
    the reason, instead of silently making the fast subset slow. Shared runs trained once by a session or module
    fixture (``tiny_run``) are set up before this guard and may feed fast tests."""
    if request.node.get_closest_marker("slow") is not None:
        return
    import subprocess
    import sys

    from lightning.pytorch.loops.fit_loop import _FitLoop

    def refuse_fit(*args, **kwargs):  # config and data errors raised while fit sets up are not training
        pytest.fail("this test trains (the fit loop runs): mark it @pytest.mark.slow", pytrace=False)

    popen_init = subprocess.Popen.__init__

    def refuse_python(self, args, *rest, **kwargs):
        program = args[0] if isinstance(args, (list, tuple)) and args else args
        if isinstance(program, (str, os.PathLike)) and Path(program).name.startswith("python"):
            pytest.fail(f"this test starts a Python process ({program}): mark it @pytest.mark.slow", pytrace=False)
        if str(program) == sys.executable:
            pytest.fail("this test starts a Python process: mark it @pytest.mark.slow", pytrace=False)
        popen_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(_FitLoop, "run", refuse_fit)
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse_python)


@pytest.fixture(scope="session")
def gtsrb_root() -> Path:
    """The real GTSRB tree named by $GTSRB_ROOT (CI: ../shared/gtsrb); skip when unset or absent, fail instead
    under ``ALEXNET_GTSRB_REQUIRE_DATA=1`` (set by .ci/run: in CI a silent skip would hide a broken data path)."""
    return real_gtsrb_root()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A tiny synthetic GTSRB tree (official layout), generated once per test session."""
    from alexnet_gtsrb.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    return generate(root, train_tracks_per_class=3, frames_per_track=3, test_per_class=2, seed=0)


@pytest.fixture()
def synthetic_copy(synthetic_root, tmp_path) -> Path:
    """A writable copy of the tiny synthetic tree, for tests that break it."""
    dst = tmp_path / "copy"
    shutil.copytree(synthetic_root / "GTSRB", dst / "GTSRB")
    return dst


@pytest.fixture(scope="session")
def tiny_run(synthetic_root, tmp_path_factory) -> SimpleNamespace:
    """One short real training on the tiny synthetic tree, shared by the TensorBoard and results-notebook tests.

    ``train(cfg)`` in-process with experiment=demo at 67 px: 2 epochs of 3 training batches of 32, the whole
    validation split (every class), then the test with the best checkpoint. Returns ``dir`` (the run folder:
    tensorboard/, checkpoints/, metrics.json), ``metrics`` and the ``datamodule``.
    """
    from alexnet_gtsrb.train import train

    run_dir = tmp_path_factory.mktemp("tiny_run")
    cfg = compose_config(
        "train",
        [
            f"paths.output_dir={run_dir}",
            f"paths.log_dir={run_dir}/logs",
            "experiment=demo",
            f"data.data_dir={synthetic_root}",
            "data.synthetic=null",
            "data.image_size=67",
            "data.batch_size=32",
            "data.num_workers=0",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=3",
            "trainer.log_every_n_steps=1",
        ],
    )
    metrics, objs = train(cfg)
    return SimpleNamespace(dir=run_dir, metrics=metrics, datamodule=objs["datamodule"])


@pytest.fixture()
def compose_cfg(tmp_path):
    """compose_cfg(overrides) -> the composed train config with outputs redirected into tmp_path."""

    def _compose(overrides: list[str], config_name: str = "train"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(
                config_name=config_name,
                overrides=[f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}/logs", *overrides],
            )

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def separable_model() -> SimpleNamespace:
    """A small CNN trained once per session on separable synthetic images, clearly above chance.

    For tests that need a network whose predictions mean something (adversarial attacks, calibration, anything
    where a model at chance level would make the property vacuous). Images are 3x32x32, uint8; the class (one of
    4) is set by a mean colour (a grey of 110 with one channel raised by 30 grey levels, or none) plus Gaussian
    pixel noise of std 40, so the classes are separable from the mean colour but close enough that an L-infinity
    perturbation of 16/255 can cross a class boundary. ``model`` maps float pixels (B, 3, 32, 32) in [0, 1] to
    logits, is in eval mode with frozen parameters (do not train or modify it: the fixture is shared); it is
    trained for a few seconds with Adam, deterministically (seeded). It is confident, as a trained classifier is:
    it classifies the held-out batch (almost) perfectly, with margins (true logit minus the largest other one)
    of about 4 to 21, so float32 softmax rounds ``p_y`` to 1 on many images.

    Returns ``model``, the held-out batch (never trained on) as ``images`` (uint8, (N, 32, 32, 3), the layout
    :func:`alexnet_gtsrb.evaluation.pixel_model.to_pixels` reads), ``x`` (the same as float pixels (N, 3, 32, 32)),
    ``y`` (int64 labels), ``num_classes`` and ``accuracy`` (held-out, asserted >= 0.9 here).
    """
    import numpy as np
    import torch
    from torch import nn

    class Standardise(nn.Module):
        """``(x - mean) / std``: pixels in [0, 1] to the network's input scale (as PixelModel does)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - 0.45) / 0.16

    num_classes, size = 4, 32
    palette = np.array([[110, 110, 110], [140, 110, 110], [110, 140, 110], [110, 110, 140]], np.float64)

    def make(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, num_classes, n)
        noise = rng.normal(0.0, 40.0, (n, size, size, 3))
        images = np.clip(palette[labels][:, None, None, :] + noise, 0, 255).round().astype(np.uint8)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0).contiguous()
        return x, torch.from_numpy(labels).long(), images

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the network is far smaller than the cost of dispatching work to a second thread
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = nn.Sequential(
                Standardise(),
                nn.Conv2d(3, 8, 5, stride=2, padding=2),
                nn.ReLU(),
                nn.Conv2d(8, 16, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(16, num_classes),
            )
            x_train, y_train, _ = make(1024, seed=1)
            opt = torch.optim.Adam(model.parameters(), lr=1e-2)
            order = torch.randperm(len(y_train))
            for step in range(40):  # 40 batches of 64 (2.5 epochs)
                idx = order[(step * 64) % len(y_train) :][:64]
                opt.zero_grad()
                nn.functional.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval().requires_grad_(False)
    x, y, images = make(256, seed=2)
    with torch.no_grad():
        accuracy = float((model(x).argmax(-1) == y).float().mean())
    assert accuracy >= 0.9, f"separable_model reached only {accuracy:.3f} on its held-out batch"
    return SimpleNamespace(model=model, images=images, x=x, y=y, num_classes=num_classes, accuracy=accuracy)
