"""Every progress display goes through ``histlib.progress``, which alone decides between a tqdm bar, plain lines for
exported reports and silence: a module calling tqdm itself would leave a stuck widget in a study's saved notebook.
"""

import ast
from pathlib import Path

import histlib

ROOT = Path(histlib.__file__).resolve().parent


def _tqdm_imports(source: str) -> list[int]:
    """Line numbers of ``import tqdm...``, ``from tqdm... import ...`` and ``importlib.import_module('tqdm...')``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if not node.level else []
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in
              ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)):
            names = [str(node.args[0].value)]
        else:
            continue
        if any(n == "tqdm" or n.startswith("tqdm.") for n in names):
            lines.append(node.lineno)
    return sorted(lines)


def test_the_scan_sees_each_way_of_importing_tqdm():
    src = ("import tqdm\nfrom tqdm.auto import tqdm as bar\nimport importlib\n"
           "def f():\n    return importlib.import_module('tqdm.notebook')\nimport tqdmx\nfrom .tqdm import x\n")
    assert _tqdm_imports(src) == [1, 2, 5]


def test_only_histlib_progress_imports_tqdm():
    found = {str(f.relative_to(ROOT.parent)): lines for f in sorted(ROOT.rglob("*.py"))
             if (lines := _tqdm_imports(f.read_text(encoding="utf-8")))}
    assert set(found) == {"histlib/progress.py"}, found
