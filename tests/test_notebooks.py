"""The notebooks run from top to bottom in a real Jupyter kernel (nbclient), and show their pictures.

The committed notebooks keep their rendered outputs (small PNGs), so they read well on a forge
without running them; the test runs each one again and checks every picture comes back.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
REPO = Path(__file__).parent.parent
#: the committed file, outputs included, stays small enough to review
MAX_NOTEBOOK_BYTES = 300_000


def _pictures(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )


def _errors(notebook: nbformat.NotebookNode) -> list[str]:
    return [
        f"{output.get('ename')}: {output.get('evalue')}"
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_runs_in_a_kernel_and_shows_its_pictures(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    committed = nbformat.read(path, as_version=4)
    expected_pictures = _pictures(committed)
    assert expected_pictures >= 4, f"{path.name}: the committed file shows {expected_pictures} pictures"
    # the kernel imports this checkout's empcompress, installed or not
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    assert not _errors(notebook)
    assert _pictures(notebook) == expected_pictures


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_committed_notebook_is_small_and_was_run(path: Path) -> None:
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count for cell in code), "commit the notebook run top to bottom"
    assert not _errors(notebook)


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS
