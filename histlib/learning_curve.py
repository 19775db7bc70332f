"""The real-data learning curve and what a training set is worth in real images (read from ``metrics.json`` only).

The curve: accuracy of the ``real`` classifiers against the number of real training images, over the nested
fractions of the real train split (``real@<f>`` runs, ``histlib.classify.sets``) and the full set, per dataset and
classifier, on the split Table 1/2 reports (test when every run has it, else validation).

A training set's worth: the number of real images at which the curve reaches that set's mean accuracy, by linear
interpolation between the curve's points (the first crossing when the curve is not monotonic), minus the real
images the set itself holds: "worth +N real images". A set above the full real set's accuracy is "beyond the
curve" (no real-data point reaches it); one below the smallest fraction's accuracy is "below the curve".
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from histlib import runs
from histlib.classify import sets as classify_sets

BEYOND = "beyond the curve"
BELOW = "below the curve"
PNG_NAME = "learning_curve.png"


def _curve_runs(runs_df: pd.DataFrame) -> pd.DataFrame:
    """The runs of the curve (``real`` and ``real@<f>``) with their fraction."""
    part = runs_df[runs_df["train_set"].map(lambda t: t == "real" or str(t).startswith("real@"))].copy()
    part["fraction"] = part["train_set"].map(classify_sets.label_fraction)
    return part


def learning_curve(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, classifier, fraction of the real train split), smallest fraction first.

    Args:
        df: ``histlib.analysis.collect_metrics`` output.

    Returns:
        Columns ``dataset, model, fraction, n_real`` (mean real training images over seeds), ``accuracy``,
        ``accuracy_std``, ``balanced_accuracy`` (in %, mean over seeds), ``n_seeds``, ``evaluated_on``. Empty when
        no dataset has runs on a fraction below 1.
    """
    from histlib import analysis

    runs_df = analysis.classifier_runs(df)
    rows = []
    for ds, g in runs_df.groupby("dataset", sort=False):
        split = analysis.evaluated_on(g)
        curve = _curve_runs(g)
        if not (curve["fraction"] < 1).any():
            continue
        for (model, frac), part in curve.groupby(["model", "fraction"], sort=True):
            acc = 100 * part[f"{split}_accuracy"].dropna()
            rows.append({"dataset": ds, "model": model, "fraction": float(frac),
                         "n_real": float(part["n_train_real"].mean()), "accuracy": float(acc.mean()),
                         "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else math.nan,
                         "balanced_accuracy": float(100 * part[f"{split}_balanced_accuracy"].mean()),
                         "n_seeds": int(len(acc)), "evaluated_on": split})
    return pd.DataFrame(rows, columns=["dataset", "model", "fraction", "n_real", "accuracy", "accuracy_std",
                                       "balanced_accuracy", "n_seeds", "evaluated_on"])


def equivalent_real_images(n_real: np.ndarray, accuracy: np.ndarray, target: float) -> float | str:
    """The number of real images at which the curve ``(n_real, accuracy)`` reaches ``target``.

    Linear interpolation between consecutive points in order of ``n_real`` (the first crossing); :data:`BEYOND` when
    ``target`` is above the accuracy of the largest set, :data:`BELOW` when it is below the smallest set's.
    """
    order = np.argsort(np.asarray(n_real, dtype=np.float64), kind="stable")
    n = np.asarray(n_real, dtype=np.float64)[order]
    a = np.asarray(accuracy, dtype=np.float64)[order]
    if len(n) == 0 or not math.isfinite(target):
        return math.nan
    if target > a[-1]:
        return BEYOND
    if target < a[0]:
        return BELOW
    if target == a[0]:
        return float(n[0])
    for i in range(1, len(n)):
        if a[i - 1] < target <= a[i]:
            return float(n[i - 1] + (target - a[i - 1]) / (a[i] - a[i - 1]) * (n[i] - n[i - 1]))
    return float(n[-1])  # target equals the full set's accuracy after a dip: reached only at the end


def extra_real_images(curve: pd.DataFrame, dataset: str, model: str, accuracy: float, n_real: float) -> str:
    """A Table 1/2 cell: what a row of mean ``accuracy`` (%) holding ``n_real`` real images is worth, as extra real
    images read off ``curve`` (:func:`learning_curve`): ``'+120'``, ``'-40'``, :data:`BEYOND`, :data:`BELOW`, or
    ``''`` without a curve for this dataset and classifier."""
    part = curve[(curve["dataset"] == dataset) & (curve["model"] == model)] if len(curve) else curve
    if len(part) < 2 or not math.isfinite(accuracy):
        return ""
    got = equivalent_real_images(part["n_real"].to_numpy(), part["accuracy"].to_numpy(), accuracy)
    if isinstance(got, str):
        return got
    extra = got - (n_real if math.isfinite(n_real) else 0.0)
    return f"{extra:+.0f}"


def plot_learning_curve(df: pd.DataFrame, curve: pd.DataFrame | None = None):
    """Accuracy against real training images per dataset (one panel each), mean ± std over seeds per classifier,
    with the Table 1/2 rows of other training sets as horizontal lines (where they cross the curve is what they
    are worth in real images). Returns the figure (a message figure without a curve)."""
    import matplotlib.pyplot as plt

    from histlib import analysis

    curve = learning_curve(df) if curve is None else curve
    if len(curve) == 0:
        fig, ax = plt.subplots(figsize=(6, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "No learning curve: the study has no real runs on fractions of the train split "
                "(classify.REAL_FRACTIONS).", ha="center", va="center", wrap=True)
        return fig
    datasets = list(dict.fromkeys(curve["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.2), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        part = curve[curve["dataset"] == ds]
        for model, m in part.groupby("model", sort=False):
            ax.errorbar(m["n_real"], m["accuracy"], yerr=m["accuracy_std"].fillna(0), marker="o", capsize=3,
                        label=f"real, {model}")
            for _, r in m.iterrows():
                ax.annotate(f"{100 * r['fraction']:.0f} %", (r["n_real"], r["accuracy"]), fontsize=7,
                            textcoords="offset points", xytext=(4, -10))
        models = list(dict.fromkeys(part["model"]))
        shown: set[str] = set()  # a row of two tables (real + stain) is drawn once
        for table in analysis.answer.paper_tables(analysis.answer.scored_table(df, n_boot=0)).values():
            if table.attrs.get("dataset") != ds or table.attrs.get("evaluated_on") != part["evaluated_on"].iloc[0]:
                continue  # other datasets, and Table 1/2 on another set than the curve's
            for label in table.index[1:]:
                for model in models:
                    value = table.loc[label, (model, "Acc")] if (model, "Acc") in table.columns else math.nan
                    key = f"{label} ({model})" if len(models) > 1 else label
                    if math.isfinite(value) and key not in shown:
                        ax.axhline(value, lw=0.9, ls="--", color=f"C{1 + len(shown) % 9}", label=key)
                        shown.add(key)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_xlabel("real training images")
        ax.set_ylabel(f"accuracy on {part['evaluated_on'].iloc[0]} (%)")
        ax.set_title(f"{ds}: the real-data learning curve")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save_learning_curve(df: pd.DataFrame, out_dir: str | os.PathLike) -> Path | None:
    """Writes :func:`plot_learning_curve` to ``<out_dir>/learning_curve.png`` (the study index shows it); None (and
    nothing written, an older PNG removed) when the study has no learning curve."""
    import matplotlib.pyplot as plt

    out = runs.project_path(out_dir) / PNG_NAME
    curve = learning_curve(df)
    if len(curve) == 0:
        out.unlink(missing_ok=True)
        return None
    fig = plot_learning_curve(df, curve)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, out)
    return out
