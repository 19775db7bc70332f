"""The GAN stage's imports run one way: no module of histlib.gan takes part in an import circle.

Every import statement counts, also those inside functions (an import deferred to call time is still an arrow).
"""

import ast
from pathlib import Path

import histlib

ROOT = Path(histlib.__file__).resolve().parent


def _module_names() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
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


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
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


def test_the_circle_finder_sees_a_circle_through_a_deferred_import(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]
    pkg = tmp_path / "histlib" / "gan"
    pkg.mkdir(parents=True)
    (pkg / "one.py").write_text("from histlib.gan import two\n")
    (pkg / "two.py").write_text("def f():\n    from .one import g\n")
    modules = {"histlib.gan.one": pkg / "one.py", "histlib.gan.two": pkg / "two.py", "histlib.gan": pkg}
    graph = {m: _imports(m, p, modules) for m, p in modules.items() if p.suffix == ".py"}
    assert _circles(graph) == [["histlib.gan.one", "histlib.gan.two"]]


def test_no_import_circle_through_the_gan_stage():
    modules = _module_names()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    circles = [c for c in _circles(graph) if any(m.startswith("histlib.gan") for m in c)]
    assert circles == []


def test_the_gan_stage_draws_on_no_later_stage():
    """gan sits below generate, fidelity, analysis, the study runner and the reports (docs/design.md)."""
    modules = _module_names()
    later = ("histlib.generate", "histlib.fidelity", "histlib.analysis", "histlib.study", "histlib.report",
             "histlib.classify", "histlib.executors", "histlib.selection")
    arrows = {(m, t) for m, p in modules.items() if m.startswith("histlib.gan")
              for t in _imports(m, p, modules) if t.startswith(later)}
    assert arrows == set()


def test_no_import_circle_through_the_later_stages():
    """classify, generate with its selection, audit and fidelity, metrics, and the analysis with the learning curve
    import one way too (docs/design.md)."""
    modules = _module_names()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    later = ("histlib.classify", "histlib.generate", "histlib.selection", "histlib.audit", "histlib.fidelity",
             "histlib.metrics", "histlib.analysis", "histlib.learning_curve")
    circles = [c for c in _circles(graph) if any(m.startswith(later) for m in c)]
    assert circles == []
