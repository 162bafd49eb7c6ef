"""Optuna hyper-parameter search (``hparams_search=optuna``) and SLURM submission (``cluster=slurm``).

The sweep test runs the real entry point with the Optuna sweeper at tiny settings on the synthetic tree, then
resumes the study from the SQLite file in the sweep folder. SLURM cannot run here: its config is composed only.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class

from tests.helpers import CONF, run_train


@pytest.fixture()
def compose_hydra(tmp_path):
    """compose_hydra(overrides) -> the train config with its ``hydra`` node (launcher, sweeper, sweep dir)."""

    def _compose(overrides: list[str]):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(
                config_name="train",
                overrides=[f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}/logs", *overrides],
                return_hydra_config=True,
            )

    yield _compose
    GlobalHydra.instance().clear()


# -- Optuna -------------------------------------------------------------------------------------------------
def test_optuna_search_composes_with_its_space_seed_and_storage_in_the_sweep_dir(compose_hydra, tmp_path):
    sweep_dir = tmp_path / "sweep"
    cfg = compose_hydra(["hparams_search=optuna", "experiment=baseline", f"hydra.sweep.dir={sweep_dir}"])
    sweeper = cfg.hydra.sweeper
    assert get_class(sweeper._target_).__name__ == "OptunaSweeper"
    assert cfg.optimized_metric == "val/acc_best"
    assert (sweeper.direction, sweeper.study_name, sweeper.n_trials, sweeper.n_jobs) == (
        "maximize",
        "alexnet_gtsrb",
        20,
        1,
    )
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 42
    assert sweeper.storage == f"sqlite:///{sweep_dir}/optuna.db"
    assert dict(sweeper.params) == {
        "optimizer.lr": "tag(log, interval(1e-4, 1e-1))",
        "optimizer.weight_decay": "tag(log, interval(1e-6, 1e-2))",
        "data.batch_size": "choice(32, 64, 128)",
        "model.net.dropout": "interval(0.0, 0.7)",
    }
    # every searched key exists in the composed config (a typo would silently add a new key)
    for key in sweeper.params:
        node = cfg
        for part in key.split("."):
            assert part in node, key
            node = node[part]
    assert get_class(cfg.hydra.callbacks.optuna_sweep_dir._target_).__name__ == "OptunaSweepDir"


def _completed(sweep_dir: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="alexnet_gtsrb", storage=f"sqlite:///{sweep_dir}/optuna.db")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


@pytest.mark.slow
def test_optuna_sweep_stores_trials_in_the_sweep_dir_and_resumes(tmp_path, synthetic_root):
    """Two real trials, then a re-run with the same sweep folder loads the study and adds one more trial."""
    sweep_dir = tmp_path / "sweep"
    args = [
        "-m",
        "hparams_search=optuna",
        "experiment=demo",
        f"data.data_dir={synthetic_root}",
        "data.synthetic=null",
        "data.image_size=67",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
        "callbacks.conv1_kernels=null",
        "test=false",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    first = run_train([*args, "hydra.sweeper.n_trials=2"], timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (sweep_dir / "optuna.db").is_file()
    trials = _completed(sweep_dir)
    assert len(trials) == 2
    for t in trials:
        assert t.value is not None and 0.0 <= t.value <= 1.0
        assert set(t.params) == {
            "optimizer.lr",
            "optimizer.weight_decay",
            "data.batch_size",
            "model.net.dropout",
        }
        assert 1e-4 <= t.params["optimizer.lr"] <= 1e-1 and t.params["data.batch_size"] in (32, 64, 128)
    # each trial's value is the val/acc_best its job folder recorded
    jobs = sorted(p.parent for p in sweep_dir.glob("*/metrics.json"))
    assert len(jobs) == 2
    recorded = sorted(json.loads((j / "metrics.json").read_text())["metrics"]["val/acc_best"] for j in jobs)
    assert sorted(t.value for t in trials) == pytest.approx(recorded)

    # resume: the study is loaded from the sweep folder; n_trials is the total, so n_trials=3 adds one trial
    second = run_train([*args, "hydra.sweeper.n_trials=3"], timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Using an existing study" in second.stdout + second.stderr
    assert "2 trial(s) done, 1 to go of n_trials=3" in second.stdout + second.stderr
    trials = _completed(sweep_dir)
    assert sorted(t.number for t in trials) == [0, 1, 2]
    assert trials[2].params != trials[0].params  # the resumed sampler does not replay the first draws
    assert len(list(sweep_dir.glob("*/metrics.json"))) == 3  # the first run's job folders were kept


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_value_the_space_draws_builds_every_experiments_model(compose_hydra, experiment):
    """The search space pairs with every experiment: each end of each range, and every choice, builds the model
    and its optimizer (the space once drew model.net.lrn=true, which the origin script's model rejects)."""
    from hydra.utils import instantiate

    cfg = compose_hydra(["hparams_search=optuna", f"experiment={experiment}"])
    draws = {
        "optimizer.lr": [1e-4, 1e-1],
        "optimizer.weight_decay": [1e-6, 1e-2],
        "data.batch_size": [32, 64, 128],
        "model.net.dropout": [0.0, 0.7],
    }
    assert set(draws) == set(cfg.hydra.sweeper.params)
    for key, values in draws.items():
        for value in values:
            trial = compose_hydra(["hparams_search=optuna", f"experiment={experiment}", f"{key}={value}"])
            model = instantiate(trial.model, _recursive_=False)
            assert model.hparams.net["dropout"] == trial.model.net.dropout
            instantiate(trial.model.optimizer)(model.parameters())


@pytest.mark.slow
def test_optuna_sweep_of_the_documented_baseline_completes_on_real_gtsrb(tmp_path, gtsrb_root):
    """The README's command, with two trials and batch limits, on the real images (it crashed on trial 1)."""
    sweep_dir = tmp_path / "sweep"
    args = ["-m", "hparams_search=optuna", "experiment=baseline", f"data.data_dir={gtsrb_root}"]
    args += ["hydra.sweeper.n_trials=2", "trainer.max_epochs=1", "trainer.limit_train_batches=1"]
    args += ["trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0"]
    args += ["data.num_workers=0", f"hydra.sweep.dir={sweep_dir}"]
    proc = run_train(args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(_completed(sweep_dir)) == 2
    assert (sweep_dir / "summary.md").is_file()


# -- SLURM ----------------------------------------------------------------------------------------------------
def test_slurm_cluster_config_sizes_the_job_from_the_trainer(compose_hydra, tmp_path):
    sweep_dir = tmp_path / "sweep"
    cfg = compose_hydra(
        [
            "cluster=slurm",
            "trainer=ddp",
            "trainer.num_nodes=2",
            "trainer.devices=4",
            "experiment=paper",
            f"hydra.sweep.dir={sweep_dir}",
        ]
    )
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
    assert launcher.partition is None and launcher.timeout_min > 0 and launcher.mem_gb > 0
    assert launcher.submitit_folder.startswith(str(sweep_dir))
    cls = get_class(launcher._target_)
    assert cls.__name__ == "SlurmLauncher"
    assert (cfg.trainer.strategy, cfg.trainer.num_nodes, cfg.trainer.devices) == ("ddp", 2, 4)


def test_slurm_cluster_config_alone_selects_ddp_and_keeps_the_default_launcher_otherwise(compose_hydra):
    cfg = compose_hydra(["cluster=slurm"])
    assert cfg.trainer.strategy == "ddp"
    assert (cfg.hydra.launcher.nodes, cfg.hydra.launcher.tasks_per_node) == (1, cfg.trainer.devices)
    plain = compose_hydra([])
    assert "BasicLauncher" in plain.hydra.launcher._target_ and plain.trainer.strategy != "ddp"
