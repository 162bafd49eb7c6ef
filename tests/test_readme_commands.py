"""Every command README.md and the docs pages show in a code block (and conf/**/*.yaml in its header comment), run.

A documented command once crashed because it was only ever tested with another experiment. This module reads
README.md, every docs/**/*.md page and the configs' header comments at test time, collects every ``python -m
alexnet_gtsrb...``, ``alexnet-gtsrb-*`` and ``make ...`` command, and runs each one as a subprocess, exactly as
documented (its experiment and all of its own overrides) but shrunk to seconds:

- training (and bench): one epoch of one batch of 4 images, no workers, outputs in a temporary folder; a
  command that names no data runs on the tiny synthetic tree, one that names ``../shared/gtsrb``,
  ``$GTSRB_ROOT`` or a ``/path/to/data`` placeholder on the real tree; a sweep runs in a temporary sweep
  folder (two trials for Optuna);
- placeholders (``<run folder>``, ``logs/<task>/runs/<time>``, ``ckpt_path=...``, ``path/to/any.ckpt``) are
  filled from the session's tiny run (``tiny_run`` in conftest.py); a resumed run keeps that run's image
  size, batch and batches per epoch, so its checkpoint and schedule fit as they would for a user;
- every command must exit 0, except those in EXPECTED_ERRORS (documented as failing, with their message);
  those that cannot run here are in NOT_RUN with the reason. A command that is neither run nor explained
  fails, and so does a NOT_RUN/EXPECTED_ERRORS entry that matches no documented command.

The commands run two at a time (README_COMMANDS_JOBS) in the background, one pytest case each, so that a
failure names its command and line. The parser and the bookkeeping checks are fast (not marked slow).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import CONF, ROOT, fake_imagenet_weights, run_in_process

# -- what is not run, and what is documented to fail -----------------------------------------------------------
# {regex searched in the command as shown: reason}. Each must match at least one documented command.
NOT_RUN = {
    r"\bcluster=slurm\b": "SLURM: submitit submits the job to a cluster this machine does not have "
    "(tests/test_hparams_search.py checks that it composes and that the launcher matches the trainer)",
    r"\btrainer=gpu\b": "trainer=gpu needs a CUDA GPU",
    r"\bexperiment=gpu\b": "experiment=gpu trains with trainer=gpu (bf16-mixed on a CUDA GPU); its CPU-possible "
    "parts run in tests/test_bench.py::test_gpu_check_runs_its_cpu_parts",
    r"^make gpu-check\b": "measures a GPU; tests/test_bench.py::test_gpu_check_runs_its_cpu_parts runs the same make "
    "target with the CPU standing in (trainer=cpu, fp32, ceiling + e2e)",
    r"\bextensions=\[toy_ext\]": "the toy extension of docs/extending.md: tests/test_extending.py writes the two "
    "files the page shows and runs these commands, shrunk",
    r"^make test\b": "make test runs this suite (ruff, mypy and pytest on tests/, this file included)",
    # When the README shows the downloader in a code block:
    # r"alexnet_gtsrb\.data\.download\b": "needs the official server; tests/test_download.py::"
    # "test_cli_with_md5_overrides runs the same command line (--root DIR --mirror URL) against a local server",
}
# {regex: (exit status, text on stderr)}: commands the README shows failing, with their message.
EXPECTED_ERRORS = {
    r"\bdata\.data_dir=/nonexistent\b": (2, "error: GTSRB data not found: /nonexistent does not exist"),
}

# -- collecting the commands -------------------------------------------------------------------------------------
COMMAND = re.compile(r"^(python -m alexnet_gtsrb\b|alexnet-gtsrb-|make\b)")
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "2>&1", "&"}
DATA, CKPT, RUN = "@DATA@", "@CKPT@", "@RUN@"  # placeholders, filled per run
JOBS = int(os.environ.get("README_COMMANDS_JOBS", "2"))  # commands run side by side (one per core here)


@dataclass(frozen=True)
class DocCommand:
    argv: tuple[str, ...]  # as documented: shell-split, prompt, comments and optional [...] parts removed
    env: tuple[tuple[str, str], ...] = ()  # `export NAME=VALUE` earlier in the same code block, or `NAME=VALUE cmd`
    where: str = ""  # README.md:LINE, docs/PAGE.md:LINE or conf/...yaml:LINE
    cwd: str = ""  # `cd DIR` earlier in the same code block

    @property
    def text(self) -> str:
        env = "".join(f"{k}={v} " for k, v in self.env)
        return f"{'cd ' + self.cwd + ' && ' if self.cwd else ''}{env}{shlex.join(self.argv)}"


def shell_commands(lines: list[tuple[int, str]], where: str) -> list[DocCommand]:
    """The commands in one code block's (line number, text) pairs, read as a shell would: continuations joined,
    `# comments` and quotes removed, `export NAME=VALUE` and `cd DIR` kept for the commands after them,
    `a && b` split. In a block with `$ ` prompts only the prompted lines are commands (the rest is output)."""
    joined: list[tuple[int, str]] = []
    for number, line in lines:
        if joined and joined[-1][1].endswith("\\"):
            joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + line.strip())
        else:
            joined.append((number, line.strip()))
    prompts = any(line.startswith("$ ") for _, line in joined)
    commands, env, cwd = [], {}, ""
    for number, line in joined:
        if prompts and not line.startswith("$ "):
            continue
        line = re.sub(r"<[^<>]*>", lambda m: m.group(0).replace(" ", "_"), line.removeprefix("$ "))  # <run folder>
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # unbalanced quotes: prose, not a command
            continue
        while words:
            cut = next((i for i, w in enumerate(words) if w in SHELL_OPERATORS), len(words))
            segment, words = words[:cut], (words[cut + 1 :] if words[cut : cut + 1] in (["&&"], [";"]) else [])
            own_env = {}
            while segment and re.fullmatch(r"[A-Za-z_]\w*=.*", segment[0]):  # NAME=VALUE cmd
                own_env.update([segment.pop(0).split("=", 1)])
            if segment[:1] == ["cd"]:
                cwd = segment[1] if len(segment) > 1 else "~"
            elif segment[:1] == ["export"]:
                env.update(w.split("=", 1) for w in segment[1:] if "=" in w)
            elif segment and COMMAND.match(" ".join(segment)):
                for argv in variants(segment):
                    commands.append(
                        DocCommand(tuple(argv), tuple({**env, **own_env}.items()), f"{where}:{number}", cwd)
                    )
    return commands


def variants(words: list[str]) -> list[list[str]]:
    """Drop optional `[key=value]` parts of a synopsis; one command per alternative of `key=a|b`."""
    kept, optional = [], False
    for word in words:  # a Hydra list is key=[...]; a word that starts with "[" opens an optional part
        if optional or word.startswith("["):
            optional = not word.endswith("]")
        else:
            kept.append(word)
    out: list[list[str]] = [[]]
    for word in kept:
        key, eq, value = word.partition("=")
        choices = value.split("|") if eq and "|" in value else [value]
        out = [[*argv, f"{key}={choice}" if eq else word] for argv in out for choice in choices]
    return out


def markdown_commands(text: str, name: str = "README.md") -> list[DocCommand]:
    """Commands in the fenced code blocks of a Markdown text."""
    commands, block, fence = [], [], None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        if fence is None and stripped.startswith(("```", "~~~")):
            fence, block = stripped[:3], []
        elif fence is not None and stripped.startswith(fence):
            commands += shell_commands(block, name)
            fence = None
        elif fence is not None:
            block.append((number, line))
    return commands


def yaml_header_commands(text: str, name: str) -> list[DocCommand]:
    """Commands in a config's header comment: in backticks, or from `python -m` to the end of the line."""
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.startswith("#"):
            break
        comment = line.lstrip("#").strip()
        # a span with no arguments (`python -m alexnet_gtsrb.report` in a sentence) names a tool, it is no command
        spans = [s for s in re.findall(r"`([^`]+)`", comment) if COMMAND.match(s) and len(s.split()) > 3]
        found = re.search(r"(python -m alexnet_gtsrb\b|alexnet-gtsrb-)\S*.*$", re.sub(r"`[^`]*`", "", comment))
        lines += [(number, s) for s in spans] or ([(number, found.group(0))] if found else [])
    return shell_commands(lines, name)


def fill_placeholders(command: DocCommand) -> tuple[DocCommand, list[str]]:
    """The command with data folders, checkpoints and run folders as DATA/CKPT/RUN; and what is unknown."""
    unknown: list[str] = []

    def fill(key: str, value: str) -> str:
        data_value = value in ("$GTSRB_ROOT", "${GTSRB_ROOT}") or value.rstrip("/") == "../shared/gtsrb"
        placeholder = bool(re.search(r"<[^>]*>|\.\.\.|path/to/|^[A-Z]+$", value))
        if key in ("data.data_dir", "--root", "GTSRB_ROOT") and (data_value or placeholder):
            return DATA
        if key == "ckpt_path" and placeholder:
            return CKPT if value.endswith(".ckpt") or value in ("...", "PATH") or "path/to/" in value else RUN
        if key in ("hydra.run.dir", "") and placeholder:
            return RUN
        if key == "committee" and placeholder:  # committee=[<run folder>]: the tiny run again
            return f"[{RUN}]"
        if placeholder or "$" in value:
            unknown.append(f"{key}={value}" if key else value)
        return value

    argv, previous = [], ""
    for word in command.argv:
        key, eq, value = word.partition("=")
        if not eq or word.startswith("-") or not re.fullmatch(r"[+~]*[\w.\-/@]+", key):
            key, value = ("--root", word) if previous == "--root" else ("", word)
            argv.append(fill(key, value))
        else:
            argv.append(f"{key}={fill(key.lstrip('+~'), value)}")
        previous = word
    env = tuple((k, fill(k, v)) for k, v in command.env)
    return DocCommand(tuple(argv), env, command.where, command.cwd), unknown


def documentation_pages() -> list[Path]:
    """README.md, then every Markdown page of the documentation site (docs/**/*.md), in path order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def documented_commands() -> list[tuple[DocCommand, DocCommand, list[str]]]:
    """(as documented, placeholders filled, unknown placeholders) for README.md, the docs pages, then
    conf/**/*.yaml; the first of the commands that are the same once filled."""
    found = []
    for page in documentation_pages():
        found += markdown_commands(page.read_text(), str(page.relative_to(ROOT)))
    for path in sorted(CONF.rglob("*.yaml")):
        found += yaml_header_commands(path.read_text(), str(path.relative_to(ROOT)))
    seen: dict[tuple, tuple[DocCommand, DocCommand, list[str]]] = {}
    for command in found:
        filled, unknown = fill_placeholders(command)
        env = dict(filled.env)
        if "GTSRB_ROOT" in env and not any(w.startswith("data.data_dir=") for w in filled.argv):
            same = (*filled.argv, f"data.data_dir={env.pop('GTSRB_ROOT')}")  # what data.data_dir defaults to
        else:
            same = filled.argv
        seen.setdefault((same, tuple(env.items()), filled.cwd), (command, filled, unknown))
    return list(seen.values())


def matching(table: dict, command: DocCommand):
    return next((value for pattern, value in table.items() if re.search(pattern, shlex.join(command.argv))), None)


# -- shrinking and running -------------------------------------------------------------------------------------
TRAIN_LIMITS = {
    "trainer.max_epochs": "1",
    "trainer.limit_train_batches": "1",
    "trainer.limit_val_batches": "1",
    "trainer.limit_test_batches": "1",
    "trainer.num_sanity_val_steps": "0",
    "data.num_workers": "0",
    "data.batch_size": "4",
}
BENCH_LIMITS = {
    "bench.steps": "1",
    "bench.warmup": "0",
    "bench.e2e_warmup": "1",
    "bench.items": "20",
    "bench.memory_records": "12",
    "bench.lrn_batch": "4",
    "bench.precision_batch": "2",
    "data.num_workers": "0",
    "data.batch_size": "4",
}


RUNNABLE = {"train", "make demo", "bench", "models.summary", "evaluate", "predict", "export", "report", "robustness"}
# robustness keeps its suites but runs them on 8 test images with 2 PGD steps
ROBUSTNESS_LIMITS = {"max_images": "8", "adversarial.pgd_steps": "2", "data.num_workers": "0"}


def entry_point(argv: tuple[str, ...]) -> str:
    """`train`, `evaluate`, `models.summary`, ... or `make demo`: what a command runs."""
    if argv[0] == "make":
        return " ".join(["make", *[w for w in argv[1:] if "=" not in w][:1]])
    if argv[0].startswith("alexnet-gtsrb-"):
        scripts = console_scripts()
        if argv[0] not in scripts:
            raise AssertionError(f"{argv[0]} is not a console script of pyproject.toml ([project.scripts])")
        return scripts[argv[0]]
    return argv[2].removeprefix("alexnet_gtsrb.")


def console_scripts() -> dict[str, str]:
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})
    return {
        name: target.split(":")[0].removeprefix("alexnet_gtsrb.").removesuffix(".__main__")
        for name, target in scripts.items()
    }


def with_values(args: list[str], values: dict[str, str], keep_sweeps: bool = True) -> list[str]:
    """args with each key of values set to that value (replacing the command's own, unless it sweeps)."""
    own = {w.partition("=")[0].lstrip("+~"): w for w in args if "=" in w}
    replaced = {k for k in values if k in own and not (keep_sweeps and "," in own[k].partition("=")[2])}
    kept = [w for w in args if w.partition("=")[0].lstrip("+~") not in replaced]
    return kept + [f"{k}={v}" for k, v in values.items() if k not in own or k in replaced]


def has_key(args: list[str], key: str) -> bool:
    return any(w.partition("=")[0].lstrip("+~") == key for w in args)


def tiny_run_copy(tiny_run, dst: Path) -> Path:
    """A private copy of the tiny run folder (checkpoints hard-linked: they are only ever replaced whole)."""

    def link_or_copy(src: str, target: str) -> None:
        try:
            if src.endswith(".ckpt"):
                return os.link(src, target)
        except OSError:  # another file system
            pass
        shutil.copy2(src, target)

    shutil.copytree(tiny_run.dir, dst, copy_function=link_or_copy)
    return dst


def resume_settings(ckpt: Path, sets_max_epochs: bool) -> dict[str, str]:
    """The tiny run's image size, batch and batches per epoch, so that a resumed run fits its checkpoint and its
    schedule as it would for a user; one more epoch when the command asks for more epochs, else the same."""
    import torch

    raw = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    epochs, data = raw["epoch"] + 1, raw["datamodule_hyper_parameters"]
    return {
        "data.image_size": str(data["image_size"]),
        "data.batch_size": str(data["batch_size"]),
        "trainer.limit_train_batches": str(raw["global_step"] // epochs),
        "trainer.max_epochs": str(epochs + 1 if sets_max_epochs else epochs),
    }


def make_images(value: str, src: Path, out: Path) -> str:
    """images=[a.ppm,b.png] or images=folder: the named example files, made from synthetic test images."""
    import cv2

    names = value.strip("[]").split(",")
    sources = sorted(src.rglob("*.ppm"))
    made = []
    for i, name in enumerate(names):
        path = out / name
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), cv2.imread(str(sources[i % len(sources)])))
        else:
            for j in range(3):
                path.mkdir(parents=True, exist_ok=True)
                shutil.copy(sources[j], path)
        made.append(str(path))
    return "[" + ",".join(made) + "]" if value.startswith("[") else made[0]


def build(command: DocCommand, ctx: dict, tmp: Path) -> tuple[list[str], dict[str, str], Path]:
    """The argv, environment and working folder that run a (placeholders filled) command, shrunk to seconds,
    its outputs in tmp. A `cd` out of the checkout (`cd /tmp`) goes to an empty folder of its own."""
    tool = entry_point(command.argv)
    if tool not in RUNNABLE:
        raise AssertionError(f"no way to run `{tool}` here: add it to build() or list the command in NOT_RUN")
    argv, env, cwd = list(command.argv), dict(command.env), ROOT / command.cwd
    if command.cwd.startswith(("/", "~", "..")):
        cwd = tmp / "cwd"
        cwd.mkdir()
    needs_run = RUN in " ".join(argv) or CKPT in " ".join(argv)
    run_dir = tiny_run_copy(ctx["tiny_run"], tmp / "tiny_run") if needs_run else None
    paths = {DATA: str(ctx.get("gtsrb_root")), RUN: str(run_dir), CKPT: f"{run_dir}/checkpoints/last.ckpt"}
    argv = [re.sub("|".join(paths), lambda m: paths[m.group(0)], w) for w in argv]
    env = {k: paths.get(v, v) for k, v in env.items()}
    env["ALEXNET_GTSRB_LOGS"] = str(tmp / "logs")  # nothing lands in the checkout's logs/
    synthetic = [f"data.data_dir={ctx['synthetic_root']}", "data.synthetic=null"]
    names_data = has_key(argv, "data.data_dir") or "GTSRB_ROOT" in env
    head, args = (argv[:3], argv[3:]) if argv[0] == "python" else (argv[:1], argv[1:])

    if tool in ("train", "make demo"):
        limits = dict(TRAIN_LIMITS)
        if "experiment=finetune_imagenet" in args:  # ImageNet weights: a test-written file where torchvision looks
            fake_imagenet_weights(tmp / "torch_home")
            env["TORCH_HOME"] = str(tmp / "torch_home")
        if has_key(args, "ckpt_path"):
            limits.update(resume_settings(Path(paths[CKPT]), has_key(args, "trainer.max_epochs")))
            names_data = False  # the tiny run's data
        if "-m" in args or "--multirun" in args:
            limits["hydra.sweep.dir"] = str(tmp / "sweep")
            if "hparams_search=optuna" in args:
                limits["hydra.sweeper.n_trials"] = "2"
        elif not has_key(args, "hydra.run.dir"):
            limits["hydra.run.dir"] = str(tmp / "run")
        args = with_values(args, limits) + ([] if names_data else synthetic)
        if tool == "make demo":  # the Makefile appends DEMO_ARGS; BIN: this interpreter; -o: no (re)install
            make_vars = [f"DEMO_ARGS={shlex.join(args[len(argv) - 1 :])}", f"BIN={Path(sys.executable).parent}"]
            return ["make", "-C", str(ROOT), "-o", ".venv/.installed", *argv[1:], *make_vars], env, cwd
    elif tool == "bench":
        limits = dict(BENCH_LIMITS)
        if has_key(args, "bench.out"):
            limits["bench.out"] = str(tmp / "bench.json")
        args = with_values(args, limits) + ([] if names_data else synthetic)
    elif tool in ("evaluate", "predict", "export", "robustness"):
        args = with_values(args, {"hydra.run.dir": str(tmp / "run")})
        if tool == "evaluate":
            args = with_values(args, {"data.num_workers": "0"}) + ([] if names_data else synthetic)
        if tool == "robustness":
            args = with_values(args, ROBUSTNESS_LIMITS) + ([] if names_data else synthetic)
        if tool == "predict":
            images = next(w for w in args if w.startswith("images="))
            made = make_images(images.partition("=")[2], Path(ctx["synthetic_root"]), tmp / "images")
            args[args.index(images)] = f"images={made}"
    elif tool == "report":
        positional = [i for i, w in enumerate(args) if not w.startswith("-")]
        if len(positional) > 1:  # the output folder (docs/results in the README): a temporary one
            args[positional[1]] = str(tmp / "report")
    if head[0] == "python":
        head = [sys.executable, *head[1:]]
    elif head[0].startswith("alexnet-gtsrb-"):
        head = [str(Path(sys.executable).parent / head[0])]
        if not Path(head[0]).is_file():
            raise AssertionError(f"console script {head[0]} is not installed: reinstall (pip install -e .)")
    return [*head, *args], env, cwd


# -- the tests -----------------------------------------------------------------------------------------------------
SAMPLE_MD = """
Text with `python -m alexnet_gtsrb.train experiment=inline` (prose is not collected).

```bash
export GTSRB_ROOT=/path/to/data          # the folder holding GTSRB/
python -m alexnet_gtsrb.train -m model=alexnet_bn data.data_dir=../shared/gtsrb \\
  data.split=track,random   # a sweep
python -m alexnet_gtsrb.bench model=alexnet_bn 'bench.sections=[ceiling]' "x=a b"
python -m alexnet_gtsrb.evaluate ckpt_path=logs/train/runs/<time>/checkpoints/last.ckpt data.data_dir=$GTSRB_ROOT
python -m alexnet_gtsrb.report logs/cpu_fast/runs/<time> docs/results   # curves
make demo   # creates .venv
.venv/bin/tensorboard --logdir logs
cd /tmp && alexnet-gtsrb-export ckpt_path=... format=onnx|torchscript
```

```
$ python -m alexnet_gtsrb.train experiment=demo ckpt_path=path/to/any.ckpt hydra.run.dir=logs/demo/runs/<time>
python -m alexnet_gtsrb.train this-is-output
$ python -m alexnet_gtsrb.report <run folder>    # the run above
error: not a command `python -m alexnet_gtsrb.train` it's output
```
"""


def test_parser_reads_continuations_comments_quotes_prompts_and_placeholders():
    commands = markdown_commands(SAMPLE_MD, "X.md")
    lines = [int(c.where.split(":")[1]) for c in commands]
    assert lines == [6, 8, 9, 10, 11, 13, 13, 17, 19], [c.text for c in commands]
    sweep, bench, evaluate, report, make, onnx, torchscript, resume, report_run = commands
    assert sweep.argv == (
        *("python", "-m", "alexnet_gtsrb.train", "-m", "model=alexnet_bn", "data.data_dir=../shared/gtsrb"),
        "data.split=track,random",
    )
    assert sweep.env == (("GTSRB_ROOT", "/path/to/data"),) and sweep.cwd == ""
    assert bench.argv[3:] == ("model=alexnet_bn", "bench.sections=[ceiling]", "x=a b")
    assert make.argv == ("make", "demo")
    assert (onnx.cwd, onnx.argv, torchscript.argv[-1]) == (
        "/tmp",
        ("alexnet-gtsrb-export", "ckpt_path=...", "format=onnx"),
        "format=torchscript",
    )
    filled = [fill_placeholders(c) for c in commands]
    assert all(not unknown for _, unknown in filled)
    assert filled[0][0].env == (("GTSRB_ROOT", DATA),)
    assert filled[0][0].argv[5] == f"data.data_dir={DATA}"
    assert filled[2][0].argv[3:] == (f"ckpt_path={CKPT}", f"data.data_dir={DATA}")
    assert filled[3][0].argv[3:] == (RUN, "docs/results")
    assert filled[5][0].argv[1:] == (f"ckpt_path={CKPT}", "format=onnx")
    assert filled[7][0].argv[4:] == (f"ckpt_path={CKPT}", f"hydra.run.dir={RUN}")
    assert filled[8][0].argv[3:] == (RUN,)
    assert fill_placeholders(DocCommand(("python", "-m", "alexnet_gtsrb.train", "x=<what>")))[1] == ["x=<what>"]


def test_yaml_header_synopsis_drops_optional_parts_and_expands_alternatives():
    text = (
        "# Evaluate: python -m alexnet_gtsrb.evaluate ckpt_path=PATH [data.data_dir=DIR] [key=value ...]\n"
        "# `python -m alexnet_gtsrb.export ckpt_path=PATH format=onnx|torchscript` exports\n"
        "defaults: []\n# python -m alexnet_gtsrb.train not in the header\n"
    )
    commands = [fill_placeholders(c)[0] for c in yaml_header_commands(text, "c.yaml")]
    assert [c.argv[2:] for c in commands] == [
        ("alexnet_gtsrb.evaluate", f"ckpt_path={CKPT}"),
        ("alexnet_gtsrb.export", f"ckpt_path={CKPT}", "format=onnx"),
        ("alexnet_gtsrb.export", f"ckpt_path={CKPT}", "format=torchscript"),
    ]
    assert variants(["p", "images=[a.ppm,b.png]", "x=[1]"]) == [["p", "images=[a.ppm,b.png]", "x=[1]"]]


COMMANDS = documented_commands()


def test_every_documented_command_is_run_or_explained_and_no_entry_is_stale():
    assert COMMANDS, "no command found in README.md or docs/"
    unexplained = []
    for command, filled, unknown in COMMANDS:
        if matching(NOT_RUN, command) is None:
            tool = entry_point(filled.argv)
            if tool not in RUNNABLE or unknown:
                problem = f"unknown placeholder(s) {unknown}" if unknown else f"no way to run `{tool}`"
                unexplained.append(f"{command.where}: {command.text}: {problem}")
    assert not unexplained, "run these (build(), fill_placeholders()) or list them in NOT_RUN:\n" + "\n".join(
        unexplained
    )
    for table in (NOT_RUN, EXPECTED_ERRORS):
        stale = [p for p in table if not any(re.search(p, shlex.join(c.argv)) for c, _, _ in COMMANDS)]
        assert not stale, f"entries that match no documented command (remove them): {stale}"


@pytest.fixture(scope="session")
def launched(request, synthetic_root):
    """Every selected command started in the background, JOBS at a time, in test order: {command: Future of
    (argv, CompletedProcess)}. The tiny run trains (in this process) while the commands before the first one
    that needs it run. Outputs go to /dev/shm where it has room: checkpoints are written whole and fsynced."""
    fast = Path("/dev/shm")
    use_shm = fast.is_dir() and os.access(fast, os.W_OK) and shutil.disk_usage(fast).free > 16 * 2**30
    out_root = Path(tempfile.mkdtemp(prefix="readme_commands_", dir=fast if use_shm else None))
    selected = [
        item.callspec.params
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_documented_command_runs"
    ]
    pool = ThreadPoolExecutor(max_workers=JOBS)
    futures: dict[DocCommand, Future] = {}
    ctx: dict = {"synthetic_root": synthetic_root}
    try:
        for number, params in enumerate(selected):
            command, filled = params["command"], params["filled"]
            if matching(NOT_RUN, command) or params["unknown"]:
                continue
            try:
                for name in fixtures_needed(filled):
                    ctx.setdefault(name, request.getfixturevalue(name))
            except pytest.skip.Exception as exc:  # no real data here: the case is skipped with the fixture's reason
                futures[command] = Future()
                futures[command].set_exception(exc)
                continue
            if in_process(filled):  # run by the test itself, in this process (see test_documented_command_runs)
                futures[command] = Future()
                futures[command].set_result((dict(ctx), out_root / f"{number:02d}"))
                continue
            futures[command] = pool.submit(run_one, filled, dict(ctx), out_root / f"{number:02d}")
        yield futures
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(out_root, ignore_errors=True)


def fixtures_needed(filled: DocCommand) -> list[str]:
    text = " ".join([*filled.argv, *(v for _, v in filled.env)])
    return sorted(
        {name for marker, name in ((RUN, "tiny_run"), (CKPT, "tiny_run"), (DATA, "gtsrb_root")) if marker in text}
    )


#: Hydra entry points a documented `python -m` command runs in this process (its overrides, environment and folder
#: as a subprocess would get them; tests.helpers.run_in_process restores the process afterwards): a fresh
#: interpreter costs ~7 s of CPU per command. Console scripts, `make`, DDP (Lightning starts the other ranks by
#: re-running the command) and cluster launches stay real processes; the wheel's console scripts and `python -m`
#: wiring are also run as processes in tests/test_packaging.py.
IN_PROCESS = {"train", "bench", "models.summary", "evaluate", "predict", "export", "report", "robustness"}


def in_process(filled: DocCommand) -> bool:
    text = " ".join(filled.argv)
    return (
        filled.argv[:2] == ("python", "-m")
        and not filled.cwd  # `cd /tmp && python -m ...` shows a run from outside the checkout: a real process
        and entry_point(filled.argv) in IN_PROCESS
        and not re.search(r"\btrainer=ddp|\bstrategy=ddp|\bcluster=", text)
    )


def run_here(filled: DocCommand, ctx: dict, tmp: Path) -> tuple[list[str], subprocess.CompletedProcess, float]:
    """:func:`run_one` in this process."""
    tmp.mkdir(parents=True)
    try:
        argv, env, cwd = build(filled, ctx, tmp)
        start = time.monotonic()
        proc = run_in_process(entry_point(filled.argv), argv[3:], env_extra=env, cwd=cwd)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return argv, proc, time.monotonic() - start


def run_one(filled: DocCommand, ctx: dict, tmp: Path) -> tuple[list[str], subprocess.CompletedProcess, float]:
    """Build and run one command: (argv, the finished process, seconds). Its folder (checkpoints: gigabytes)
    is removed; the output is kept."""
    tmp.mkdir(parents=True)
    try:
        argv, env, cwd = build(filled, ctx, tmp)
        start = time.monotonic()
        proc = subprocess.run(argv, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return argv, proc, time.monotonic() - start


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "filled", "unknown"), COMMANDS, ids=[f"{c.where} {c.text}"[:150] for c, _, _ in COMMANDS]
)
def test_documented_command_runs(command, filled, unknown, request):
    reason = matching(NOT_RUN, command)
    if reason:
        pytest.skip(reason)
    assert not unknown, f"{command.where}: unknown placeholder(s) {unknown}: teach fill_placeholders() about them"
    future = request.getfixturevalue("launched")[command]
    if isinstance(future.exception(), AssertionError):  # from build(): nothing ran
        pytest.fail(f"{command.where}: `{command.text}`: {future.exception()}", pytrace=False)
    if in_process(filled):
        try:
            argv, proc, seconds = run_here(filled, *future.result())
        except AssertionError as exc:  # from build(): nothing ran
            pytest.fail(f"{command.where}: `{command.text}`: {exc}", pytrace=False)
    else:
        argv, proc, seconds = future.result()  # or the real data's skip
    print(f"{seconds:.1f} s: {shlex.join(argv)}")
    expected_status, expected_text = matching(EXPECTED_ERRORS, command) or (0, "")
    if proc.returncode != expected_status or expected_text not in proc.stderr:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        expected = f"{expected_status}{', ' + repr(expected_text) if expected_text else ''}"
        pytest.fail(
            f"{command.where}: `{command.text}` ran as\n  {shlex.join(argv)}\n"
            f"exit {proc.returncode} (expected {expected}) after {seconds:.0f} s:\n{tail}",
            pytrace=False,
        )


def test_every_test_file_and_test_the_readme_names_exists():
    """The README's pytest commands (one test file) are not run here (they run this suite); what the README and
    the docs pages name must exist, down to the test function after `::`."""
    test_names = re.compile(r"\btests/[\w/]+\.py(?:::\w+)?")
    in_readme = set(test_names.findall((ROOT / "README.md").read_text()))
    assert any("::" not in n for n in in_readme), "the README no longer shows how to run one test file"
    named = {n for page in documentation_pages() for n in test_names.findall(page.read_text())}
    missing = []
    for name in sorted(named):
        path, _, func = name.partition("::")
        if not (ROOT / path).is_file() or (func and f"def {func}(" not in (ROOT / path).read_text()):
            missing.append(name)
    assert not missing, f"the README or the docs pages name tests that do not exist: {missing}"
