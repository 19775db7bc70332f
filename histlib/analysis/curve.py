"""The real-data learning curve and what a training set is worth in real images (read from ``metrics.json`` only).

The curve: accuracy of the ``real`` classifiers against the number of real training images, over the nested
fractions of the real train split (``real@<f>`` runs, ``histlib.classify.sets``) and the full set, per dataset and
classifier, on the split Table 1/2 reports (test when every run has it, else validation).

A training set's worth: the number of real images at which the curve reaches that set's mean accuracy, by linear
interpolation between the curve's points (the first crossing when the curve is not monotonic), minus the real
images the set itself holds: "worth +N real images". A set above the full real set's accuracy is "beyond the
curve" (no real-data point reaches it); one below the smallest fraction's accuracy is "below the curve".

Its figure and the PNG on the study's index page: :mod:`histlib.learning_curve`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from histlib.analysis.rows import classifier_runs, evaluated_on
from histlib.classify import sets as classify_sets

BEYOND = "beyond the curve"
BELOW = "below the curve"


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
    runs_df = classifier_runs(df)
    rows = []
    for ds, g in runs_df.groupby("dataset", sort=False):
        split = evaluated_on(g)
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
