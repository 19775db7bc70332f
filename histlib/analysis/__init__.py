"""Paper-layout tables, bootstrap confidence intervals and plots of a study's results (notebook 06).

The study-level functions (notebook 06) read only the contract files of the run directories (:mod:`histlib.runs`):
``results/<study>/<dataset>/<stage>/<run>/metrics.json`` and ``stats.jsonl`` — never notebook outputs, never
checkpoints — so the analysis can be re-run on a copied ``results/`` folder without the data or a GPU. The
fine-tuning report of notebook 03 (one run's ``finetune.json``) is in :mod:`histlib.gan.finetune_report`.

Stages and their runs:
    ``base_gan``, ``finetune``  one run per GAN variant (``default``, ``scratch``, ``pretrained``, ``freeze_d1`` …);
    ``generate``                one run per variant: GAN metrics of the generated set, keys ``<extractor>/<metric>``
                                (the extractor is part of every key, so a FID from a random test network can never
                                be mistaken for an Inception FID);
    ``classify``                one run per ``<train_set>__<model>__seed<k>``: ``accuracy``, ``balanced_accuracy``.

A study may lack some stages (a study file lists the stages it runs): the functions return empty frames for
what is absent and :func:`stage_status` says what is missing.

Submodules, lowest first: :mod:`~histlib.analysis.rows` (the classifier runs, one row each),
:mod:`~histlib.analysis.gan` (the GAN-metric table), :mod:`~histlib.analysis.intervals` (group-aware paired
bootstrap intervals), :mod:`~histlib.analysis.curve` (the real-data learning curve and a row's worth in real
images), :mod:`~histlib.analysis.answer` (the one frame behind Table 1/2, the index page and the exported tables)
and :mod:`~histlib.analysis.plots`; their public functions are re-exported here. None of them imports the package
back; the learning curve's figure (:mod:`histlib.learning_curve`) sits above it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from histlib import runs
from histlib.analysis import answer, curve, intervals  # noqa: F401 (analysis.intervals for users of the package)
from histlib.analysis.answer import runs_table, scored_table  # noqa: F401 (notebook 06 and the index page)
from histlib.analysis.gan import GAN_METRICS, gan_metric_columns, gan_table  # noqa: F401 (the package's names)
from histlib.analysis.plots import plot_classification, plot_gan_metrics, plot_training_curves  # noqa: F401
from histlib.analysis.rows import (  # noqa: F401 (the package's names)
    CLASSIFICATION_METRICS,
    TRAIN_SET_ORDER,
    classifier_runs,
    classify_rows,
    evaluated_on,
)
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


# ----------------------------------------------------------------------------------------------------------------
# Statistics


class BootstrapCI(NamedTuple):
    """Mean of the values and the bounds of its percentile-bootstrap confidence interval."""

    mean: float
    low: float
    high: float


def bootstrap_ci(values: Sequence[float] | np.ndarray, n: int = 10000, ci: float = 0.95, seed: int = 0,
                 chunk: int = 1000) -> BootstrapCI:
    """Percentile bootstrap confidence interval of the mean.

    Resamples the values with replacement ``n`` times, and takes the ``(1 - ci) / 2`` and ``(1 + ci) / 2``
    quantiles of the resampled means (Efron & Tibshirani 1993, §13.3). With the three seeds of the paper the
    interval is crude (at most 10 distinct resampled means); it is reported beside the standard deviation, not
    instead of it.

    Args:
        values: the observations (NaNs are dropped).
        n: number of bootstrap resamples.
        ci: confidence level in (0, 1).
        seed: seed of the resampling.
        chunk: resamples drawn at a time (bounds memory for long inputs).

    Returns:
        ``BootstrapCI(mean, low, high)``; all NaN when no finite value is given, ``low == high == mean`` for one.
    """
    if not 0 < ci < 1:
        raise ValueError(f"bootstrap_ci: ci={ci!r}; expected a confidence level in (0, 1)")
    if int(n) < 1:
        raise ValueError(f"bootstrap_ci: n={n!r}; expected a positive number of resamples")
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return BootstrapCI(math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if x.size == 1:
        return BootstrapCI(mean, mean, mean)
    rng = np.random.default_rng(seed)
    means = np.empty(int(n))
    for start in range(0, int(n), chunk):
        stop = min(int(n), start + chunk)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))  # [chunk, m]
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1 - ci) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return BootstrapCI(mean, float(low), float(high))


# ----------------------------------------------------------------------------------------------------------------
# Tables


def classification_table(df: pd.DataFrame, metrics: Sequence[str] = CLASSIFICATION_METRICS,
                         bootstrap: bool = False, n_boot: int = 10000, ci: float = 0.95) -> pd.DataFrame:
    """The paper's classification table: rows train set × model, per dataset the mean ± std over seeds.

    Args:
        df: :func:`collect_metrics` output (other stages are ignored).
        metrics: metric columns to summarise.
        bootstrap: add ``ci_low`` / ``ci_high`` columns (percentile bootstrap of the mean, :func:`bootstrap_ci`).
        n_boot, ci: bootstrap settings.

    Returns:
        Numbers, index ``(train_set, model)``, columns ``(dataset, metric, stat)`` with stat ``mean``, ``std``
        (sample standard deviation, ddof=1: NaN for one seed), ``n`` (seeds) and optionally ``ci_low``,
        ``ci_high``. Empty when there is no classification run. Format it with :func:`format_mean_std`.
    """
    part = classify_rows(df)
    present = [m for m in metrics if m in part.columns]
    if len(part) == 0 or not present:
        return pd.DataFrame()
    records = {}
    for (train_set, model, dataset), g in part.groupby(["train_set", "model", "dataset"], sort=False):
        for m in present:
            vals = pd.to_numeric(g[m], errors="coerce").dropna().to_numpy(dtype=np.float64)
            cell = {"mean": float(vals.mean()) if vals.size else math.nan,
                    "std": float(vals.std(ddof=1)) if vals.size > 1 else math.nan,
                    "n": int(vals.size)}
            if bootstrap:
                b = bootstrap_ci(vals, n=n_boot, ci=ci)
                cell.update(ci_low=b.low, ci_high=b.high)
            for stat, v in cell.items():
                records.setdefault((train_set, model), {})[(dataset, m, stat)] = v
    # Paper order: real, synthetic, real + synthetic (then any other set), models in order of appearance.
    models = list(dict.fromkeys(part["model"]))
    rank = {t: i for i, t in enumerate(TRAIN_SET_ORDER)}
    keys = sorted(records, key=lambda k: (rank.get(k[0], len(rank)), k[0], models.index(k[1])))
    table = pd.DataFrame.from_dict({k: records[k] for k in keys}, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["train_set", "model"])
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["dataset", "metric", "stat"])
    datasets = list(dict.fromkeys(part["dataset"]))
    stats = ["mean", "std", "n"] + (["ci_low", "ci_high"] if bootstrap else [])
    cols = [(d, m, s) for d in datasets for m in present for s in stats if (d, m, s) in table.columns]
    return table[cols]


def format_mean_std(table: pd.DataFrame, scale: float = 100.0, digits: int = 1) -> pd.DataFrame:
    """Text version of a ``(…, metric, stat)`` table: one ``"92.3 ± 0.4"`` cell per metric (× ``scale``).

    One seed gives ``"92.3"`` (no spread to report); bootstrap columns, when present, add ``" [91.8, 92.9]"``.
    """
    if table.empty:
        return pd.DataFrame()
    out = {}
    groups = list(dict.fromkeys(c[:-1] for c in table.columns))
    for key in groups:
        mean = table[(*key, "mean")] * scale
        std = table[(*key, "std")] * scale if (*key, "std") in table.columns else pd.Series(np.nan, table.index)
        cells = []
        for i in table.index:
            m, s = mean.loc[i], std.loc[i]
            if pd.isna(m):
                cells.append("")
                continue
            text = f"{m:.{digits}f}" + ("" if pd.isna(s) else f" ± {s:.{digits}f}")
            if (*key, "ci_low") in table.columns and not pd.isna(table.loc[i, (*key, "ci_low")]):
                lo, hi = table.loc[i, (*key, "ci_low")] * scale, table.loc[i, (*key, "ci_high")] * scale
                text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
            cells.append(text)
        out[key] = cells
    res = pd.DataFrame(out, index=table.index)
    res.columns = pd.MultiIndex.from_tuples(res.columns, names=list(table.columns.names[:-1]))
    return res


# ----------------------------------------------------------------------------------------------------------------
# The study's answer: the paper's Tables 1-2, every variant, differences to real, GAN metrics beside classifiers

PAPER_ROWS = ("real", "scratch", "pretrained", "frozen")
WORTH, WORTH_NOTE = answer.WORTH, answer.WORTH_NOTE  # Table 1/2 column beside a learning curve
FIDELITY_METRICS = ("agreement", "balanced_agreement")


def _mean(values: pd.Series) -> float:
    v = pd.to_numeric(values, errors="coerce").dropna()
    return float(v.mean()) if len(v) else math.nan


def best_frozen_variant(runs_df: pd.DataFrame, train_set: str) -> str | None:
    """The ``freeze_*`` variant with the highest mean *validation* accuracy (over models and seeds) for
    ``train_set``: chosen on validation, so the test numbers stay untouched by the choice."""
    part = runs_df[(runs_df["train_set"] == train_set) & runs_df["variant"].str.startswith("freeze_")]
    if len(part) == 0:
        return None
    means = part.groupby("variant")["val_accuracy"].mean()
    return str(means.idxmax())


def paper_table(df: pd.DataFrame, dataset: str, train_set: str | None = None,
                scored_on: str | None = None) -> pd.DataFrame:
    """The publication's Table 1/2 for one target dataset, as numbers (the index page shows the same rows).

    Rows: ``N real``, ``N real + stain augmentation`` (the ``real+stain`` yardstick, when trained), ``N generated
    with non-pretrained`` (variant ``scratch``), ``N generated with pretrained``, ``N generated with freezing <best>``
    (the ``freeze_*`` variant with the highest *validation* accuracy), any other variant, selection or amount; for a
    training set with real images the generated rows read ``N real + N generated …``, with stain augmentation ``… +
    stain augmentation`` (:mod:`histlib.analysis.answer`).

    Args:
        df: :func:`collect_metrics` output.
        dataset: the target dataset.
        train_set: the training set of the generated rows (default: the first one the dataset has).
        scored_on: ``'test'``, ``'extra/<name>'`` or ``'val'`` (default: the dataset's first held-out set).

    Returns:
        Columns ``(classifier, Acc | Bal. Acc)`` in % (mean over seeds), and ``worth in real images`` beside a
        learning curve; ``attrs``: ``evaluated_on`` (the scored set), ``best_frozen``, ``train_set``, ``dataset``,
        ``n_seeds``, ``worth_note``, ``caption``. Empty when the dataset has no classifier run.
    """
    table = answer.scored_table(df, n_boot=0)
    for _, part in answer.table_groups(table):
        gan = [t for t in dict.fromkeys(part["train_set"]) if classify_sets.needs_synthetic(t)]
        if part["dataset"].iloc[0] == dataset and (train_set is None or train_set in gan) and (
                scored_on is None or part["scored_on"].iloc[0] == scored_on):
            return answer.numbers_table(part)
    return pd.DataFrame()


def variant_table(df: pd.DataFrame, dataset: str | None = None) -> pd.DataFrame:
    """Every training set and GAN variant: mean ± std over seeds (``n``) per classifier, on validation and (when
    measured) on test, in %.

    Returns:
        Index ``(dataset, train_set, variant)``, columns ``(model, metric, stat)`` with metric ``val_accuracy``,
        ``val_balanced_accuracy``, ``test_accuracy``, ``test_balanced_accuracy`` and stat ``mean``, ``std`` (NaN for
        fewer than two seeds), ``n``.
    """
    runs_df = classifier_runs(df)
    if dataset is not None:
        runs_df = runs_df[runs_df["dataset"] == dataset]
    if len(runs_df) == 0:
        return pd.DataFrame()
    metrics = [m for m in ("val_accuracy", "val_balanced_accuracy", "test_accuracy", "test_balanced_accuracy")
               if runs_df[m].notna().any()]
    rank = {t: i for i, t in enumerate(TRAIN_SET_ORDER)}
    records: dict[tuple, dict] = {}
    for (ds, ts, variant, model), g in runs_df.groupby(["dataset", "train_set", "variant", "model"], sort=False):
        for m in metrics:
            v = g[m].dropna().to_numpy(dtype=np.float64) * 100
            cell = {"mean": float(v.mean()) if v.size else math.nan,
                    "std": float(v.std(ddof=1)) if v.size > 1 else math.nan, "n": int(v.size)}
            for stat, x in cell.items():
                records.setdefault((ds, ts, variant), {})[(model, m, stat)] = x
    keys = sorted(records, key=lambda k: (k[0], rank.get(k[1], 9), k[2] != "", k[2] != "scratch",
                                          k[2] != "pretrained", k[2]))
    table = pd.DataFrame.from_dict({k: records[k] for k in keys}, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["dataset", "train_set", "variant"])
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["model", "metric", "stat"])
    return table


def paired_differences(df: pd.DataFrame, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Each training-set row against ``real`` on the same images, per dataset, scored set and classifier.

    The difference of the seed-mean accuracy (and balanced accuracy) with its group bootstrap interval: the split's
    groups (source image, slide, cluster) are resampled, one draw for both rows (paired), and each row's seeds on
    their own (:mod:`histlib.analysis.intervals`). ``seeds_same_sign`` counts the seeds whose own difference (seed
    k against real seed k) has the sign of the mean difference.

    Returns:
        :func:`histlib.analysis.answer.paired_differences_long` of :func:`histlib.analysis.answer.scored_table`
        (differences in percentage points; ``evaluated_on`` repeats ``scored_on``). Empty without real runs or
        predictions.
    """
    out = answer.paired_differences_long(answer.scored_table(df, n_boot=n_boot, ci=ci, seed=seed))
    if len(out):
        out.insert(out.columns.get_loc("scored_on") + 1, "evaluated_on", out["scored_on"])
    return out


def fidelity_table(df: pd.DataFrame) -> pd.DataFrame:
    """Class fidelity of each variant's generated images (generate stage): overall and balanced agreement in %,
    per-class agreement, the number of warnings; index ``(dataset, variant)``."""
    if df is None or len(df) == 0 or "stage" not in df:
        return pd.DataFrame()
    part = df[df["stage"] == "generate"]
    if "fidelity/agreement" not in part:
        return pd.DataFrame()
    part = part[part["fidelity/agreement"].notna()]
    rows = {}
    for _, r in part.iterrows():
        row = {"agreement": 100 * r["fidelity/agreement"], "balanced_agreement": 100 * r["fidelity/balanced_agreement"],
               "chance": 100 * r.get("fidelity/chance", math.nan),
               "classifier_val_balanced_accuracy": 100 * r.get("fidelity/classifier_val_balanced_accuracy", math.nan)}
        for c in [c for c in r.index if str(c).startswith("fidelity/agreement/") and pd.notna(r[c])]:
            row[f"agreement {c.split('/', 2)[2]}"] = 100 * r[c]
        rows[(r["dataset"], r["run"])] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["dataset", "variant"])
    return table


def fidelity_warnings(study_dir: str | os.PathLike) -> dict[tuple[str, str], list[str]]:
    """``{(dataset, variant): [warning, ...]}`` of every generate run whose class fidelity raised warnings."""
    root = _check_study_dir(study_dir)
    out = {}
    for dataset, stage, run, path in _run_dirs(root):
        if stage == "generate" and (path / "metrics.json").is_file():
            w = runs.read_json(path / "metrics.json").get("fidelity/warnings")
            if w:
                out[(dataset, run)] = list(w)
    return out


def gan_vs_classifier(df: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and variant: the GAN metrics of its generated images (every extractor's FID, precision, recall,
    density, coverage; class fidelity) beside the mean accuracy of the classifiers trained on them (over models and
    seeds, per synthetic training set, on the split of :func:`evaluated_on`)."""
    runs_df = classifier_runs(df)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    gan = gan_table(df)
    if not gan.empty:
        for (ds, variant, extractor), r in gan.iterrows():
            for m in GAN_METRICS:
                if m in r and pd.notna(r[m]):
                    rows.setdefault((ds, variant), {})[f"{extractor}/{m}"] = float(r[m])
    fid = fidelity_table(df)
    for (ds, variant), r in fid.iterrows():
        for m in FIDELITY_METRICS:
            rows.setdefault((ds, variant), {})[f"fidelity/{m}"] = float(r[m])
    for ds, g in runs_df.groupby("dataset", sort=False):
        split = evaluated_on(g)
        for (ts, variant), part in g[g["train_set"] != "real"].groupby(["train_set", "variant"], sort=False):
            rows.setdefault((ds, variant), {})[f"{ts} {split}_accuracy"] = 100 * _mean(part[f"{split}_accuracy"])
        real = g[g["train_set"] == "real"]
        for (ds2, _variant), row in rows.items():
            if ds2 == ds and len(real):
                row[f"real {split}_accuracy"] = 100 * _mean(real[f"{split}_accuracy"])
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["dataset", "variant"])
    return table


def rank_correlations(table: pd.DataFrame) -> pd.DataFrame:
    """Spearman rank correlation over variants between each GAN metric and each classifier accuracy column of
    :func:`gan_vs_classifier`, per dataset (``n`` variants; no correlation from fewer than 3)."""
    from scipy.stats import spearmanr

    if table.empty:
        return pd.DataFrame()
    gan_cols = [c for c in table.columns if "/" in c]
    acc_cols = [c for c in table.columns if c.endswith("_accuracy") and not c.startswith("real ")]
    rows = []
    for ds, g in table.groupby(level="dataset", sort=False):
        for gc in gan_cols:
            for ac in acc_cols:
                both = g[[gc, ac]].dropna()
                rho = spearmanr(both[gc], both[ac]).statistic if len(both) >= 3 else math.nan
                rows.append({"dataset": ds, "gan_metric": gc, "classifier": ac, "spearman_rho": rho,
                             "n_variants": len(both)})
    return pd.DataFrame(rows)


def format_percent_table(table: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """Text version of a ``(…, stat)`` table from :func:`variant_table`: ``"92.3 ± 0.4 (n=3)"``, ``"92.3 (n=1)"``
    with one seed, ``"—"`` where nothing was measured."""
    if table.empty:
        return pd.DataFrame()
    out = {}
    for key in dict.fromkeys(c[:-1] for c in table.columns):
        cells = []
        for i in table.index:
            m, s, n = (table.loc[i, (*key, st)] for st in ("mean", "std", "n"))
            if pd.isna(m):
                cells.append("—")
                continue
            cells.append(f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if pd.notna(s) else "") + f" (n={int(n)})")
        out[key] = cells
    res = pd.DataFrame(out, index=table.index)
    res.columns = pd.MultiIndex.from_tuples(res.columns, names=list(table.columns.names[:-1]))
    return res


class HTML:
    """Rich display of an HTML fragment in notebooks (and its text in a terminal)."""

    def __init__(self, html: str, text: str = ""):
        self.html, self.text = html, text or html

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.text


def paper_tables(df: pd.DataFrame, table: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Every Table 1/2 as numbers, ``{'<dataset>[ (<training set>)][ · <scored set>]': table}``
    (:func:`histlib.analysis.answer.paper_tables`); ``table``: a :func:`scored_table` already computed."""
    return answer.paper_tables(answer.scored_table(df) if table is None else table)


def _caption(table: pd.DataFrame) -> str:
    """The caption of a :func:`paper_table`: the scored set, its images and groups, the statistics, the chosen
    variant and the worth column's meaning."""
    return table.attrs.get("caption", "")


def paper_tables_view(df: pd.DataFrame, table: pd.DataFrame | None = None) -> HTML:
    """Every Table 1/2 with its one-sentence answer and a caption saying the scored set, its images and groups, the
    seeds and the chosen variant (the index page shows the same). ``table``: a :func:`scored_table` already
    computed from ``df``."""
    return HTML(*answer.paper_tables_html(answer.scored_table(df) if table is None else table))


def run_overview(df: pd.DataFrame) -> pd.DataFrame:
    """One line per finished run with the few numbers that identify it (not every metric key): the stage, dataset,
    run and, where present, kimg, accuracy and test accuracy, class fidelity, FID."""
    if df is None or len(df) == 0:
        return pd.DataFrame(columns=list(ID_COLUMNS))
    keep = [c for c in ("kimg", "img_per_s", "accuracy", "balanced_accuracy", "test_accuracy", "fidelity/agreement",
                        "n_images") if c in df.columns]
    keep += [c for c in df.columns if str(c).endswith("/fid") and "/per_class/" not in str(c)]
    out = df[[*ID_COLUMNS, *keep]].copy()
    return out.set_index(list(ID_COLUMNS)).round(4)



# ----------------------------------------------------------------------------------------------------------------
# Writing


def one_header(table: pd.DataFrame) -> pd.DataFrame:
    """The table with its index as columns and one header row (multi-level headers joined with ``' / '``), as every
    exported CSV and Markdown table is written."""
    flat = table.reset_index() if any(n is not None for n in table.index.names) else table.copy()

    def name(c: Any) -> str:
        return " / ".join(str(x) for x in c if str(x)) if isinstance(c, tuple) else str(c)

    flat.columns = [name(c) for c in flat.columns]
    return flat


def to_markdown(table: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub-flavoured Markdown table (index included; multi-level headers joined with ``' / '``)."""
    if table.empty:
        return "(no rows)\n"
    flat = one_header(table)

    def cell(v: Any) -> str:
        if v is pd.NA or v is None:
            return ""
        if isinstance(v, float):
            return "" if math.isnan(v) else format(v, floatfmt)
        return str(v).replace("|", "\\|")

    header = list(flat.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in flat.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def analysis_dir(study_dir: str | os.PathLike) -> Path:
    """``<study_dir>/analysis``, where notebook 06 writes its tables."""
    return runs.project_path(study_dir) / "analysis"


def write_tables(tables: Mapping[str, pd.DataFrame], out_dir: str | os.PathLike,
                 csv_only: Iterable[str] = ()) -> list[Path]:
    """Writes each table as ``<name>.csv`` and ``<name>.md`` under ``out_dir`` (atomically, via ``histlib.runs``),
    each with one header row (:func:`one_header`); the tables named in ``csv_only`` as CSV only.

    Empty tables are skipped. Returns the written paths.
    """
    out = runs.project_path(out_dir)
    written = []
    for name, table in tables.items():
        if table is None or table.empty:
            continue
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_.")
        if not name:
            raise ValueError("write_tables: a table name must contain letters or digits")
        written.append(runs.atomic_write_text(out / f"{name}.csv", one_header(table).to_csv(index=False)))
        if name not in set(csv_only):
            written.append(runs.atomic_write_text(out / f"{name}.md", to_markdown(table)))
    return written


def study_tables(df: pd.DataFrame, table: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Every table notebook 06 exports, by file name. ``classification`` (every training set and variant) and
    ``classification_paper`` (Table 1/2's rows) are :func:`histlib.analysis.answer.scored_table`, the frame the
    index page shows: the held-out sets' numbers per variant, the best frozen variant chosen on validation, with
    the paired group intervals against real; ``runs`` has one line per classifier run."""
    table = answer.scored_table(df) if table is None else table
    full = variant_table(df)
    gan_vs_cls = gan_vs_classifier(df)
    return {"classification": table, "classification_paper": table[table["paper_row"]] if len(table) else table,
            "learning_curve": curve.learning_curve(df),
            "differences_to_real": answer.paired_differences_long(table), "runs": answer.runs_table(df),
            "variants": full, "gan": gan_table(df), "gan_vs_classifier": gan_vs_cls,
            "rank_correlations": rank_correlations(gan_vs_cls), "fidelity": fidelity_table(df)}


def write_study_tables(study_dir: str | os.PathLike, df: pd.DataFrame | None = None,
                       table: pd.DataFrame | None = None) -> list[Path]:
    """Writes :func:`study_tables` and the stage status to ``<study_dir>/analysis/`` (``runs`` as CSV only).
    ``df``, ``table``: :func:`collect_metrics` and :func:`scored_table` of the study when already computed."""
    df = collect_metrics(study_dir) if df is None else df
    tables = {**study_tables(df, table), "status": stage_status(study_dir, df)}
    return write_tables(tables, analysis_dir(study_dir), csv_only=("runs",))
