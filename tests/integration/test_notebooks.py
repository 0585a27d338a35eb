"""Every notebook runs top to bottom on a tiny checkpoint, so they never rot."""

from __future__ import annotations

import nbformat
import pytest
from helpers.paths import REPO
from nbclient import NotebookClient

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tiny_run, omniglot_root, monkeypatch):
    monkeypatch.setenv("CBIR_CKPT", str(tiny_run["ckpt"]))
    monkeypatch.setenv("CBIR_DATA", str(omniglot_root))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "accuracy" in outputs and "Lake-format runs" in outputs


def test_there_are_notebooks():
    assert NOTEBOOKS
