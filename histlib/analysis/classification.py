"""The classifier tables: mean ± std over seeds with bootstrap intervals, the paper's Table 1/2 for one dataset,
every variant, and each training set's paired difference to ``real``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from histlib.analysis import answer, tables
from histlib.analysis.rows import CLASSIFICATION_METRICS, TRAIN_SET_ORDER, classifier_runs, classify_rows
from histlib.classify import sets as classify_sets

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
# The study's answer: the paper's Tables 1-2, every variant, differences to real

PAPER_ROWS = ("real", "scratch", "pretrained", "frozen")


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
    for _, part in tables.table_groups(table):
        gan = [t for t in dict.fromkeys(part["train_set"]) if classify_sets.needs_synthetic(t)]
        if part["dataset"].iloc[0] == dataset and (train_set is None or train_set in gan) and (
                scored_on is None or part["scored_on"].iloc[0] == scored_on):
            return tables.numbers_table(part)
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
        :func:`histlib.analysis.tables.paired_differences_long` of :func:`histlib.analysis.answer.scored_table`
        (differences in percentage points; ``evaluated_on`` repeats ``scored_on``). Empty without real runs or
        predictions.
    """
    out = tables.paired_differences_long(answer.scored_table(df, n_boot=n_boot, ci=ci, seed=seed))
    if len(out):
        out.insert(out.columns.get_loc("scored_on") + 1, "evaluated_on", out["scored_on"])
    return out
