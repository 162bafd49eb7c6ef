"""Optuna hyper-parameter search (``hparams_search=optuna``) and SLURM submission (``cluster=slurm``).

The sweep test runs the real entry point with the Optuna sweeper at tiny settings on the synthetic tree, then
resumes the study from the SQLite file in the sweep folder. SLURM cannot run here: its config is composed only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus
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
    assert sweeper._target_ == "hydra_plugins.alexnet_gtsrb_optuna.optuna_sweeper.OptunaSweeper"
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


def _completed(sweep_dir: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="alexnet_gtsrb", storage=f"sqlite:///{sweep_dir}/optuna.db")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


# -- the project's ask/tell sweeper, in-process with a stand-in launcher ---------------------------------------
class StubLauncher:
    """Runs ``objective(overrides as a dict)`` for each job; an exception becomes a failed job, as in Hydra."""

    def __init__(self, objective):
        self.objective = objective
        self.launched: list[dict[str, str]] = []

    def launch(self, overrides, initial_job_idx):
        returns = []
        for job in overrides:
            kv = dict(o.split("=", 1) for o in job)
            self.launched.append(kv)
            try:
                value = self.objective(kv)
                returns.append(JobReturn(overrides=list(job), status=JobStatus.COMPLETED, _return_value=value))
            except Exception as exc:
                returns.append(JobReturn(overrides=list(job), status=JobStatus.FAILED, _return_value=exc))
        return returns


def _sweeper(tmp_path, objective, **kwargs):
    from omegaconf import OmegaConf

    from hydra_plugins.alexnet_gtsrb_optuna.optuna_sweeper import OptunaSweeper

    settings = {
        "sampler": OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 1}),
        "storage": f"sqlite:///{tmp_path}/sweep/study.db",  # the folder does not exist yet
        "study_name": "toy",
        "params": OmegaConf.create({"lr": "tag(log, interval(1e-4, 1.0))"}),
        **kwargs,
    }
    sweeper = OptunaSweeper(**settings)
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    checked: list[list[str]] = []
    loader = SimpleNamespace(load_sweep_config=lambda master_config, sweep_overrides: checked.append(sweep_overrides))
    sweeper.hydra_context = SimpleNamespace(config_loader=loader)
    sweeper.launcher = StubLauncher(objective)
    return sweeper, checked


def _peak(kv: dict[str, str]) -> float:
    """A toy objective with its maximum at lr = 1e-2."""
    return -((math.log10(float(kv["lr"])) + 2.0) ** 2)


def test_the_search_space_holds_exactly_what_hydras_own_sweep_would_run():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from hydra_plugins.alexnet_gtsrb_optuna.optuna_sweeper import distribution

    def grid(d):  # the values a stepped distribution can take
        n = round((d.high - d.low) / d.step)
        return [d.low + i * d.step for i in range(n + 1)]

    parse = OverridesParser.create().parse_override
    assert distribution(parse("a=choice(32, 64, 128)")) == CategoricalDistribution([32, 64, 128])
    assert distribution(parse("a=choice(sgd, adamw)")) == CategoricalDistribution(["sgd", "adamw"])
    assert grid(distribution(parse("a=range(2, 11, 3)"))) == list(range(2, 11, 3))  # [2, 5, 8]
    assert grid(distribution(parse("a=range(0.0, 1.0, 0.25)"))) == pytest.approx([0.0, 0.25, 0.5, 0.75])
    for line in ("a=range(2, 11, 3)", "a=range(0.0, 1.0, 0.25)", "a=choice(32, 64, 128)"):
        hydra_values = list(parse(line).sweep_iterator())  # what Hydra's basic sweeper would launch
        found = distribution(parse(line))
        values = found.choices if isinstance(found, CategoricalDistribution) else grid(found)
        assert list(values) == pytest.approx(hydra_values), line
    assert distribution(parse("a=interval(0.0, 0.7)")) == FloatDistribution(0.0, 0.7)
    assert distribution(parse("a=tag(log, interval(1e-4, 1e-1))")) == FloatDistribution(1e-4, 1e-1, log=True)
    assert distribution(parse("a=interval(1, 5)")) == FloatDistribution(1.0, 5.0)  # Hydra: intervals are floats
    assert isinstance(distribution(parse("a=range(1, 5)")), IntDistribution)
    assert distribution(parse("a=0.5")) == "0.5"  # no sweep: passed to every trial as given


def test_the_sweeper_tells_each_jobs_value_and_resumes_without_replaying_draws(tmp_path):
    sweeper, checked = _sweeper(tmp_path, _peak, n_trials=3)
    sweeper.sweep(["seed=7"])
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path}/sweep/study.db")
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 3 and len(checked) == 3
    for t, job in zip(trials, sweeper.launcher.launched, strict=True):
        assert job["seed"] == "7" and float(job["lr"]) == t.params["lr"] and 1e-4 <= t.params["lr"] <= 1.0
        assert t.value == pytest.approx(-((math.log10(t.params["lr"]) + 2.0) ** 2))  # the value the job returned
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(t.value for t in trials))

    # n_trials is the total: a re-run with n_trials=5 runs two trials, and the seeded sampler moves on
    again, _ = _sweeper(tmp_path, _peak, n_trials=5)
    again.sweep(["seed=7"])
    assert len(again.launcher.launched) == 2
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path}/sweep/study.db")
    lrs = [t.params["lr"] for t in study.trials]
    assert len(lrs) == 5 and lrs[3] != lrs[0] and lrs[4] != lrs[1]


def test_failed_trials_are_told_as_failed_and_stop_the_sweep_past_the_failure_rate(tmp_path):
    def flaky(kv):
        if float(kv["lr"]) > 0.1:
            raise RuntimeError("diverged")
        return float("nan") if float(kv["lr"]) > 0.05 else _peak(kv)

    sweeper, _ = _sweeper(tmp_path, flaky, n_trials=6, max_failure_rate=1.0)
    sweeper.sweep([])
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{tmp_path}/sweep/study.db")
    assert len(study.trials) == 6
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed and all(t.params["lr"] > 0.05 for t in failed)  # raised, or returned NaN
    assert all(t.value is not None for t in study.trials if t.params["lr"] <= 0.05)

    # a re-run counts only finished trials as done: the failed ones are made again
    again, _ = _sweeper(tmp_path, _peak, n_trials=6)
    again.sweep([])
    assert len(again.launcher.launched) == len(failed)

    strict, _ = _sweeper(tmp_path / "strict", flaky, n_trials=50, max_failure_rate=0.0)
    with pytest.raises(Exception, match="diverged|1 of 1 trials failed"):
        strict.sweep([])


def test_a_sweeper_setting_out_of_range_is_refused():
    from hydra_plugins.alexnet_gtsrb_optuna.optuna_sweeper import OptunaSweeper

    with pytest.raises(ValueError, match="direction=up"):
        OptunaSweeper(sampler=None, direction="up")
    with pytest.raises(ValueError, match="max_failure_rate=2"):
        OptunaSweeper(sampler=None, max_failure_rate=2)


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
    """The documented command (docs/workflows.md), with two trials and batch limits, on the real images (it
    crashed on trial 1)."""
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
