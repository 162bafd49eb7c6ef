"""Extension from outside the package: the toy preset and toy network of docs/extending.md, its two files and
its two commands read from the page, trained for two batches and evaluated, without touching the package."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from tests.helpers import ROOT, run_in_process, tiny_overrides

PAGE = ROOT / "docs" / "extending.md"
FENCE = re.compile(r'^```(\w+)(?: title="([^"]+)")?\n(.*?)^```', re.S | re.M)


def page_blocks() -> tuple[dict[str, str], list[str]]:
    """docs/extending.md's files ({path under lab/: text}) and its commands (``python -m ...`` lines)."""
    files, commands = {}, []
    for lang, title, body in FENCE.findall(PAGE.read_text()):
        if title:
            files[title.removeprefix("lab/")] = body
        elif lang == "bash":
            commands += [line for line in body.splitlines() if "python -m alexnet_gtsrb" in line]
    return files, commands


def test_the_page_shows_two_files_and_a_train_and_evaluate_command():
    files, commands = page_blocks()
    assert sorted(files) == ["conf/model/tiny.yaml", "toy_ext.py"]  # the whole extension: two files
    assert [shlex.split(c)[3] for c in commands] == ["alexnet_gtsrb.train", "alexnet_gtsrb.evaluate"]


@pytest.mark.slow
def test_a_preset_and_a_network_from_outside_the_package_train_and_evaluate(tmp_path, synthetic_root, monkeypatch):
    user = tmp_path / "lab"
    files, (train_cmd, eval_cmd) = page_blocks()
    for name, text in files.items():
        (user / name).parent.mkdir(parents=True, exist_ok=True)
        (user / name).write_text(text)
    monkeypatch.syspath_prepend(str(user))  # the page's PYTHONPATH=.
    run_dir = tmp_path / "run"
    shrink = [o for o in tiny_overrides(synthetic_root)[1:] if not o.startswith("data.image_size")]  # the page's 32
    shrink += ["trainer.max_epochs=1", "trainer.limit_train_batches=2"]
    shrink += ["trainer.limit_val_batches=1", "callbacks.layer_summary=null"]
    train = run_in_process("train", [*shlex.split(train_cmd)[4:], *shrink, f"hydra.run.dir={run_dir}"], cwd=user)
    assert train.returncode == 0, train.stderr[-3000:]
    run = json.loads((run_dir / "metrics.json").read_text())
    assert "test/acc" in run["metrics"] and run["test_checkpoint"].endswith("last.ckpt")

    args = [a.replace("logs/demo/runs/<time>", str(run_dir)) for a in shlex.split(eval_cmd)[4:]]
    data = f"data.data_dir={synthetic_root}"
    evaluate = run_in_process("evaluate", [*args, data, f"hydra.run.dir={tmp_path / 'eval'}"], cwd=user)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["settings"]["augment"]["preset"] == "toy_grey" and report["settings"]["image_size"] == 32
    assert report["num_images"] == report["test_set"]["images"] > 0  # every test image went through the toy pair

    # The checkpoint names toy_ext.TinyNet: without extensions= the allowlist does not know it, and nothing is
    # imported because a checkpoint names it.
    monkeypatch.setattr("alexnet_gtsrb.allowlist.NETWORKS", {"alexnet_gtsrb.models.alexnet.AlexNet"})
    refused = run_in_process("evaluate", [f"ckpt_path={run_dir}", data, f"hydra.run.dir={tmp_path / 'eval2'}"])
    assert refused.returncode == 2 and "toy_ext.TinyNet" in refused.stderr and "may not be built" in refused.stderr


def test_extensions_names_modules_only(tmp_path):
    """A path, a non-list or a missing module is one line naming the value."""
    from alexnet_gtsrb.errors import ConfigError
    from alexnet_gtsrb.extensions import load_extensions

    for bad, words in (
        ("toy_ext", "must be a list"),
        (["../evil.py"], "is not a module name"),
        (["no_such_module_xyz"], "no module named 'no_such_module_xyz'"),
    ):
        with pytest.raises(ConfigError, match=words):
            load_extensions(bad)


def test_a_preset_name_cannot_be_taken_twice():
    from alexnet_gtsrb.errors import ConfigError
    from alexnet_gtsrb.extensions import Preset, register_preset

    with pytest.raises(ConfigError, match="registered already"):
        register_preset(Preset("gtsrb", train=lambda s, p: [], evaluate=lambda s, p: []))
