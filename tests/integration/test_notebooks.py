"""Every notebook runs top to bottom on small data, so they never rot.

Each notebook reads its inputs from the environment (``CBIR_CKPT``/``CBIR_DATA``: a tiny Omniglot
checkpoint and its data; ``CBIR_SHARED``: ``../shared/data``; ``CBIR_QUICK=1``: sizes small enough for
``make test``) and declares in its metadata ``cbir_test.expect`` the texts its outputs must contain and
``cbir_test.figures`` how many figures (``image/png`` outputs) it must show at least.
"""

from __future__ import annotations

import nbformat
import pytest
from helpers.paths import REPO, SHARED_DATA
from nbclient import NotebookClient

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _texts(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(p if isinstance(p, str) else "".join(p) for p in parts)


def _figures(notebook) -> int:
    return sum("image/png" in o.get("data", {}) for cell in notebook.cells for o in cell.get("outputs", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_shows_its_figures(path, tiny_run, omniglot_root, monkeypatch):
    monkeypatch.setenv("CBIR_CKPT", str(tiny_run["ckpt"]))
    monkeypatch.setenv("CBIR_DATA", str(omniglot_root))
    monkeypatch.setenv("CBIR_SHARED", str(SHARED_DATA))
    monkeypatch.setenv("CBIR_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(path, as_version=4)
    spec = notebook.metadata.get("cbir_test", {})
    assert spec.get("expect"), f"{path.name}: metadata cbir_test.expect names the outputs to check"
    NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    texts = _texts(notebook)
    for expected in spec["expect"]:
        assert expected in texts, f"{path.name}: no output contains {expected!r}"
    assert _figures(notebook) >= spec.get("figures", 1), f"{path.name}: too few figures in its outputs"


def test_there_are_notebooks():
    assert NOTEBOOKS
