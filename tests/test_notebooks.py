"""Each notebook runs top to bottom (on the synthetic tree unless GTSRB_ROOT names real data) and is
committed without outputs. 02_results reads the run folder of one short training on the synthetic tree."""

from __future__ import annotations

import pytest

from tests.helpers import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _results_env(request) -> dict[str, str]:
    """02_results: the shared tiny training run (its report is made by the notebook, into <run>/evaluation)."""
    return {"ALEXNET_GTSRB_RUN_DIR": str(request.getfixturevalue("tiny_run").dir)}


def _results_check(nb, request) -> None:
    run_dir = request.getfixturevalue("tiny_run").dir
    for name in ("per_class.csv", "confusion_matrix.png", "misclassified.png", "metrics.json"):
        assert (run_dir / "evaluation" / name).is_file(), name
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stdout")
    assert f"run folder: {run_dir}" in text and "test/acc:" in text
    pngs = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert pngs >= 6  # curves, test and val confusion matrices, misclassified, conv1, training samples


NOTEBOOK_ENV = {"02_results.ipynb": _results_env}
NOTEBOOK_CHECKS = {"02_results.ipynb": _results_check}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, synthetic_root, monkeypatch, tmp_path, request):
    monkeypatch.setenv("GTSRB_ROOT", str(synthetic_root))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend, as in Jupyter
    monkeypatch.setenv("ALEXNET_GTSRB_LOGS", str(tmp_path / "logs"))  # never the repository's own runs
    for key, value in NOTEBOOK_ENV.get(path.name, lambda _: {})(request).items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(path, as_version=4)
    resources = {"metadata": {"path": str(tmp_path)}}
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources=resources).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    # every figure a cell shows reaches the notebook (a non-interactive backend set in the notebook would
    # make plt.show() a no-op and the notebook silently figure-less)
    shows = sum("".join(c.source).count("plt.show()") for c in nb.cells if c.cell_type == "code")
    pngs = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert pngs >= shows, f"{pngs} figures shown for {shows} plt.show() calls"
    if path.name in NOTEBOOK_CHECKS:
        NOTEBOOK_CHECKS[path.name](nb, request)
