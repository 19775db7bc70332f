"""Running a study: every step of its plan, one after another here or through an executor, resumably.

``python -m histlib study run STUDY.yaml`` turns the study into its plan (:mod:`histlib.study.steps`), checks every
value (:mod:`histlib.study.checks`), then runs each step (:mod:`histlib.study.execution`) that has not finished with
the same hash: in this process (``sequential``) or as ``python -m histlib study step`` processes or jobs
(:mod:`histlib.study.executors`). ``results/<study>/study.json`` and ``index.html`` follow every step.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from histlib import runs
from histlib.config import nearest
from histlib.progress import progress
from histlib.study import executors
from histlib.study.checks import check_values, prepared_conflicts, validate
from histlib.study.estimate import estimate, format_seconds
from histlib.study.execution import error_line, execute_step, refresh_state, retire_dropped_steps
from histlib.study.spec import STAGES, Step, Study, StudyError, load_study
from histlib.study.steps import hash_steps, is_done, plan, state_path


def run_study(path: str | os.PathLike, *, force: bool = False, only: Iterable[str] | None = None,
              dry_run: bool = False, results_root: str | os.PathLike = "results",
              log_output: bool = False, executor: str = "sequential", jobs: int = 1,
              cluster: str | None = None, probe: bool = True,
              allow_missing_sources: bool = False) -> list[dict[str, Any]]:
    """Runs a study; returns one summary row per step (also written to ``results/<study>/study.json``).

    A step that fails is recorded as ``failed`` (its partial report kept) and only the steps that depend on it are
    skipped (``blocked``); every independent step still runs. ``results/<study>/index.html`` is rebuilt after every
    step. Running the study again retries what failed and skips what finished.

    Args:
        path: the study YAML.
        force: re-run steps even when a finished run with the same hash exists.
        only: restrict to these stages (their dependencies must have run before).
        dry_run: print the plan and what would be skipped, run nothing.
        results_root: where ``<study>/`` goes, relative to the project root.
        log_output: stream the notebooks' output to the terminal.
        executor: ``'sequential'`` (one step after another in this process), ``'local'`` (up to ``jobs`` steps at
            once on this machine) or ``'slurm'`` (submitit jobs; ``cluster='local'``/``'debug'`` for submitit's
            stand-ins), see :mod:`histlib.study.executors`.
        jobs: steps at once (local, slurm).
        cluster: submitit cluster for ``executor='slurm'`` (default: SLURM).
        probe: with ``dry_run``, time a few seconds of each stage's work that this machine has not measured before
            (:mod:`histlib.study.estimate`).
        allow_missing_sources: with ``dry_run``, a data step's source that does not exist yet is a warning, not an
            error (to plan a study before its data is downloaded).
    """
    try:
        executors.check_executor(executor, jobs, cluster)
    except executors.ExecutorError as e:
        raise StudyError(str(e)) from None
    study = load_study(runs.project_path(path), results_root)
    steps = plan(study)
    hash_steps(steps)
    only = set(only or [])
    bad = only - set(STAGES)
    if bad:
        raise StudyError(f"--only: unknown stage(s) {sorted(bad)}; expected some of {list(STAGES)}")
    selected = [s for s in steps if not only or s.stage in only]
    validate(selected, study)
    strict = not (dry_run and allow_missing_sources)
    for warning in check_values(study, selected, steps, sources_must_exist=strict):  # before anything runs
        print(f"warning: {warning}", file=sys.stderr)
    rows = [{"step": s.name, "stage": s.stage, "dataset": s.dataset, "hash": s.hash, "status": "pending"}
            for s in selected]
    for conflict in prepared_conflicts(study, selected):
        print(f"warning: {conflict}", file=sys.stderr)
    _check_results_owner(study, path)  # before anything is moved aside or runs
    if dry_run:
        for step, row in zip(selected, rows):
            row["status"] = "finished (skip)" if is_done(study, step) and not force else "to run"
            print(f"{row['status']:>16}  {step.name}")
        for name in retire_dropped_steps(study, steps, move=False):
            print(f"{'not planned':>16}  {name} (ran before; its outputs move to .superseded/ when the study runs)")
        _print_plan_summary(study, selected, rows, probe=probe)
        return rows
    retire_dropped_steps(study, steps)
    for step in steps:  # state files of an earlier runner (legacy hash, no upstream) of steps that are current
        refresh_state(study, step)
    _write_study_json(study, path, rows)
    if executor != "sequential":
        return _run_parallel(study, path, selected, rows, force, executor, jobs, cluster)
    return _run_sequential(study, path, selected, rows, force, log_output)


def _run_sequential(study: Study, path: str | os.PathLike, steps: list[Step], rows: list[dict[str, Any]],
                    force: bool, log_output: bool) -> list[dict[str, Any]]:
    """Each step in plan order in this process; a step whose dependency failed is ``blocked``."""
    by_name = dict(zip((s.name for s in steps), rows))
    bar = progress(total=len(steps), desc=f"study {study.name}", unit="step")
    for step, row in zip(steps, rows):
        failed_deps = [d for d in step.depends if by_name.get(d, {}).get("status") in ("failed", "blocked")]
        if failed_deps:
            row.update(status="blocked", reason=f"depends on {', '.join(failed_deps)}, which did not finish")
            bar.write(f"{step.name}: not run, {row['reason']}")
        elif is_done(study, step) and not force:
            row["status"] = "skipped (finished, same hash)"
            bar.write(f"{step.name}: finished before with the same settings, skipped")
        else:
            t0 = time.time()
            try:
                html = execute_step(study, step, log_output=log_output)
            except Exception as e:  # noqa: BLE001 - one step's failure must not stop independent steps
                row.update(status="failed", seconds=round(time.time() - t0, 1), error=error_line(e))
                bar.write(f"{step.name}: FAILED after {row['seconds']} s ({row['error']}); report: "
                          f"{runs.display_path(study.out_dir / 'notebooks' / (step.name + '.failed.html'))}")
            else:
                row.update(status="finished", seconds=round(time.time() - t0, 1),
                           html=runs.display_path(html, runs.project_path(study.out_dir)))
                bar.write(f"{step.name}: finished in {row['seconds']} s -> {runs.display_path(html)}")
        bar.update(1)
        _write_study_json(study, path, rows)
    bar.close()
    return rows


def _run_parallel(study: Study, path: str | os.PathLike, steps: list[Step], rows: list[dict[str, Any]], force: bool,
                  executor: str, jobs: int, cluster: str | None) -> list[dict[str, Any]]:
    study_file = runs.project_path(path).as_posix()
    # as the study holds it: the step processes (started in the project root) must build the same parameters, and so
    # the same step hashes, as this one (an absolute form would change every RUN_DIR and supersede finished steps)
    results_root = study.results_root.as_posix()
    out = runs.project_path(study.out_dir)
    if executor == "local":
        backend = executors.LocalBackend(jobs, study_file, results_root, out / "notebooks" / ".logs")
    else:
        backend = executors.SubmititBackend(jobs, study_file, results_root, out / ".submitit", cluster,
                                            study.resources.get("slurm", {}))
    done = (lambda step: False) if force else (lambda step: is_done(study, step))
    try:
        executors.schedule(steps, rows, is_done=done, backend=backend, resources=study.resources,
                           on_change=lambda: _write_study_json(study, path, rows),
                           durations=_past_durations(study, steps), expected=_expected_seconds(study, steps, force))
    finally:  # interrupted too: study.json and the index show which steps were stopped
        _write_study_json(study, path, rows)
    return rows


def _expected_seconds(study: Study, steps: list[Step], force: bool = False) -> dict[str, float]:
    """``study plan``'s estimate of each step that is to run (all of them with ``force``), without probes: from what
    this machine measured before, or a published speed. It knows each step's amount of work, which a stage's mean
    duration does not. Steps without one are left out."""
    from histlib.study.estimate import measured_rates, step_estimate

    try:
        measured = measured_rates(study.results_root)
        if not measured:
            return {}
        todo = list(steps) if force else [s for s in steps if not is_done(study, s)]
        return {s.name: sec for s in todo if (sec := step_estimate(s, todo, measured, {}, False, study)[0])}
    except Exception:  # noqa: BLE001 - the ETA is a convenience; without it the runner uses the stage means
        return {}


def _past_durations(study: Study, steps: list[Step]) -> dict[str, list[float]]:
    """Seconds of this study's steps that finished in earlier invocations, per stage (they seed the runner's ETA)."""
    out: dict[str, list[float]] = {}
    for step in steps:
        state = state_path(study, step)
        if state.is_file():
            try:
                info = runs.read_json(state)
            except (OSError, ValueError):  # an unreadable state only costs the ETA this estimate
                continue
            if info.get("status") == "finished" and isinstance(info.get("seconds"), (int, float)):
                out.setdefault(step.stage, []).append(float(info["seconds"]))
    return out


def run_single_step(path: str | os.PathLike, step_name: str, results_root: str | os.PathLike = "results") -> Path:
    """Executes one step of a study by name (what ``python -m histlib study step`` runs in each process or job)."""
    study = load_study(runs.project_path(path), results_root)
    steps = plan(study)
    hash_steps(steps)
    step = next((s for s in steps if s.name == step_name), None)
    if step is None:
        raise StudyError(f"{path}: no step named {step_name!r}{nearest(step_name, [s.name for s in steps])}")
    return execute_step(study, step)


def _check_results_owner(study: Study, path: str | os.PathLike) -> None:
    """Refuses to run a study into ``results/<name>/`` when another study file with the same ``name`` ran there
    last and still exists: the two would each move the other's steps aside as "no longer planned" and mix their
    runs in one analysis. A results folder whose study file was moved or renamed (the recorded file is gone, or
    names another study now) is taken over.

    Raises:
        StudyError: naming both files and what to change.
    """
    from histlib.config import read_yaml

    record = runs.project_path(study.out_dir / "study.json")
    try:
        recorded = runs.read_json(record).get("file") if record.is_file() else None
    except (OSError, ValueError):  # an unreadable record is rewritten by this run
        return
    here = runs.display_path(path)
    if not recorded or recorded == here:
        return
    other = runs.project_path(recorded)
    try:
        same_name = other.is_file() and (read_yaml(other) or {}).get("name") == study.name
    except Exception:  # noqa: BLE001 - a file that no longer reads as a study does not own the folder
        same_name = False
    if same_name:
        raise StudyError(f"{here}: {runs.display_path(study.out_dir)} holds the results of {recorded}, another "
                         f"study file with the same name {study.name!r}; the two would move each other's steps "
                         "aside and mix their runs. Give one of them another `name:` (or run it with its own "
                         "--results)")


def _write_study_json(study: Study, path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """``results/<study>/study.json`` (every step's status) and the index page built from it."""
    from histlib.report import build_index

    runs.write_json(runs.project_path(study.out_dir / "study.json"),
                    {"study": study.name, "profile": study.profile, "file": runs.display_path(path),
                     "description": study.description, "steps": rows})
    try:
        build_index(study.out_dir)
    except Exception as e:  # the page is a view of the runs: a view that fails must not stop the steps it shows
        print(f"{runs.display_path(study.out_dir / 'index.html')}: not rebuilt ({type(e).__name__}: {e}); the "
              "steps go on, and study.json holds their state", file=sys.stderr)


def _print_plan_summary(study: Study, steps: list[Step], rows: list[dict[str, Any]], probe: bool = True) -> None:
    todo = [s for s, r in zip(steps, rows) if r["status"] == "to run"]
    print(f"\nstudy {study.name!r} (profile {study.profile}): {len(rows)} steps, {len(todo)} to run, "
          f"{len(rows) - len(todo)} finished with the same settings; reports -> {study.out_dir / 'notebooks'}")
    if not todo:
        return
    unit = "CPU" if study.profile == "demo" else "GPU"
    print(f"time of the steps to run, one after another ({unit}; measured on this machine before, else probed now):")
    rows_e = estimate(todo, study.results_root, probe=probe, study=study)
    for e in rows_e:
        print(f"  {e['stage']:<9} {e['steps']:>3} step(s)  {format_seconds(e['seconds']):>9}  ({e['basis']})")
    known = [e["seconds"] for e in rows_e if e["seconds"] is not None]
    if known:
        print(f"  {'total':<9} {len(todo):>3} step(s)  {format_seconds(sum(known)):>9}"
              + ("" if len(known) == len(rows_e) else "  (stages without an estimate left out)"))
