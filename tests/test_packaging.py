"""Packaging: the wheel ships the configs and works outside the checkout; a missing optional extra says which.

The slow test builds the wheel (offline, ``--no-build-isolation``), installs it with ``--no-deps`` into a fresh
virtual environment and runs the entry points from a folder that is not the checkout. The heavy dependencies
(torch, Lightning, ...) are not reinstalled: a ``.pth`` file in the new environment lists this environment's
site-packages. A path line in a ``.pth`` file is only appended to ``sys.path`` (the ``.pth`` files in that folder,
such as an editable install's finder, are not run), so the wheel's own ``alexnet_gtsrb`` is the one imported.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from alexnet_gtsrb.errors import UserError
from alexnet_gtsrb.utils import optional_deps
from alexnet_gtsrb.utils.optional_deps import require_extra, require_extras_for_overrides
from tests.helpers import CONF, ROOT, tiny_overrides

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PACKAGE = ROOT / "alexnet_gtsrb"
#: What `pip install .` reads from a checkout (tests, docs, notebooks, logs are not part of the wheel).
SOURCES = ("pyproject.toml", "README.md", "alexnet_gtsrb", "hydra_plugins", "conf")
FEW_BATCHES = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _shipped_yamls() -> set[str]:
    """The wheel paths of conf/'s YAML files: all of them but the machine-specific, gitignored conf/local/."""
    return {
        f"alexnet_gtsrb/conf/{p.relative_to(CONF).as_posix()}"
        for p in CONF.rglob("*.yaml")
        if p.relative_to(CONF).parts[0] != "local"
    }


def _clean_env() -> dict[str, str]:
    """This environment without anything that would put the checkout on ``sys.path``."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}


def _run(cmd: list, cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env or _clean_env(), capture_output=True, text=True, timeout=timeout
    )


# -- fast: the package list, the extras messages ------------------------------------------------------------
def test_package_list_names_every_package_on_disk():
    """``[tool.setuptools] packages`` is explicit (conf/ is mapped into the package): no folder of code missed."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(d.relative_to(ROOT).parts)
        for d in [PACKAGE, *PACKAGE.rglob("*"), *(ROOT / "hydra_plugins").rglob("*")]
        if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))
    }
    assert listed == on_disk | {"alexnet_gtsrb.conf"}
    assert not (ROOT / "hydra_plugins" / "__init__.py").exists()  # a namespace package other plugins share
    assert _pyproject()["tool"]["setuptools"]["package-dir"] == {"alexnet_gtsrb.conf": "conf"}


def test_dev_extra_includes_every_optional_extra():
    extras = _pyproject()["project"]["optional-dependencies"]
    optional = set(extras) - {"dev"}
    assert {"hpo", "slurm", "export", "mlflow"} <= optional
    (own,) = [r for r in extras["dev"] if r.startswith("alexnet_gtsrb[")]
    assert set(own.removeprefix("alexnet_gtsrb[").removesuffix("]").split(",")) == optional


def test_require_extra_names_the_extra_and_the_real_missing_module(tmp_path, monkeypatch):
    with pytest.raises(UserError) as info:
        require_extra("alexnet_gtsrb_no_such_module", "hpo", "hparams_search=optuna")
    assert str(info.value) == "hparams_search=optuna needs the optional 'hpo' extra: pip install 'alexnet_gtsrb[hpo]'"
    assert info.value.exit_code == 2
    # installed but broken (one of its own imports is missing): the message names the module really missing
    (tmp_path / "half_installed_extra.py").write_text("import alexnet_gtsrb_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r"'export' extra: .*No module named 'alexnet_gtsrb_missing_dependency'"):
        require_extra("half_installed_extra", "export", "format=onnx")


def test_overrides_that_need_an_extra_are_found(monkeypatch):
    monkeypatch.setitem(optional_deps.CHOICE_EXTRAS, ("group", "opt"), [("alexnet_gtsrb_no_such_module", "x")])
    require_extras_for_overrides(["-m", "group=other", "experiment=demo", "opt=group", "--cfg", "job"])
    for override in ("group=opt", "+group=opt", "++group=opt", "group=other,opt"):
        with pytest.raises(UserError, match=r"^group=opt needs the optional 'x' extra"):
            require_extras_for_overrides(["-m", override])


MISSING = {
    "hpo": (
        "train",
        ["optuna"],
        ["-m", "hparams_search=optuna", "experiment=demo"],
        "error: hparams_search=optuna needs the optional 'hpo' extra: pip install 'alexnet_gtsrb[hpo]'",
    ),
    "slurm": (
        "train",
        ["hydra_plugins.hydra_submitit_launcher"],
        ["-m", "cluster=slurm", "trainer=ddp"],
        "error: cluster=slurm needs the optional 'slurm' extra: pip install 'alexnet_gtsrb[slurm]'",
    ),
    "export": (
        "export",
        ["onnx", "onnxruntime"],
        ["ckpt_path=never-read.ckpt", "format=onnx"],
        "error: format=onnx needs the optional 'export' extra: pip install 'alexnet_gtsrb[export]'",
    ),
}

#: ``python -c``: make the BLOCKED modules unimportable, as if the extra were not installed (a ``None`` entry in
#: ``sys.modules``: ``import`` raises ModuleNotFoundError, ``importlib.util.find_spec`` returns None), then run
#: the entry point.
BLOCKING_RUNNER = textwrap.dedent(
    """
    import runpy, sys

    sys.modules.update(dict.fromkeys({blocked!r}))
    sys.argv = ["alexnet_gtsrb.{module}", *{args!r}]
    runpy.run_module("alexnet_gtsrb.{module}", run_name="__main__", alter_sys=True)
    """
)


@pytest.mark.parametrize("extra", ["hpo", "slurm"])
def test_train_checks_the_extra_before_hydra_composes(extra, monkeypatch, capsys):
    """In-process: ``main`` stops with the one line (exit 2) before Hydra is called."""
    from alexnet_gtsrb import train

    _, blocked, args, expected = MISSING[extra]
    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    monkeypatch.setattr(sys, "argv", ["alexnet-gtsrb-train", *args])
    monkeypatch.setattr(train, "hydra_main", lambda: pytest.fail("Hydra ran"))
    with pytest.raises(SystemExit) as info:
        train.main()
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == expected


@pytest.mark.slow
@pytest.mark.parametrize("extra", ["hpo", "export"])
def test_missing_extra_is_one_line_naming_it(extra, tmp_path):
    """End to end (``python -m``, a subprocess): train's check, and export's inside Hydra's run."""
    module, blocked, args, expected = MISSING[extra]
    folders = [f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"]
    code = BLOCKING_RUNNER.format(blocked=blocked, module=module, args=[*args, *folders])
    proc = _run([sys.executable, "-c", code], cwd=ROOT, timeout=300)  # cwd: this checkout's package first
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines and lines[-1] == expected, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count(expected) == 1
    if module == "train":  # the check runs before Hydra composes or makes a folder
        assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


# -- slow: build the wheel, install it elsewhere, run it from elsewhere --------------------------------------
@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """The wheel built from a copy of the checkout's sources, installed with --no-deps into a fresh venv."""
    base = tmp_path_factory.mktemp("packaging")
    src = base / "src"  # a copy: the in-tree build (build/, *.egg-info) stays out of the checkout
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    wheels = base / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels]
    proc = _run(build, cwd=base)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = wheels.glob("alexnet_gtsrb-*.whl")

    venv = base / "venv"
    proc = _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / ("python.exe" if os.name == "nt" else "python")
    install = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel]
    proc = _run(install, cwd=base)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # after the install (pip would otherwise see this environment's alexnet_gtsrb too): the dependencies
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base)
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib.stdout.strip()) / "_dependencies.pth").write_text("\n".join(deps) + "\n")
    work = base / "work"  # not the checkout: nothing of it on sys.path
    work.mkdir()
    return {"wheel": wheel, "venv": venv, "python": python, "bin": bin_dir, "work": work}


@pytest.mark.slow
def test_wheel_ships_the_code_and_every_config(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    assert "alexnet_gtsrb/conf/train.yaml" in names
    assert {n for n in names if n.startswith("alexnet_gtsrb/conf/")} == _shipped_yamls()
    code = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert code <= names


@pytest.mark.slow
def test_installed_package_and_console_scripts_resolve(installed):
    """The wheel's package (not the checkout's) is imported, reads its own conf/, and every script loads."""
    probe = textwrap.dedent(
        """
        import importlib.metadata as md
        import alexnet_gtsrb
        from alexnet_gtsrb.utils.cli import CONFIG_PATH
        dist = md.distribution("alexnet_gtsrb")
        scripts = sorted(ep.name for ep in dist.entry_points if ep.group == "console_scripts")
        for ep in dist.entry_points:
            assert callable(ep.load()), ep
        print(alexnet_gtsrb.__file__)
        print(CONFIG_PATH)
        print(dist.locate_file(""))
        print(" ".join(scripts))
        """
    )
    proc = _run([installed["python"], "-c", probe], cwd=installed["work"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    package_file, config_path, dist_dir, scripts = proc.stdout.strip().splitlines()[-4:]
    venv = installed["venv"].resolve()
    for path in (package_file, config_path, dist_dir):
        assert Path(path).resolve().is_relative_to(venv), (path, venv)
    assert Path(config_path).name == "conf" and Path(config_path).parent.name == "alexnet_gtsrb"
    assert scripts.split() == sorted(_pyproject()["project"]["scripts"])
    for name in scripts.split():
        assert (installed["bin"] / name).is_file() or (installed["bin"] / f"{name}.exe").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["python -m", "console script"])
def test_demo_trains_outside_the_checkout(installed, synthetic_root, tmp_path, how):
    run_dir = tmp_path / "run"
    args = [*tiny_overrides(synthetic_root), *FEW_BATCHES, f"hydra.run.dir={run_dir}"]
    if how == "python -m":
        cmd = [installed["python"], "-m", "alexnet_gtsrb.train", *args]
    else:
        cmd = [installed["bin"] / "alexnet-gtsrb-train", *args]
    proc = _run(cmd, cwd=installed["work"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (run_dir / "metrics.json").is_file()


@pytest.mark.slow
def test_argparse_console_scripts_and_exit_codes(installed, tmp_path):
    for name in ("alexnet-gtsrb-download", "alexnet-gtsrb-report"):
        proc = _run([installed["bin"] / name, "--help"], cwd=installed["work"])
        assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-3000:]
    # download's main returns its exit code: the console script passes it on (1: the archive cannot be fetched)
    offline = ["--root", tmp_path / "dl", "--only", "test", "--mirror", (tmp_path / "none").as_uri() + "/"]
    proc = _run([installed["bin"] / "alexnet-gtsrb-download", *offline, "--no-progress", "--timeout", "5"], tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().startswith("error: ")
