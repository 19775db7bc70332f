"""The classifier runs of a study, one row each, read from ``histlib.analysis.collect_metrics``' frame.

The lowest module of the analysis: Table 1/2 (:mod:`~histlib.analysis.answer`), the real-data learning curve
(:mod:`~histlib.analysis.curve`), the tables and the plots all read the runs through it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from histlib.classify import sets as classify_sets

CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy")
TRAIN_SET_ORDER = classify_sets.TRAIN_SETS

def classify_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The ``classify`` rows of the metrics frame with ``train_set``, ``model`` and ``seed`` columns (empty without
    any); rows without a training set or model are left out."""
    if df is None or len(df) == 0 or "stage" not in df:
        return pd.DataFrame()
    part = df[df["stage"] == "classify"].copy()
    for col in ("train_set", "model", "seed"):
        if col not in part:
            part[col] = np.nan
    return part.dropna(subset=["train_set", "model"])


def classifier_runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per classifier run: ``dataset, train_set, variant ('' for real), model, seed`` and its numbers
    (``val_accuracy``, ``val_balanced_accuracy``, ``test_accuracy``, ``test_balanced_accuracy`` when measured,
    ``n_train_real``, ``n_train_synthetic``)."""
    part = classify_rows(df)
    if len(part) == 0:
        return pd.DataFrame(columns=["dataset", "train_set", "variant", "model", "seed"])
    out = pd.DataFrame({
        "dataset": part["dataset"], "train_set": part["train_set"],
        "variant": part["variant"].astype(object).where(part["variant"].notna(), "") if "variant" in part else "",
        "model": part["model"], "seed": pd.to_numeric(part["seed"], errors="coerce"),
        "val_accuracy": pd.to_numeric(part.get("accuracy"), errors="coerce"),
        "val_balanced_accuracy": pd.to_numeric(part.get("balanced_accuracy"), errors="coerce"),
    })
    for col in ("test_accuracy", "test_balanced_accuracy", "n_train_real", "n_train_synthetic"):
        out[col] = pd.to_numeric(part[col], errors="coerce") if col in part else np.nan
    out.loc[~out["train_set"].map(classify_sets.needs_synthetic), "variant"] = ""
    return out.reset_index(drop=True)


def evaluated_on(runs_df: pd.DataFrame) -> str:
    """``'test'`` when every run has test numbers (nothing was tuned on them), else ``'val'``."""
    return "test" if len(runs_df) and runs_df["test_accuracy"].notna().all() else "val"
