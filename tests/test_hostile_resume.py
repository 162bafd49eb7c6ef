"""A shared run folder whose checkpoint's callback state names files outside the run: resuming it must not read
or delete them (alexnet_gtsrb.callbacks.checkpoint). Lightning restores ModelCheckpoint's best/kth/last paths
from the checkpoint and deletes the old ones with a recursive remove once a newer checkpoint is written."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from alexnet_gtsrb.callbacks.checkpoint import RunCheckpoint
from alexnet_gtsrb.checkpoints import AtomicCheckpointIO


def _victims(root: Path) -> tuple[Path, Path]:
    """A file and a directory holding a file, outside any run folder."""
    root.mkdir(parents=True, exist_ok=True)
    victim_file = root / "thesis.tex"
    victim_file.write_text("years of work")
    victim_dir = root / "dataset"
    victim_dir.mkdir(exist_ok=True)
    (victim_dir / "labels.csv").write_text("0;1")
    return victim_file, victim_dir


def _hostile_paths(ckpt_dir: Path, victim: Path, how: str) -> str:
    """The victim named absolutely, or relative to the checkpoint folder through `..` (which passes
    Lightning's own `Path.absolute()` test of "is this file in my folder")."""
    if how == "absolute":
        return str(victim)
    ups = len(ckpt_dir.resolve().parts) - 1
    return str(ckpt_dir / Path(*[".."] * ups) / victim.resolve().relative_to("/"))


def _hostile_state(target: str, victim_file: str, victim_dir: str) -> dict:
    return {
        "monitor": "val/acc",
        "best_model_score": torch.tensor(-1.0),
        "best_model_path": victim_dir,
        "current_score": torch.tensor(-1.0),
        "dirpath": target,
        "best_k_models": {victim_file: torch.tensor(-1.0), victim_dir: torch.tensor(-2.0)},
        "kth_best_model_path": victim_file,
        "kth_value": torch.tensor(-1.0),
        "last_model_path": victim_dir,
    }


@pytest.mark.parametrize("how", ["absolute", "dotdot"])
def test_restored_paths_outside_the_folder_are_dropped_with_one_line(tmp_path, caplog, how):
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    victim_file, victim_dir = _victims(tmp_path / "home")
    inside_file = ckpt_dir / "epoch_000.ckpt"
    inside_file.write_bytes(b"x")
    callback = RunCheckpoint(dirpath=str(ckpt_dir), monitor="val/acc", mode="max", save_top_k=1)
    state = _hostile_state(
        str(ckpt_dir), _hostile_paths(ckpt_dir, victim_file, how), _hostile_paths(ckpt_dir, victim_dir, how)
    )
    state["best_k_models"][str(inside_file)] = torch.tensor(0.5)
    with caplog.at_level(logging.WARNING):
        callback.load_state_dict(state)
    assert callback.best_model_path == callback.kth_best_model_path == callback.last_model_path == ""
    assert callback.best_model_score is None  # a score without its file would block the next best
    assert list(callback.best_k_models) == [str(inside_file)]  # a path inside the folder is kept
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "outside this run's checkpoint folder" in lines[0]


def test_a_clean_state_is_restored_unchanged_and_keeps_modelcheckpoints_key(tmp_path):
    """A run written with Lightning's ModelCheckpoint resumes into RunCheckpoint (same state key) and back."""
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    best = ckpt_dir / "epoch_001.ckpt"
    kwargs = {"dirpath": str(ckpt_dir), "monitor": "val/acc", "mode": "max", "save_top_k": 1}
    assert RunCheckpoint(**kwargs).state_key == ModelCheckpoint(**kwargs).state_key
    state = {
        "monitor": "val/acc",
        "best_model_score": torch.tensor(0.75),
        "best_model_path": str(best),
        "current_score": torch.tensor(0.75),
        "dirpath": str(ckpt_dir),
        "best_k_models": {str(best): torch.tensor(0.75)},
        "kth_best_model_path": str(best),
        "kth_value": torch.tensor(0.75),
        "last_model_path": "",
    }
    ours, theirs = RunCheckpoint(**kwargs), ModelCheckpoint(**kwargs)
    ours.load_state_dict(dict(state))
    theirs.load_state_dict(dict(state))
    for key in ("best_model_path", "kth_best_model_path", "best_k_models", "best_model_score", "kth_value"):
        assert getattr(ours, key) == getattr(theirs, key), key


@pytest.mark.parametrize("how", ["absolute", "dotdot"])
def test_only_regular_files_inside_the_folder_are_deleted(tmp_path, how):
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    victim_file, victim_dir = _victims(tmp_path / "home")
    (ckpt_dir / "link.ckpt").symlink_to(victim_file)
    (ckpt_dir / "sub.ckpt").mkdir()
    mine = ckpt_dir / "epoch_000.ckpt"
    mine.write_bytes(b"x")
    callback = RunCheckpoint(dirpath=str(ckpt_dir))

    class Trainer:
        is_global_zero = True

    for target in (victim_file, victim_dir):
        callback._remove_checkpoint(Trainer(), _hostile_paths(ckpt_dir, target, how))  # type: ignore[arg-type]
    callback._remove_checkpoint(Trainer(), str(ckpt_dir / "link.ckpt"))  # type: ignore[arg-type]
    callback._remove_checkpoint(Trainer(), str(ckpt_dir / "sub.ckpt"))  # type: ignore[arg-type]
    assert victim_file.read_text() == "years of work" and (victim_dir / "labels.csv").is_file()
    assert (ckpt_dir / "sub.ckpt").is_dir()
    callback._remove_checkpoint(Trainer(), str(mine))  # type: ignore[arg-type]
    assert not mine.exists()
    # the writer beneath it removes one regular file and never a directory
    AtomicCheckpointIO().remove_checkpoint(str(victim_dir))
    assert (victim_dir / "labels.csv").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["absolute", "dotdot"])
def test_resuming_a_hostile_run_folder_deletes_nothing_outside_it(compose_cfg, synthetic_root, tmp_path, how):
    """The documented resume command (docs/workflows.md) on a run folder whose last.ckpt was edited to name
    victims in every restored path of both checkpoint callbacks: training goes on, the victims survive, the test
    checkpoint is one of the run's own."""
    from alexnet_gtsrb.train import train

    common = [
        "experiment=demo",
        "scheduler=none",
        f"data.data_dir={synthetic_root}",
        "data.synthetic=null",
        "data.image_size=67",
        "data.batch_size=32",
        "data.num_workers=0",
        "trainer.limit_train_batches=2",
        "test_ckpt=best",
    ]
    train(compose_cfg([*common, "trainer.max_epochs=1", "test=false"]))
    ckpt_dir = tmp_path / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    victim_file, victim_dir = _victims(tmp_path.parent / f"{tmp_path.name}-home")
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    hostile = _hostile_state(
        str(ckpt_dir), _hostile_paths(ckpt_dir, victim_file, how), _hostile_paths(ckpt_dir, victim_dir, how)
    )
    edited = 0
    for key, state in checkpoint["callbacks"].items():
        if key.startswith("ModelCheckpoint"):
            state.update({k: v for k, v in hostile.items() if k != "monitor"})
            if state.get("monitor"):  # the best-val/acc callback deletes its k-th best when a better one comes
                state["best_k_models"] = {hostile["best_model_path"]: torch.tensor(-1.0)}
                state["kth_best_model_path"] = hostile["best_model_path"]
            else:  # the `last` callbacks delete their previous file after each write
                state["best_model_path"] = hostile["kth_best_model_path"]
            edited += 1
    assert edited == 3  # best, last and the step-interval callback
    torch.save(checkpoint, last)

    metrics, objs = train(compose_cfg([*common, "trainer.max_epochs=3", "ckpt_path=last"]))
    assert objs["trainer"].global_step == 6
    assert victim_file.read_text() == "years of work" and (victim_dir / "labels.csv").is_file()
    best = Path(objs["trainer"].checkpoint_callback.best_model_path)
    assert best.parent == ckpt_dir and best.is_file()
