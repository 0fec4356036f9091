"""notebooks/paper_figures.ipynb: stored clean (no outputs), and it runs end to end on a real grid."""

import json
import os
import shutil
import sys

import nbformat
import pandas as pd
import pytest

NOTEBOOK = os.path.join(os.path.dirname(__file__), os.pardir, "notebooks", "paper_figures.ipynb")


def read():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return nb


def parameters_cell(nb):
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    return code[0]


def test_stored_notebook_has_no_outputs_and_a_parameters_cell():
    nb = read()
    assert nb.nbformat == 4
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert 'GRID_DIR = "results/my-grid"' in parameters_cell(nb).source


def test_notebook_runs_on_the_tiny_grid(tiny_grid, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # the "python3" kernel is this interpreter, whatever kernels the machine has installed
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    nb = read()
    out = tmp_path / "figs"
    grid = tmp_path / "grid"  # the tiny grid's tables plus a contrasts.csv (the contrast cell draws it)
    grid.mkdir()
    for name in ("runs.parquet", "metrics.parquet", "summary.parquet"):
        shutil.copy(tiny_grid / name, grid / name)
    pd.DataFrame([{"group": "C1", "label": "vespo - token_clip", "diff": 0.05, "lo": -0.01, "hi": 0.11,
                   "verdict": "undecided", "margin": 0.05}]).to_csv(grid / "contrasts.csv", index=False)
    # as papermill does: the parameters cell keeps its defaults, the injected values follow them
    parameters_cell(nb).source += f"\nGRID_DIR = {str(grid)!r}\nOUT_DIR = {str(out)!r}"
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # kernel, reward vs step, metric grid, accuracy vs N
    assert any("token_clip" in o.get("data", {}).get("text/markdown", "") for o in outputs)  # the table
    assert (out / "kernel.png").is_file() and (out / "accuracy_vs_n.pdf").is_file()
    assert (out / "contrasts.png").is_file()
    assert any("late_mean" in o.get("data", {}).get("text/markdown", "") for o in outputs)  # the table's endpoint
