"""Shared fixtures: the real GTSRB tree (from $GTSRB_ROOT, skipped when absent) and tiny synthetic trees."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tests.helpers import CONF


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``gpu`` are skipped where CUDA is absent (CI, this project's CPU machines)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (pytest -m gpu on a GPU machine)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not a parameter id that reads "gpu"
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gtsrb_root() -> Path:
    """The real GTSRB tree named by $GTSRB_ROOT (CI: ../shared/gtsrb); skip when unset or absent."""
    value = os.environ.get("GTSRB_ROOT")
    if not value or not Path(value).is_dir():
        pytest.skip("real GTSRB data not available: set GTSRB_ROOT (CI uses ../shared/gtsrb)")
    return Path(value)


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
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(
                config_name="train",
                overrides=[
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
    finally:
        GlobalHydra.instance().clear()
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
