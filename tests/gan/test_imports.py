"""The GAN stage's imports run one way: no module of histlib.gan takes part in an import circle.

Every import statement counts, also those inside functions (an import deferred to call time is still an arrow).
"""

from import_graph import circles, imports, module_names


def test_the_circle_finder_sees_a_circle_through_a_deferred_import(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    pkg = tmp_path / "histlib" / "gan"
    pkg.mkdir(parents=True)
    (pkg / "one.py").write_text("from histlib.gan import two\n")
    (pkg / "two.py").write_text("def f():\n    from .one import g\n")
    modules = {"histlib.gan.one": pkg / "one.py", "histlib.gan.two": pkg / "two.py", "histlib.gan": pkg}
    graph = {m: imports(m, p, modules) for m, p in modules.items() if p.suffix == ".py"}
    assert circles(graph) == [["histlib.gan.one", "histlib.gan.two"]]


def test_no_import_circle_through_the_gan_stage():
    modules = module_names()
    graph = {m: imports(m, p, modules) for m, p in modules.items()}
    found = [c for c in circles(graph) if any(m.startswith("histlib.gan") for m in c)]
    assert found == []


def test_the_gan_stage_draws_on_no_later_stage():
    """gan sits below generate, fidelity, analysis, the study runner and the reports (docs/design.md)."""
    modules = module_names()
    later = ("histlib.generate", "histlib.fidelity", "histlib.analysis", "histlib.study", "histlib.report",
             "histlib.classify", "histlib.selection")
    arrows = {(m, t) for m, p in modules.items() if m.startswith("histlib.gan")
              for t in imports(m, p, modules) if t.startswith(later)}
    assert arrows == set()


def test_no_import_circle_through_the_later_stages():
    """classify, generate with its selection, audit and fidelity, metrics, and the analysis with the learning curve
    import one way too (docs/design.md)."""
    modules = module_names()
    graph = {m: imports(m, p, modules) for m, p in modules.items()}
    later = ("histlib.classify", "histlib.generate", "histlib.selection", "histlib.audit", "histlib.fidelity",
             "histlib.metrics", "histlib.analysis", "histlib.learning_curve")
    found = [c for c in circles(graph) if any(m.startswith(later) for m in c)]
    assert found == []
