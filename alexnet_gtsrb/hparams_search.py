"""Hydra callback for Optuna sweeps whose study is stored in the sweep folder (``conf/hparams_search``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

log = logging.getLogger(__name__)

SQLITE = "sqlite:///"


class OptunaSweepDir(Callback):
    """Prepare ``hydra.sweep.dir`` for an Optuna study stored there, and make re-runs resume it.

    Runs at the start of a multirun, before Hydra builds the sweeper from the same config:

    * creates the sweep folder: the sweeper opens ``sqlite:///${hydra.sweep.dir}/optuna.db`` before the
      launcher creates the folder, and SQLite cannot create a file in a missing folder;
    * when the study already exists there (a re-run with the same ``hydra.sweep.dir``), makes ``n_trials``
      the total number of completed trials rather than a number of new ones, and moves the sampler seed
      on by the number of trials already made, so the resumed sampler does not draw the first trials again.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        sweeper = config.hydra.get("sweeper")
        storage = sweeper.get("storage") if sweeper is not None else None
        if not isinstance(storage, str) or not storage.startswith(SQLITE):
            return
        if not Path(storage.removeprefix(SQLITE)).is_file():
            return
        import optuna

        try:
            study = optuna.load_study(study_name=sweeper.study_name, storage=storage)
        except KeyError:  # the file holds other studies only
            return
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        done = sum(t.state in finished for t in study.trials)
        with read_write(config.hydra), open_dict(config.hydra):
            total = int(sweeper.n_trials)
            sweeper.n_trials = max(total - done, 0)
            seed = sweeper.get("sampler", {}).get("seed")
            if seed is not None:
                sweeper.sampler.seed = int(seed) + len(study.trials)
        log.info(
            f"Resuming Optuna study {sweeper.study_name!r} ({storage}): {done} trial(s) done, "
            f"{sweeper.n_trials} to go of n_trials={total}; sampler seed {seed} -> {sweeper.sampler.get('seed')}"
        )
