"""``python -m alexnet_gtsrb.bench [overrides]``: the command line (the package docstring explains the output);
``main`` is the console script ``alexnet-gtsrb-bench`` too."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from alexnet_gtsrb.bench.run import run_command
from alexnet_gtsrb.utils.cli import CONFIG_PATH, exit_on_user_error


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="bench")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Compose ``conf/bench.yaml`` with the overrides, run the bench, print the table, write JSON if asked."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "alexnet_gtsrb"):  # start-up chatter
        logging.getLogger(name).setLevel(logging.WARNING)
    run_command(cfg)


if __name__ == "__main__":
    main()
