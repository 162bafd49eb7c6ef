"""Entry point: ``python -m alexnet_gtsrb.models.summary [hydra overrides]``, the Keras-style layer table
(:mod:`alexnet_gtsrb.models.layer_summary`) of any model config. ``--help`` gives Hydra's help: the config
groups; the overrides are training's.
"""

from __future__ import annotations

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from alexnet_gtsrb.models.layer_summary import SummaryRow, format_summary, summary_rows
from alexnet_gtsrb.utils.cli import CONFIG_PATH, exit_on_user_error

__all__ = ["SummaryRow", "summary_rows", "format_summary", "main"]


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="summary")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """``python -m alexnet_gtsrb.models.summary [hydra overrides]``: the table for any model config.

    ``conf/summary.yaml`` composes the training config, so the overrides are training's, e.g.
    ``model=alexnet_seed data.image_size=150 data.num_classes=10``. Nothing is written to disk.
    """
    net = instantiate(cfg.model.net)
    spec = " ".join(f"{k}={v}" for k, v in cfg.model.net.items() if k != "_target_")
    print(format_summary(summary_rows(net, int(cfg.model.net.image_size)), title=f"AlexNet {spec}"))


if __name__ == "__main__":
    main()
