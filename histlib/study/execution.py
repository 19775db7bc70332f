"""One step's execution: its notebook run with papermill from the project root, exported to an HTML report.

Before a step runs, the outputs of an earlier execution with another hash are moved aside (and before a study runs,
those of steps its plan no longer has); its state file
(``notebooks/.state/<step>.json``) says ``running``, then ``finished`` or ``failed``, with the seconds it took.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from histlib import runs
from histlib.classify import sets as classify_sets
from histlib.progress import MODE_VARIABLE as PROGRESS_VARIABLE
from histlib.study.spec import STAGES, Step, Study, notebook_path
from histlib.study.steps import images_trained, is_current, planned_runs, same_upstream, state_path

# Exported reports: tables in the output areas wrap and shrink instead of hiding behind a scroll bar, and the page
# starts with a link back to the study's index
REPORT_STYLE = """<style>
.jp-OutputArea-output table{font-size:12px;max-width:100%} .jp-OutputArea-output td,.jp-OutputArea-output th{
padding:2px 6px;white-space:normal;overflow-wrap:break-word}
.jp-OutputArea-output thead th{overflow-wrap:anywhere} .jp-OutputArea-output{overflow-x:auto}
.histlib-nav{font-family:system-ui,sans-serif;margin:.6em 1em;font-size:14px}
</style>"""


def export_html(ipynb: Path, html: Path, title: str | None = None, index: Path | None = None) -> Path:
    """Exports an executed notebook to a standalone HTML report that reads offline (written atomically).

    nbconvert's template loads MathJax and require.js from a CDN: both are left out (the reports hold no LaTeX and
    no widgets), so a page never asks the network for anything. The page title is ``title`` (default: the file
    name), not "Notebook"; with ``index``, the page starts with a relative link back to it.
    """
    import re

    import nbconvert
    import nbformat

    nb = nbformat.read(str(ipynb), as_version=4)
    for i, cell in enumerate(nb.cells):  # say which parameters won: papermill's cell overrides the defaults above it
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            nb.cells.insert(i, nbformat.v4.new_markdown_cell(
                "**Parameters of this run** (given by the study; they replace the defaults in the cell above)."))
            break
    exporter = nbconvert.HTMLExporter(mathjax_url="", require_js_url="", jquery_url="", widget_renderer_url="",
                                      jupyter_widgets_base_url="", mermaid_js_url="")
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title or html.stem}})
    body = re.sub(r'<script[^>]*\ssrc=""[^>]*>\s*</script>', "", body)
    nav = ""
    if index is not None:
        link = Path(os.path.relpath(index, html.parent)).as_posix()
        nav = f"<nav class='histlib-nav'><a href='{link}'>← study index</a></nav>"
    body = body.replace("</head>", REPORT_STYLE + "</head>", 1)
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav, body, count=1)
    return runs.atomic_write_text(html, body)


def step_title(study: Study, step: Step) -> str:
    """``"demo · 03 finetune · sample_target · pretrained"``: the title of a step's report."""
    parts = step.name.split("__")
    head = parts[0].replace("_", " ", 1)
    return " · ".join([study.name, head, *parts[1:]])


def _step_outputs(step: Step) -> list[tuple[str, Path]]:
    """``(name, path)`` of what this step writes and nothing else: its ``RUN_DIR``; under a ``RUN_ROOT`` (shared by
    every classify step of a dataset) only the run folders of its own training sets and variant."""
    out = []
    if step.params.get("RUN_DIR"):
        out.append(("run_dir", runs.project_path(step.params["RUN_DIR"])))
    if step.params.get("RUN_ROOT"):
        root = runs.project_path(step.params["RUN_ROOT"])
        variant = step.params.get("VARIANT")
        labels = [classify_sets.train_set_label(ts, f) for ts in step.params.get("TRAIN_SETS") or ["real"]
                  for f in ([1.0, *step.params.get("REAL_FRACTIONS", [])] if ts == "real" else [1.0])]
        prefixes = tuple(f"{label}__{variant}__" if variant and classify_sets.needs_synthetic(label) else f"{label}__"
                         for label in labels)
        if root.is_dir():
            out += [(f"run_root/{p.name}", p) for p in sorted(root.iterdir()) if p.name.startswith(prefixes)]
    return out


def _supersede_outputs(study: Study, step: Step) -> None:
    """Moves aside the outputs of an earlier execution of this step that ran with another hash.

    Training and classification resume from (or skip to) what their run folders hold when the config matches;
    but a config holds paths, not contents, so after an upstream change (re-prepared data, a retrained base GAN,
    other settings) the old outputs would be reused. They are moved, not deleted, to
    ``<results>/.superseded/<study>/<step>-<old hash>/``; only the step's own runs move (other classify steps' runs
    in the same ``RUN_ROOT`` stay), those of the training sets its earlier settings had as well as its current ones.
    A step interrupted with the *same* hash keeps its outputs, so a re-run resumes it.

    One exception: a classify step whose own settings changed while nothing upstream did (the same notebook,
    dependencies and inputs: a seed, a model or a training set added or dropped) keeps the runs its new settings
    still plan, by name; each of them is skipped only if its ``config.json`` matches the new config, and retrained
    otherwise. Only the other runs move aside.
    """
    state = state_path(study, step)
    if not state.is_file():
        return
    info = runs.read_json(state)
    old = info.get("hash")
    if old in {step.hash, step.legacy_hash or step.hash}:
        return
    before = Step(step.stage, step.dataset, step.name, step.notebook, dict(info.get("params") or {}), [])
    items = list({path: (name, path) for name, path in [*_step_outputs(before), *_step_outputs(step)]}.values())
    kept: list[str] = []
    planned = planned_runs(step) if same_upstream(step, info) else set()
    if planned:
        kept = [name for name, path in items if name.startswith("run_root/") and path.name in planned]
        items = [(name, path) for name, path in items if name not in kept]
    dest_root = _superseded_dir(study, step.name, old)
    moved = _move_aside(dest_root, items)
    if moved or kept:
        print(f"{step.name}: settings changed since the last run; its previous outputs ({len(moved)}) moved to "
              f"{runs.display_path(dest_root)}"
              + (f"; {len(kept)} run(s) still planned, with nothing upstream changed, stay (each is retrained "
                 f"unless its config is unchanged)" if kept else ""))


def refresh_state(study: Study, step: Step) -> bool:
    """Brings the state file of a step that is current (finished with its hash or the legacy one,
    :func:`histlib.study.steps.hash_steps`) but written by an earlier runner to this runner's form: the legacy hash
    becomes the current one, and a missing ``upstream`` is recorded (so that a later change of only the step's own
    settings keeps the runs it still plans, as in :func:`_supersede_outputs`). The same hash means the same
    notebook code, dependencies and inputs, so the current ``upstream`` is the one the step ran with. Returns True
    when the file was updated."""
    state = state_path(study, step)
    if not state.is_file() or not step.hash:
        return False
    info = runs.read_json(state)
    if not is_current(step, info) or (info.get("hash") == step.hash and info.get("upstream") == step.upstream):
        return False
    runs.write_json(state, {**info, "hash": step.hash, "upstream": step.upstream})
    return True


def _superseded_dir(study: Study, name: str, old_hash: str | None) -> Path:
    """``<results>/.superseded/<study>/<step>-<old hash>/``: where a step's earlier outputs go."""
    return runs.project_path(study.results_root / ".superseded" / study.name / f"{name}-{old_hash}")


def _move_aside(dest_root: Path, items: list[tuple[str, Path]]) -> list[str]:
    """Moves each existing ``(name, path)`` to ``dest_root / name``; returns the names moved."""
    moved = []
    for name, src in items:
        if src.exists():
            dest = dest_root / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dest))
            moved.append(name)
    return moved


def retire_dropped_steps(study: Study, steps: list[Step], move: bool = True) -> list[str]:
    """Moves aside the outputs of steps an earlier plan of this study ran and the current plan no longer has.

    A study file that drops a variant, a generated set or a training set would otherwise leave that step's run
    folders in ``results/<study>/``, where the analysis (which reads the results tree) would count them beside the
    current plan's. Each such step's outputs (as :func:`_step_outputs` finds them from the parameters its state file
    recorded), its state file and its reports move to ``<results>/.superseded/<study>/<step>-<hash>/``.

    Args:
        move: False only lists them (a dry run).

    Returns:
        The names of the steps moved aside (or, with ``move=False``, that would be).
    """
    state_dir = runs.project_path(study.out_dir / "notebooks" / ".state")
    if not state_dir.is_dir():
        return []
    planned = {s.name for s in steps}
    by_prefix = {Path(nb).stem: stage for stage, nb in STAGES.items()}
    retired = []
    for state in sorted(state_dir.glob("*.json")):
        name = state.stem
        stage = by_prefix.get(name.split("__")[0])
        if name in planned or stage is None:
            continue
        retired.append(name)
        if not move:
            continue
        info = runs.read_json(state)
        old = Step(stage, None, name, STAGES[stage], dict(info.get("params") or {}), [])
        dest_root = _superseded_dir(study, name, info.get("hash"))
        reports = [state.parent.parent / f"{name}{suffix}" for suffix in (".ipynb", ".html", ".failed.ipynb",
                                                                           ".failed.html")]
        moved = _move_aside(dest_root, [*_step_outputs(old), *((f"notebooks/{p.name}", p) for p in reports),
                                        ("notebooks/.state.json", state)])
        print(f"{name}: no longer in the study's plan; its outputs ({len(moved) - 1} besides its state) moved to "
              f"{runs.display_path(dest_root)}")
    return retired


def execute_step(study: Study, step: Step, *, log_output: bool = False, kernel_name: str = "python3") -> Path:
    """Runs one step with papermill from the project root and exports it to HTML.

    The executed notebook is written under a temporary name and renamed when papermill finishes; a failed run
    keeps ``<name>.failed.ipynb`` (and its HTML) for inspection, and raises. ``kernel_name='python3'`` is the
    Python running the study (its own environment), whatever kernel the notebook was last saved with.
    """
    import papermill

    root = runs.project_root()
    out_dir = runs.project_path(study.out_dir / "notebooks")
    out_dir.mkdir(parents=True, exist_ok=True)
    _supersede_outputs(study, step)
    runs.write_json(state_path(study, step), _state(step, "running"))
    final = out_dir / f"{step.name}.ipynb"
    tmp = out_dir / f".{step.name}.running.ipynb"
    t0 = time.time()
    # plain-text progress lines in the kernels (a widget would render empty in the exported HTML); the kernel's own
    # log (its warning about TCP transport on a local machine) is not the user's business
    previous = os.environ.get(PROGRESS_VARIABLE)
    os.environ[PROGRESS_VARIABLE] = "plain"
    try:
        papermill.execute_notebook(str(notebook_path(step.notebook)), str(tmp), parameters=step.params,
                                   cwd=str(root), log_output=log_output, progress_bar=False,
                                   kernel_name=kernel_name, extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except BaseException as e:
        runs.write_json(state_path(study, step), _state(step, "failed", seconds=round(time.time() - t0, 1),
                                                        error=error_line(e)))
        if tmp.exists():
            failed = out_dir / f"{step.name}.failed.ipynb"
            os.replace(tmp, failed)
            try:
                export_html(failed, failed.with_suffix(".html"), f"{step_title(study, step)} (failed)",
                            index=out_dir.parent / "index.html")
            except Exception:  # the failure itself is what the user needs to see; the HTML is a convenience
                pass
        raise
    finally:
        if previous is None:
            os.environ.pop(PROGRESS_VARIABLE, None)
        else:
            os.environ[PROGRESS_VARIABLE] = previous
    os.replace(tmp, final)
    html = export_html(final, final.with_suffix(".html"), step_title(study, step), index=out_dir.parent / "index.html")
    for stale in (out_dir / f"{step.name}.failed.ipynb", out_dir / f"{step.name}.failed.html"):
        stale.unlink(missing_ok=True)
    runs.write_json(state_path(study, step), _state(step, "finished", seconds=round(time.time() - t0, 1),
                                                    **_runs_trained(step, t0)))
    return html


def _runs_trained(step: Step, since: float) -> dict:
    """For a classify step, ``{"runs": {"planned": n, "trained": m, "images": i}}``: of the runs its parameters
    plan, those whose ``metrics.json`` this execution wrote (the others were kept and skipped), and the images they
    trained on (epochs × training images: :func:`histlib.study.steps.images_trained`), so that the time estimates
    (:mod:`histlib.study.estimate`) cost only the runs that trained, per image; empty for any other step."""
    planned = planned_runs(step)
    if not planned:
        return {}
    root = runs.project_path(step.params["RUN_ROOT"])
    trained = [name for name in sorted(planned) if (root / name / "metrics.json").is_file()
               and (root / name / "metrics.json").stat().st_mtime >= since]
    return {"runs": {"planned": len(planned), "trained": len(trained), "images": images_trained(root, trained)}}


def _state(step: Step, status: str, **extra) -> dict:
    """A step's state file: status, hash, the upstream part of the hash, parameters and notebook."""
    return {"status": status, "hash": step.hash, "upstream": step.upstream, "params": step.params,
            "notebook": step.notebook, **extra}


def error_line(e: BaseException) -> str:
    """``ValueError: bad patch`` for an error raised inside a notebook (papermill keeps its name and value)."""
    if hasattr(e, "ename") and hasattr(e, "evalue"):
        return f"{e.ename}: {str(e.evalue)[:300]}"
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"
