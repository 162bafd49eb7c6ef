"""``--help``, ``--version`` and shell completion (Hydra's, from the tool's config), answered at the top of each entry
point before torch and Lightning are imported (several seconds; a help page or a Tab completion should take one)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HELP_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc")


def config_dir() -> Path:
    """The folder holding ``train.yaml``: the copy shipped inside the installed package (a wheel), else the
    top-level ``conf/`` of a source checkout (``pip install -e .``)."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(f"alexnet_gtsrb's configs are missing: neither {package / 'conf'} nor {package.parent / 'conf'}")


def answer_early(config_name: str, script: str, is_main: bool) -> None:
    """When the module is the program (``python -m alexnet_gtsrb.<tool>`` or the ``alexnet-gtsrb-<tool>`` script)
    and the command line asks only for it: print the version, or Hydra's help / completion for ``config_name``,
    and exit 0; return otherwise (also when the module is only imported)."""
    from importlib.metadata import PackageNotFoundError, version

    args = sys.argv[1:]
    if not (is_main or Path(sys.argv[0]).name == script) or os.environ.get("ALEXNET_GTSRB_NO_EARLY_HELP"):
        return
    if "--version" in args:
        try:
            installed = version("alexnet_gtsrb")
        except PackageNotFoundError:
            installed = "unknown (not installed: pip install -e .)"
        print(f"{script} (alexnet_gtsrb {installed})")
        sys.exit(0)
    if not any(a in HELP_FLAGS or a.startswith("--shell-completion") for a in args):
        return
    import hydra
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def _no_task(cfg: DictConfig) -> None:  # help and completion never run the task
        return None

    _no_task()
    sys.exit(0)
