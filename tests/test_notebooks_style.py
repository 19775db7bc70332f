"""House style of the committed notebooks (README, "Layout"): thin, parameterised, committed without outputs."""

import ast
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_thin_and_parameterised(path):
    nb = nbformat.read(str(path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name}: needs exactly one code cell tagged 'parameters'"
    tree = ast.parse(params[0].source)
    for node in tree.body:
        assert isinstance(node, (ast.Assign, ast.AnnAssign)), f"{path.name}: parameters cell holds only assignments"
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for t in targets:
            assert isinstance(t, ast.Name) and t.id.isupper(), f"{path.name}: parameter {ast.unparse(t)} not UPPER_CASE"
        ast.literal_eval(node.value)  # primitives only
    assert nb.cells[0].cell_type == "markdown" and "papermill" in nb.cells[0].source, \
        f"{path.name}: first cell must say what the notebook does and give the papermill command"
    for cell in code:
        assert not cell.get("outputs") and cell.get("execution_count") is None, f"{path.name}: committed with outputs"
        src = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(src)):
            assert not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.For, ast.While, ast.Lambda)), \
                f"{path.name}: no def/class/loops in notebooks:\n{cell.source}"
        if "parameters" not in cell.metadata.get("tags", []):  # a list of settings is not logic
            assert len(cell.source.splitlines()) <= 15, f"{path.name}: a cell over 15 lines belongs in histlib"
