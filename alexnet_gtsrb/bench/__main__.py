"""``python -m alexnet_gtsrb.bench [overrides]`` (also the console script ``alexnet-gtsrb-bench``)."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from alexnet_gtsrb.bench.run import run_command
from alexnet_gtsrb.utils.cli import hydra_entry_point


def _run(cfg: DictConfig) -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "alexnet_gtsrb"):  # start-up chatter
        logging.getLogger(name).setLevel(logging.WARNING)
    run_command(cfg)


main = hydra_entry_point("bench", _run)

if __name__ == "__main__":
    main()
