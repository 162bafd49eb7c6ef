"""The package's shape, checked: entry points only at the top and imported by nobody, no import cycles,
no oversized modules, and every module and package named in the layout page (docs/layout.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import tomllib

from tests.helpers import ROOT

PACKAGE = ROOT / "alexnet_gtsrb"
PLUGINS = ROOT / "hydra_plugins"
#: the top-level modules behind the console scripts (bench's is its package's __main__)
ENTRY_POINTS = {
    target.split(":")[0].split(".")[1]
    for target in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"].values()
    if target.split(":")[0].count(".") == 1 or target.split(":")[0].endswith(".__main__")
} - {"data"}
MAX_LINES = 400
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every alexnet_gtsrb module ``path`` imports, at any depth of the file (lazy and TYPE_CHECKING ones too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:  # `from pkg import name` where name is not a module
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t.startswith("alexnet_gtsrb") and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, set(modules)) for name, path in modules.items()}


def _entry_point(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ENTRY_POINTS else None


def test_no_module_imports_an_entry_point():
    offenders = []
    for module, imported in _graph().items():
        for target in imported:
            ep = _entry_point(target)
            if ep and _entry_point(module) != ep and target not in ("alexnet_gtsrb",):
                offenders.append(f"{module} imports {target}")
    assert not offenders, offenders


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            # a package's __init__ importing its own submodules is not a cycle of concern
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_the_graph_sees_real_imports():
    """The checks above would pass vacuously if the walker found nothing: it must see known edges."""
    graph = _graph()
    assert "alexnet_gtsrb.inference" in graph["alexnet_gtsrb.predict"]
    assert "alexnet_gtsrb.data.io" in graph["alexnet_gtsrb.data.cache"]
    assert "alexnet_gtsrb.data.cache" in graph["alexnet_gtsrb.data.dataset"]  # TYPE_CHECKING imports count too


def test_no_module_over_400_lines():
    long = {
        str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function or method in ``source`` longer than ``limit`` lines, docstring included."""
    return [
        (node.name, n)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (n := (node.end_lineno or node.lineno) - node.lineno + 1) > limit
    ]


def test_no_function_over_60_lines():
    found = {
        f"{p.relative_to(ROOT)}:{name}": n
        for p in [*PACKAGE.rglob("*.py"), *PLUGINS.rglob("*.py")]
        for name, n in long_functions(p.read_text())
    }
    assert not found, found


def test_the_function_length_check_sees_long_functions():
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    assert long_functions(f"def short():\n{body[:-20]}\n") == []
    assert long_functions(f"class C:\n    def long(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n") == [
        ("long", 61)
    ]


def test_entry_points_come_from_the_console_scripts():
    assert {"train", "evaluate", "predict", "export", "report", "robustness", "bench"} <= ENTRY_POINTS


def test_layout_page_names_every_module_and_package():
    """The layout page's tree (its first code block) lists every module file and package folder of alexnet_gtsrb/
    by name."""
    text = (ROOT / "docs" / "layout.md").read_text()
    block = re.search(r"^# Layout\n.*?```\n(.*?)```", text, re.S | re.M)
    assert block, "docs/layout.md has no '# Layout' page with a code block"
    listed = set(re.findall(r"[\w]+(?:\.py|/)", block.group(1)))
    missing = []
    for p in sorted(PACKAGE.rglob("*")):
        if "__pycache__" in p.parts or (p.is_file() and p.suffix != ".py"):
            continue
        name = p.name + "/" if p.is_dir() else p.name
        if name not in listed:
            missing.append(str(p.relative_to(ROOT)))
    assert not missing, f"modules or packages missing from docs/layout.md: {missing}"


def test_an_unmarked_test_that_trains_or_starts_python_fails():
    """The guard in tests/conftest.py: `make test-fast` trusts the `slow` marker, so a test without it that runs
    the fit loop or starts a Python process fails with the fix named; other programs may run."""
    import subprocess
    import sys

    from lightning.pytorch.loops.fit_loop import _FitLoop

    with pytest.raises(pytest.fail.Exception, match=r"starts a Python process.*mark it @pytest\.mark\.slow"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    with pytest.raises(pytest.fail.Exception, match=r"fit loop runs.*mark it @pytest\.mark\.slow"):
        _FitLoop.run(None)  # type: ignore[arg-type]
    assert subprocess.run(["true"], check=False).returncode == 0
