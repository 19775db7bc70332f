"""histlib's import graph, read from the source: which histlib modules each module imports, and the circles.

Every import statement counts, also those inside functions (an import deferred to call time is still an arrow).
Used by the tests that keep a package's imports one way (``tests/gan/test_imports.py``,
``tests/study/test_study_imports.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import histlib

ROOT = Path(histlib.__file__).resolve().parent


def module_names() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The histlib modules ``name`` imports (``from pkg import sub`` names the submodule when it is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # histlib.gan.config.TrainConfig -> histlib.gan.config
                t = t.rpartition(".")[0]
            if t and t != name and t not in ("histlib",) and not name.startswith(t + "."):
                found.add(t)
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def graph() -> dict[str, set[str]]:
    """``{module: the histlib modules it imports}`` of every module of histlib."""
    modules = module_names()
    return {m: imports(m, p, modules) for m, p in modules.items()}
