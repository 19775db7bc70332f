"""Reading a study's results folder: one row per finished run (``metrics.json``), the ``stats.jsonl`` lines, and
what each stage has produced.

Only the contract files of the run directories are read (:mod:`histlib.runs`), never notebook outputs or checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from histlib import runs
from histlib.classify import sets as classify_sets

# Execution order of the stages (the same names as the study runner's; repeated here so that the analysis never
# imports the runner).
STAGE_ORDER = ("data", "base_gan", "finetune", "generate", "classify", "analysis")
RESULT_STAGES = ("base_gan", "finetune", "generate", "classify")  # stages that write run directories
CLASSIFY_RUN = classify_sets.RUN_NAME  # <train_set>[__<variant>]__<model>__seed<k>, train_set incl. real@<fraction>
ID_COLUMNS = ("stage", "dataset", "run")
_SKIP_DIRS = {"notebooks", "analysis"}  # folders of results/<study>/ that are not datasets


# ----------------------------------------------------------------------------------------------------------------
# Reading the results tree


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _run_dirs(study_dir: Path) -> Iterable[tuple[str, str, str, Path]]:
    """``(dataset, stage, run, path)`` of every ``<dataset>/<stage>/<run>/`` folder, sorted."""
    for ds in sorted(p for p in study_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if ds.name in _SKIP_DIRS:
            continue
        for stage in sorted(p for p in ds.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for run in sorted(p for p in stage.iterdir() if p.is_dir() and not p.name.startswith(".")):
                yield ds.name, stage.name, run.name, run


def _check_study_dir(study_dir: str | os.PathLike) -> Path:
    path = runs.project_path(study_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: study results folder not found (expected results/<study>/ written by "
                                "'python -m histlib study run')")
    return path


def parse_classify_run(name: str) -> dict[str, Any] | None:
    """``'real+synthetic__freeze_d1__resnet34__seed2'`` → ``{'train_set': 'real+synthetic', 'variant': 'freeze_d1',
    'model': 'resnet34', 'seed': 2}`` (``variant`` None for ``<train_set>__<model>__seed<k>``).

    Returns None when ``name`` follows neither pattern.
    """
    m = CLASSIFY_RUN.match(name)
    if not m:
        return None
    return {"train_set": m["train_set"], "variant": m["variant"], "model": m["model"], "seed": int(m["seed"])}


def collect_metrics(study_dir: str | os.PathLike, include_lists: bool = False) -> pd.DataFrame:
    """One row per finished run (a run directory holding ``metrics.json``) of a study.

    Args:
        study_dir: ``results/<study>`` (relative to the project root or absolute).
        include_lists: keep non-scalar values (confusion matrices, class lists) as Python objects; by default only
            numbers, strings and booleans are kept.

    Returns:
        Columns ``stage, dataset, run, path`` then the flat metric keys (``accuracy``, ``recall/<class>``,
        ``inception/fid`` …). Classification runs also get ``train_set``, ``model`` and ``seed`` parsed from the
        run name when ``metrics.json`` lacks them. Empty (with the id columns) when no run has finished.

    Raises:
        FileNotFoundError: ``study_dir`` does not exist.
        ValueError: a ``metrics.json`` is not valid JSON or not an object (the message names the file).
    """
    root = _check_study_dir(study_dir)
    rows = []
    for dataset, stage, run, path in _run_dirs(root):
        mfile = path / "metrics.json"
        if not mfile.is_file():
            continue
        metrics = runs.read_json(mfile)
        if not isinstance(metrics, Mapping):
            raise ValueError(f"{mfile}: expected a JSON object of metrics, got {type(metrics).__name__}")
        flat = runs.flatten(metrics)
        row: dict[str, Any] = {"stage": stage, "dataset": dataset, "run": run,
                               "path": path.relative_to(root).as_posix()}
        if stage == "classify":
            for k, v in (parse_classify_run(run) or {}).items():
                row[k] = flat.pop(k, v)
        for k, v in flat.items():
            if k in row:  # a metric named like an id column must not overwrite it
                k = f"metrics/{k}"
            if include_lists or _is_scalar(v):
                row[k] = v
        rows.append(row)
    if not rows:
        out = pd.DataFrame(columns=[*ID_COLUMNS, "path"])
    else:
        out = pd.DataFrame(rows)
    out.attrs["study_dir"] = root.as_posix()
    return out


def collect_stats(study_dir: str | os.PathLike, stage: str | Sequence[str] | None = None) -> pd.DataFrame:
    """All ``stats.jsonl`` lines of a study in one long frame (one row per tick / epoch).

    Args:
        study_dir: ``results/<study>``.
        stage: restrict to this stage (or these stages); None = all.

    Returns:
        Columns ``stage, dataset, run`` plus the scalar keys of the records (``kimg``, ``loss_g``, ``epoch`` …).
    """
    root = _check_study_dir(study_dir)
    stages = {stage} if isinstance(stage, str) else (set(stage) if stage is not None else None)
    frames = []
    for dataset, st, run, path in _run_dirs(root):
        if stages is not None and st not in stages:
            continue
        sfile = path / "stats.jsonl"
        if not sfile.is_file():
            continue
        records = [{k: v for k, v in runs.flatten(r).items() if _is_scalar(v)} for r in runs.read_jsonl(sfile)]
        if records:
            df = pd.DataFrame(records)
            df.insert(0, "run", run)
            df.insert(0, "dataset", dataset)
            df.insert(0, "stage", st)
            frames.append(df)
    if not frames:
        return pd.DataFrame(columns=list(ID_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def stage_status(study_dir: str | os.PathLike, df: pd.DataFrame | None = None) -> pd.DataFrame:
    """What a study has produced: per stage and dataset, finished and unfinished runs.

    The expected stages and datasets come from ``<study_dir>/study.json`` (written by the study runner) when it
    exists, else from the stages with a run directory; a stage the study plans but that has no finished run is
    reported as ``missing``.

    Returns:
        Columns ``stage, dataset, finished, unfinished, status`` (``ok``, ``partial``, ``missing``).
    """
    root = _check_study_dir(study_dir)
    df = collect_metrics(root) if df is None else df
    found: dict[tuple[str, str], list[int]] = {}
    for dataset, stage, _, path in _run_dirs(root):
        counts = found.setdefault((stage, dataset), [0, 0])
        counts[0 if (path / "metrics.json").is_file() else 1] += 1
    expected: set[tuple[str, str]] = set()
    study_json = root / "study.json"
    if study_json.is_file():
        for step in runs.read_json(study_json).get("steps", []):
            if step.get("stage") in RESULT_STAGES:
                expected.add((step["stage"], step.get("dataset", "")))
    rows = []
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    for stage, dataset in sorted(set(found) | expected, key=lambda k: (order.get(k[0], 99), k[1])):
        fin, unfin = found.get((stage, dataset), [0, 0])
        status = "missing" if fin == 0 else ("partial" if unfin else "ok")
        rows.append({"stage": stage, "dataset": dataset, "finished": fin, "unfinished": unfin, "status": status})
    return pd.DataFrame(rows, columns=["stage", "dataset", "finished", "unfinished", "status"])


def describe_missing(status: pd.DataFrame, wanted: Iterable[str] = RESULT_STAGES) -> str:
    """One human sentence per stage without finished runs (``''`` when every wanted stage has results)."""
    have = set(status.loc[status["finished"] > 0, "stage"]) if len(status) else set()
    lines = []
    for stage in wanted:
        if stage in have:
            part = status[(status["stage"] == stage) & (status["status"] != "ok")]
            for _, r in part.iterrows():
                lines.append(f"{stage} / {r['dataset']}: {r['status']} ({r['finished']} finished, "
                             f"{r['unfinished']} without metrics.json)")
        else:
            lines.append(f"{stage}: no finished run in this study (not run yet, or not among the study's stages)")
    return "\n".join(lines)
