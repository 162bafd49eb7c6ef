"""`--help` and `--version` of the Hydra entry points: answered by alexnet_gtsrb/utils/early.py before torch and
Lightning are imported (those imports are most of a start-up here), with the tool's own help template."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

TOOLS = {  # module -> (console script, words its help must show)
    "train": ("alexnet-gtsrb-train", ["experiment=demo", "ckpt_path=last", "== Configuration groups", "experiment:"]),
    "evaluate": ("alexnet-gtsrb-evaluate", ["ckpt_path", "test_views=10", "data.data_dir"]),
    "predict": ("alexnet-gtsrb-predict", ["images=[a.ppm,b.png]", "top_k", "calibration"]),
    "export": ("alexnet-gtsrb-export", ["format=onnx", "format=torchscript"]),
    "robustness": ("alexnet-gtsrb-robustness", ["suites=[calibration]", "adversarial.epsilons"]),
}
HEAVY = ("torch", "lightning", "torchvision", "numpy")


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -X importtime -m alexnet_gtsrb.<module> ARGS``: stderr lists every module the process imported."""
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", f"alexnet_gtsrb.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _imported(stderr: str) -> set[str]:
    return {
        line.split("|")[-1].strip().split(".")[0] for line in stderr.splitlines() if line.startswith("import time:")
    }


@pytest.mark.slow
@pytest.mark.parametrize("module", TOOLS)
def test_help_describes_the_tool_with_examples_and_imports_no_torch(module):
    script, words = TOOLS[module]
    proc = _run(module, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.startswith(f"{script} (python -m alexnet_gtsrb.{module})") and "Examples:" in out and "Main keys" in out
    assert all(w in out for w in words), [w for w in words if w not in out]
    assert "== Config ==" not in out and len(out.splitlines()) < 45  # a page, not the 200-line config
    if module != "train":  # training-only groups are not offered to the tools that read a checkpoint
        assert "optimizer:" not in out and "scheduler:" not in out
    heavy = set(HEAVY) & _imported(proc.stderr)
    assert not heavy, f"--help imported {heavy}"


@pytest.mark.slow
def test_version_and_completion_answer_early():
    proc = _run("export", "--version")
    assert proc.returncode == 0 and proc.stdout.startswith("alexnet-gtsrb-export (alexnet_gtsrb ")
    assert not set(HEAVY) & _imported(proc.stderr)
    proc = _run("train", "-sc", "install=bash")
    assert proc.returncode == 0 and "hydra_bash_completion" in proc.stdout
    assert not set(HEAVY) & _imported(proc.stderr)


def test_an_imported_entry_module_does_not_answer(monkeypatch):
    """Importing an entry point (a test, a notebook) with --help on the command line runs nothing early."""
    from alexnet_gtsrb.utils.early import answer_early

    monkeypatch.setattr(sys, "argv", ["pytest", "--help"])
    answer_early("train", "alexnet-gtsrb-train", is_main=False)  # returns instead of exiting
