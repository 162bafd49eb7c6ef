"""A Hydra sweeper on Optuna's ask/tell interface: ``python -m alexnet_gtsrb.train -m hparams_search=optuna``.

Why our own: the Hydra Optuna plugin supports only optuna < 3, whose SQLite storage breaks on SQLAlchemy 2,
which in turn held MLflow back. This sweeper needs only Optuna's stable ask/tell API (optuna >= 3.2).

* The search space is ``hydra.sweeper.params`` plus sweep overrides on the command line, in Hydra's override
  syntax: ``choice(a, b)`` (categorical), ``range(lo, hi, step)`` (integers or floats on a grid),
  ``interval(lo, hi)`` (uniform floats) and ``tag(log, interval(lo, hi))`` (log-uniform floats).
  Plain overrides are passed to every trial unchanged.
* The study lives in ``storage`` (an SQLite file in the sweep folder by default). ``n_trials`` is the total number
  of finished (complete or pruned) trials: re-running with the same ``hydra.sweep.dir`` resumes the study and
  runs only the trials still missing (failed trials are made again), and the sampler's seed moves on by the
  number of trials already made, so a resumed seeded sampler does not draw the first trials again.
* Trials whose job fails are told to the study as failed; the sweep stops (re-raising the job's error) when the
  share of failed trials in a batch exceeds ``max_failure_rate``.

Hydra finds sweepers only inside the ``hydra_plugins`` namespace package, hence this module's place.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

SQLITE = "sqlite:///"


def distribution(override: Override) -> Any:
    """The Optuna distribution an override's sweep describes, or its plain value (a string) when it is no sweep."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value: Any = override.value()
    key = override.get_key_element()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        choices: list[Any] = list(override.sweep_iterator(transformer=Transformer.encode))
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        start, stop, step = (value.start, value.stop, value.step)  # Hydra fills all three
        assert start is not None and stop is not None and step is not None
        if any(isinstance(v, float) for v in (start, stop, step)):
            n = math.floor((float(stop) - float(start)) / float(step) - 1e-9)  # range() excludes its stop
            return FloatDistribution(float(start), float(start) + n * float(step), step=float(step))
        last = int(start) + (int(stop) - 1 - int(start)) // int(step) * int(step)  # range() excludes its stop
        return IntDistribution(int(start), last, step=int(step))
    if isinstance(value, IntervalSweep):  # Hydra parses an interval's ends as floats
        assert value.start is not None and value.end is not None
        return FloatDistribution(float(value.start), float(value.end), log="log" in value.tags)
    raise ValueError(f"{key}: the Optuna sweeper cannot search {override.input_line!r} (use choice, range or interval)")


class OptunaSweeper(Sweeper):
    """Ask the study for a batch of trials, launch them with Hydra's launcher, tell the study their values."""

    def __init__(
        self,
        sampler: Any,
        direction: str = "maximize",
        storage: str | None = None,
        study_name: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        max_failure_rate: float = 0.0,
        params: DictConfig | None = None,
    ) -> None:
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction={direction}: give maximize or minimize")
        if int(n_trials) < 0 or int(n_jobs) < 1 or not 0.0 <= float(max_failure_rate) <= 1.0:
            raise ValueError(
                f"hydra.sweeper: n_trials={n_trials} (>= 0), n_jobs={n_jobs} (>= 1) and "
                f"max_failure_rate={max_failure_rate} (in [0, 1]) are out of range"
            )
        self.sampler_config = sampler
        self.direction: Any = direction  # checked above: maximize or minimize
        self.storage = storage
        self.study_name = study_name
        self.n_trials = int(n_trials)
        self.n_jobs = int(n_jobs)
        self.max_failure_rate = float(max_failure_rate)
        self.params = params
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def _space(self, arguments: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
        """(searched key -> distribution, fixed key -> value): the config's params, then the command line's."""
        lines = [f"{k!s}={v!s}" for k, v in dict(self.params or {}).items()] + list(arguments)
        searched: dict[str, Any] = {}
        fixed: dict[str, str] = {}
        for override in OverridesParser.create().parse_overrides(lines):
            key = override.get_key_element()
            searched.pop(key, None)
            fixed.pop(key, None)
            found = distribution(override)
            (fixed if isinstance(found, str) else searched)[key] = found
        return searched, fixed

    def _study(self) -> Any:
        import optuna

        if isinstance(self.storage, str) and self.storage.startswith(SQLITE):
            Path(self.storage.removeprefix(SQLITE)).parent.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(
            study_name=self.study_name, storage=self.storage, direction=self.direction, load_if_exists=True
        )
        sampler: Any = self.sampler_config  # a config (the YAML sets _recursive_: false), or a built sampler
        if isinstance(sampler, DictConfig):
            sampler = OmegaConf.to_container(sampler, resolve=True)
        if isinstance(sampler, dict):
            if sampler.get("seed") is not None:  # moved on by the trials an earlier run made
                sampler["seed"] = int(sampler["seed"]) + len(study.trials)
            sampler = instantiate(sampler)
        if sampler is not None:
            study.sampler = sampler
        return study

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        searched, fixed = self._space(arguments)
        study = self._study()
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        done = sum(t.state in finished for t in study.trials)
        to_go = max(self.n_trials - done, 0)
        log.info(
            "Optuna study %r (%s): %d trial(s) done, %d to go of n_trials=%d; searching %s",
            study.study_name,
            self.storage,
            done,
            to_go,
            self.n_trials,
            ", ".join(searched) or "nothing",
        )
        while to_go > 0:
            trials = [study.ask(searched) for _ in range(min(self.n_jobs, to_go))]
            overrides = [
                tuple(f"{k}={v}" for k, v in trial.params.items()) + tuple(f"{k}={v}" for k, v in fixed.items())
                for trial in trials
            ]
            self.validate_batch_is_legal(overrides)
            assert self.launcher is not None, "setup() comes first"
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            failures = 0
            for trial, ret in zip(trials, returns, strict=True):
                try:
                    value = float(ret.return_value)
                    if not math.isfinite(value):
                        raise ValueError(f"the job returned {value}")
                    study.tell(trial, value)
                except Exception as exc:  # the job's own error, or a value Optuna cannot rank
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    log.warning("Trial %d failed: %s", trial.number, exc)
                    failures += 1
            if failures / len(returns) > self.max_failure_rate:
                for ret in returns:
                    _ = ret.return_value  # re-raises the first failed job's error with its traceback
                rate = self.max_failure_rate
                raise RuntimeError(f"{failures} of {len(returns)} trials failed (max_failure_rate={rate})")
            to_go -= len(returns)
        self._save_results(study)

    def _save_results(self, study: Any) -> None:
        completed = [t for t in study.trials if t.value is not None]
        if not completed:
            return
        best = study.best_trial
        log.info("Best value %s with %s", best.value, best.params)
        results = {"name": "optuna", "best_params": best.params, "best_value": best.value, "trials": len(completed)}
        assert self.config is not None
        OmegaConf.save(OmegaConf.create(results), Path(self.config.hydra.sweep.dir) / "optimization_results.yaml")
