"""The notebooks run from top to bottom (their code cells, in order, in one namespace)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_code_cells_run(notebook: Path) -> None:
    document = json.loads(notebook.read_text())
    namespace: dict[str, object] = {}
    code_cells = [cell for cell in document["cells"] if cell["cell_type"] == "code"]
    assert code_cells, f"{notebook.name} has no code"
    for cell in code_cells:
        exec(compile("".join(cell["source"]), str(notebook), "exec"), namespace)


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS
