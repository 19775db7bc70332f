"""Which class a training set helps: each class's recall on the scored sets, beside real's.

Balanced accuracy is the mean of the classes' recalls, so a row can hold its balanced accuracy while one tissue
class gains and another loses. :func:`class_recalls` gives the recalls themselves, one line per row of
:func:`histlib.analysis.answer.scored_table` (its fold-pooled rows included), from the per-image predictions each
run recorded (``<scored set>_y_true`` / ``_y_pred``; the class of code i is the i-th class of the run's ``recall``
keys, in the classifier's class order).
No intervals here: a class holds only part of the groups, and the study's claims rest on the rows' intervals.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histlib.analysis import answer


def _predictions(preds: answer._Predictions, rel: str, scored_on: str
                 ) -> tuple[tuple[str, ...], np.ndarray, np.ndarray] | None:
    """``(classes, y_true, y_pred)`` of one run on one scored set, or None without its predictions."""
    m, p = preds.metrics(rel), answer._prefix(scored_on)
    key = f"{p}recall"
    nested = m.get(key) if isinstance(m.get(key), dict) else {}  # as written, or flattened to '<key>/<class>'
    names = tuple(nested) or tuple(k[len(key) + 1:] for k in m if k.startswith(f"{key}/"))
    y, pred = m.get(f"{p}y_true"), m.get(f"{p}y_pred")
    if y is None or pred is None or not names or (len(y) and max(y) >= len(names)):
        return None
    return names, np.asarray(y), np.asarray(pred)


def _row_recalls(runs: list[pd.DataFrame], preds: answer._Predictions, scored_on: str) -> dict[str, float] | None:
    """Recall per class (%), mean over seeds, of one row's runs (``runs``: one frame per fold, or one frame); seed s
    of every fold is scored together, as in the pooled rows."""
    from sklearn.metrics import recall_score

    per_seed: dict[Any, list[tuple[np.ndarray, np.ndarray]]] = {}
    classes: set[tuple[str, ...]] = set()
    for part in runs:
        for rel, seed in zip(part["path"], part["seed"]):
            got = _predictions(preds, rel, scored_on)
            if got is None:
                return None
            classes.add(got[0])
            per_seed.setdefault(seed, []).append(got[1:])
    if not per_seed or len(classes) != 1:
        return None
    names = classes.pop()
    recalls = []
    for pairs in per_seed.values():
        y, pred = (np.concatenate(v) for v in zip(*pairs))
        r = recall_score(y, pred, labels=list(range(len(names))), average=None, zero_division=0)
        recalls.append(np.where(np.bincount(y, minlength=len(names)) > 0, r, np.nan))  # absent class: no recall
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class no seed saw: NaN
        return dict(zip(names, (100 * np.nanmean(recalls, axis=0)).tolist()))


def class_recalls(df: pd.DataFrame, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each class's recall per row of :func:`histlib.analysis.answer.scored_table` (``table`` when already
    computed).

    Returns:
        ``dataset, scored_on, <row keys>, model, training_set``, then per class ``recall/<class>`` (mean over seeds,
        %) and, on every row but real, ``diff_recall/<class>`` (the row's minus real's, points, same classifier and
        scored set). Empty without classifier runs or predictions.
    """
    table = answer.scored_table(df, n_boot=0) if table is None else table
    runs_df = answer.classifier_run_rows(df)
    if table.empty or len(runs_df) == 0:
        return pd.DataFrame()
    preds = answer._Predictions(Path(df.attrs.get("study_dir", ".")))
    pools = {name: [ds for ds, _ in members] for name, (members, _) in answer.fold_pools(runs_df, preds.root).items()}
    keys = list(answer.ROW_KEYS)
    rows, real = [], {}
    for _, r in table.iterrows():
        datasets = pools.get(r["dataset"], [r["dataset"]])
        accuracy = answer._scalar_keys(r["scored_on"])["accuracy"]
        runs = []
        for ds in datasets:
            part = runs_df[(runs_df["dataset"] == ds) & (runs_df["model"] == r["model"])]
            part = part[(part[keys].apply(tuple, axis=1) == tuple(r[keys])) & answer._col(part, accuracy).notna()]
            runs.append(part.sort_values("seed"))
        recalls = _row_recalls(runs, preds, r["scored_on"])
        if recalls is None:
            continue
        row = {k: r[k] for k in ("dataset", "scored_on", *keys, "model", "training_set")}
        row.update({f"recall/{c}": v for c, v in recalls.items()})
        where = (r["dataset"], r["scored_on"], r["model"])
        if tuple(r[keys]) == answer.REAL_ROW:
            real[where] = recalls
        rows.append((where, row))
    out = []
    for where, row in rows:
        base = real.get(where)
        if base is not None and tuple(row[k] for k in keys) != answer.REAL_ROW:
            row.update({f"diff_recall/{c}": row[f"recall/{c}"] - base[c] for c in base if f"recall/{c}" in row})
        out.append(row)
    frame = pd.DataFrame(out)
    if frame.empty:
        return frame
    first = ["dataset", "scored_on", *keys, "model", "training_set"]
    recall = [c for c in frame.columns if c.startswith("recall/")]
    diff = [c for c in frame.columns if c.startswith("diff_recall/")]
    return frame[first + recall + diff]
