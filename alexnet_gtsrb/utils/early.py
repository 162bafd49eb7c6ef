"""Answers that need no model: ``--help``, ``--version`` and shell completion, given before torch and Lightning are
imported (together several seconds; a help page or a Tab completion should come in about one).

An entry point calls :func:`answer_early` at the top of its module, before its heavy imports. When the module
is the program (``python -m alexnet_gtsrb.<tool>`` or the ``alexnet-gtsrb-<tool>`` console script) and the
command line asks only for help, the version or completion, it answers and exits; otherwise it returns at once.
Help and completion are Hydra's own, composed from the tool's config (its ``hydra.help.template``).
"""

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


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("alexnet_gtsrb")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _is_program(script: str, is_main: bool) -> bool:
    return is_main or Path(sys.argv[0]).name == script


def answer_early(config_name: str, script: str, is_main: bool, argv: list[str] | None = None) -> None:
    """Print the version, or Hydra's help / completion / composed config for ``config_name``, and exit 0, when
    that is all the command line asks for; return otherwise (also when the module is only imported)."""
    args = sys.argv[1:] if argv is None else argv
    if not _is_program(script, is_main) or os.environ.get("ALEXNET_GTSRB_NO_EARLY_HELP"):
        return
    if "--version" in args:
        print(f"{script} (alexnet_gtsrb {version()})")
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
