"""Plots of a study's results (notebook 06): classification per training set, GAN metrics per variant, training
curves. Re-exported by :mod:`histlib.analysis`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from histlib.analysis.gan import GAN_METRICS, gan_table
from histlib.analysis.rows import CLASSIFICATION_METRICS, TRAIN_SET_ORDER, classifier_runs, classify_rows, evaluated_on


def _empty_figure(message: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")
    plt.close(fig)  # out of pyplot's registry: the notebook displays the returned figure once
    return fig


def plot_classification(df: pd.DataFrame, metrics: Sequence[str] = CLASSIFICATION_METRICS):
    """Bars of the mean over seeds per training set (with the GAN variant that made its synthetic images) × model,
    one panel per dataset and metric, in %: dots are the seeds, error bars the standard deviation (only from two
    seeds on), the dotted line is chance; test numbers when every run has them, else validation (in the title)."""
    import matplotlib.pyplot as plt

    runs_df = classifier_runs(df)
    if len(runs_df) == 0:
        return _empty_figure("no classification runs in this study yet")
    datasets = list(dict.fromkeys(runs_df["dataset"]))
    fig, axes = plt.subplots(len(datasets), len(metrics), figsize=(6 * len(metrics), 3.8 * len(datasets)),
                             squeeze=False)
    classes = _class_counts(df)
    for i, dataset in enumerate(datasets):
        d = runs_df[runs_df["dataset"] == dataset]
        split = evaluated_on(d)
        keys = list(dict.fromkeys(zip(d["train_set"], d["variant"], d["model"])))
        for j, m in enumerate(metrics):
            ax = axes[i][j]
            col = f"{split}_{m}"
            for x, (ts, variant, model) in enumerate(keys):
                vals = 100 * d[(d["train_set"] == ts) & (d["variant"] == variant) & (d["model"] == model)][col].dropna()
                ax.bar(x, vals.mean(), yerr=vals.std(ddof=1) if len(vals) > 1 else None, capsize=4,
                       color=f"C{TRAIN_SET_ORDER.index(ts) if ts in TRAIN_SET_ORDER else 3}", alpha=0.75)
                ax.scatter(np.full(len(vals), x), vals, color="k", s=12, zorder=3)
                ax.text(x, 1, f"n={len(vals)}", ha="center", va="bottom", fontsize=7)
            ax.set_xticks(range(len(keys)))
            ax.set_xticklabels([f"{ts}\n{variant}\n{model}" if variant else f"{ts}\n{model}"
                                for ts, variant, model in keys], fontsize=7)
            if classes.get(dataset):
                ax.axhline(100 / classes[dataset], color="grey", ls=":", lw=1,
                           label=f"chance ({100 / classes[dataset]:.1f} %)")
                ax.legend(fontsize=7, loc="lower right")
            ax.set_ylim(0, 100)
            ax.set_ylabel(f"{m.replace('_', ' ')} (%)")
            ax.set_title(f"{dataset}: {m.replace('_', ' ')} on {split}")
    fig.tight_layout()
    plt.close(fig)  # out of pyplot's registry: the notebook displays the returned figure once
    return fig


def _class_counts(df: pd.DataFrame) -> dict[str, int]:
    """Number of classes per dataset, from the classifier runs' recall keys."""
    out = {}
    part = classify_rows(df)
    for ds, g in part.groupby("dataset"):
        cols = [c for c in g.columns if str(c).startswith("recall/") and g[c].notna().any()]
        if cols:
            out[ds] = len(cols)
    return out


def plot_gan_metrics(df: pd.DataFrame, stage: str = "generate"):
    """One panel per GAN metric: a bar per variant, grouped by dataset (and extractor when there are several)."""
    import matplotlib.pyplot as plt

    table = gan_table(df, stage=stage)
    if table.empty:
        return _empty_figure(f"no GAN metrics ({stage} stage) in this study yet")
    metrics = [m for m in GAN_METRICS if m in table.columns]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.6), squeeze=False)
    t = table.reset_index()
    t["label"] = t["dataset"] + "\n" + t["variant"]
    labels = list(dict.fromkeys(t["label"]))
    extractors = list(dict.fromkeys(t["extractor"]))
    width = 0.8 / len(extractors)
    for ax, m in zip(axes[0], metrics):
        for k, extractor in enumerate(extractors):
            vals = t[t["extractor"] == extractor].set_index("label")[m].reindex(labels).astype(float)
            ax.bar(np.arange(len(labels)) + (k - (len(extractors) - 1) / 2) * width, vals, width=width,
                   label=extractor, color=f"C{k}")
        ax.set_xticks(np.arange(len(labels)))
        ax.set_xticklabels(labels, fontsize=7, rotation=45, ha="right")
        ax.set_title(m + (" (lower is better)" if m == "fid" else ""))
    axes[0][-1].legend(fontsize=7, title="features")
    if (t["extractor"] == "random-test").any():
        fig.suptitle("'random-test' features come from an untrained network: plumbing check, not image quality",
                     fontsize=9, color="C3")
    fig.tight_layout()
    plt.close(fig)  # out of pyplot's registry: the notebook displays the returned figure once
    return fig


def plot_training_curves(stats: pd.DataFrame, keys: Sequence[str] = ("loss_g", "loss_d"), x: str | None = None,
                         stage: str | None = None):
    """Curves from :func:`collect_stats`: one panel per key, one line per (dataset, run).

    Args:
        stats: long frame of ``stats.jsonl`` records.
        keys: record keys to plot (absent keys are skipped).
        x: x-axis column; default ``kimg`` when present, else ``epoch``, else the record index.
        stage: restrict to one stage.
    """
    import matplotlib.pyplot as plt

    if stage is not None and len(stats):
        stats = stats[stats["stage"] == stage].dropna(axis=1, how="all")  # other stages' columns are all-NaN here
    keys = [k for k in keys if k in stats.columns and stats[k].notna().any()]
    if len(stats) == 0 or not keys:
        return _empty_figure(f"no training statistics{f' for stage {stage}' if stage else ''} in this study yet")
    if x is None:
        x = next((c for c in ("kimg", "epoch") if c in stats.columns), None)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.8 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for (st, ds, run), g in stats.groupby(["stage", "dataset", "run"], sort=False):
            xs = g[x] if x is not None else np.arange(len(g))
            ys = 100 * g[key] if "accuracy" in key else g[key]  # accuracies in %, as in every table
            ax.plot(xs, ys, marker=".", ms=3, label=f"{ds}/{run}" if stage else f"{st}: {ds}/{run}")
        ax.set_title(f"{key} (%)" if "accuracy" in key else key)
        ax.set_xlabel(x or "record")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    plt.close(fig)  # out of pyplot's registry: the notebook displays the returned figure once
    return fig


def plot_differences(table: pd.DataFrame, metrics: Sequence[str] = ("accuracy", "balanced_accuracy")):
    """Each row's difference to real with its 95 % interval (:func:`histlib.analysis.scored_table`), one line per
    dataset, scored set, training set and classifier, one panel per metric: a forest plot. Rows whose interval
    excludes 0 are drawn solid, the others hollow; fold-pooled rows (cross-validation) in black, after
    all the other rows, each with the folds' own view just under it in grey (the mean of the folds' differences
    and its corrected t interval: :func:`histlib.analysis.intervals.fold_interval`)."""
    import matplotlib.pyplot as plt

    if table.empty or "diff_accuracy" not in table or table["diff_accuracy"].notna().sum() == 0:
        return _empty_figure("no row to compare with real yet")
    rows = table[table["diff_accuracy"].notna()].copy()
    pooled = rows["folds"].notna() if "folds" in rows else pd.Series(False, index=rows.index)
    # folds first, their pooled rows after them: the eye reads the pooled interval against the folds'
    rows = pd.concat([rows[~pooled], rows[pooled]])
    is_pooled = rows.index.isin(pooled[pooled].index)
    labels = [f"{r.dataset} · {r.training_set} ({r.model})" + ("" if r.scored_on == "test" else f" · {r.scored_on}")
              for r in rows.itertuples()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 0.9 + 0.32 * len(rows)), squeeze=False,
                             sharey=True)
    y = np.arange(len(rows))[::-1]
    for ax, metric in zip(axes[0], metrics):
        d, lo, hi = (rows[f"diff_{metric}{s}"].to_numpy(float) for s in ("", "_low", "_high"))
        for yi, di, l, h, whole in zip(y, d, lo, hi, is_pooled):
            colour = "k" if whole else "C0"
            excludes = not np.isnan(l) and (l > 0 or h < 0)
            if not np.isnan(l):
                ax.plot([l, h], [yi, yi], color=colour, lw=2.2 if whole else 1.4)
            ax.plot(di, yi, "o", color=colour, mfc=colour if excludes else "white", ms=6)
        if f"folds_diff_{metric}" in rows:  # the folds' own view of a pooled row, just under it
            fd, flo, fhi = (rows[f"folds_diff_{metric}{s}"].to_numpy(float) for s in ("", "_low", "_high"))
            for yi, di, l, h in zip(y, fd, flo, fhi):
                if not np.isnan(di):
                    if not np.isnan(l):
                        ax.plot([l, h], [yi - 0.3, yi - 0.3], color="grey", lw=1.2)
                    ax.plot(di, yi - 0.3, "D", color="grey", ms=4,
                            label="folds' own (corrected t)" if not ax.get_legend_handles_labels()[1] else None)
            if ax.get_legend_handles_labels()[1]:
                ax.legend(loc="lower right", fontsize=7, frameon=False)
        ax.axvline(0, color="grey", lw=1, ls=":")
        ax.set_xlabel(f"Δ {metric.replace('_', ' ')} vs real (points, 95 % interval)")
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=7)
    fig.tight_layout()
    plt.close(fig)  # out of pyplot's registry: the notebook displays the returned figure once
    return fig
