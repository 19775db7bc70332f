"""The study package's imports run one way: each module imports only those before it in ``LAYERS``.

In particular the executors never import the runner (a step runs as ``python -m histlib study step``), and no module
of histlib.study takes part in an import circle, counting imports inside functions too.
"""

from import_graph import circles, graph

# lowest first: a module may import the study modules before it, never one after it
LAYERS = ["histlib.study.executors", "histlib.study.spec", "histlib.study.steps", "histlib.study.checks",
          "histlib.study.estimate", "histlib.study.execution", "histlib.study.run", "histlib.study.cli"]


def test_every_study_module_has_its_place_in_the_layers():
    modules = {m for m in graph() if m.startswith("histlib.study.")}
    assert modules == set(LAYERS)


def test_study_modules_import_only_the_layers_before_them():
    g = graph()
    upward = {(m, t) for m in LAYERS for t in g[m]
              if t.startswith("histlib.study") and (t not in LAYERS or LAYERS.index(t) >= LAYERS.index(m))}
    assert upward == set()


def test_the_executors_import_no_other_study_module():
    assert {t for t in graph()["histlib.study.executors"] if t.startswith("histlib.study")} == set()


def test_no_import_circle_through_the_study_package():
    found = [c for c in circles(graph()) if any(m == "histlib.study" or m.startswith("histlib.study.") for m in c)]
    assert found == []
