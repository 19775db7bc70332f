"""Which class a training set helps: each class's recall on the scored sets, beside real's.

Balanced accuracy is the mean of the classes' recalls, so a row can hold its balanced accuracy while one tissue
class gains and another loses. :func:`class_recalls` gives the recalls themselves, one line per row of
:func:`histlib.analysis.answer.scored_table` (its fold-pooled rows included), from the per-image predictions each
run recorded (``<scored set>_y_true`` / ``_y_pred``; the class of code i is the i-th class of the run's ``recall``
keys, in the classifier's class order).
No intervals here: a class holds only part of the groups, and the study's claims rest on the rows' intervals.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histlib.analysis import answer


def _counts(preds: answer._Predictions, rel: str, scored_on: str) -> dict[str, tuple[int, int]] | None:
    """``{class: (right, images)}`` of one run on one scored set, or None without its predictions."""
    got = preds.get(rel, scored_on)
    m, key = preds.cache.get(rel, {}), f"{answer._prefix(scored_on)}recall"
    nested = m.get(key) if isinstance(m.get(key), dict) else {}  # as written, or flattened to '<key>/<class>'
    names = list(nested) or [k[len(key) + 1:] for k in m if k.startswith(f"{key}/")]
    if got is None or not names:
        return None
    y, pred, _ = got
    if len(y) and int(np.max(y)) >= len(names):
        return None
    return {c: (int(((y == i) & (pred == i)).sum()), int((y == i).sum())) for i, c in enumerate(names)}


def _row_recalls(runs: list[pd.DataFrame], preds: answer._Predictions, scored_on: str) -> dict[str, float] | None:
    """Recall per class (%), mean over seeds, of one row's runs (``runs``: one frame per fold, or one frame); seed s
    of every fold is counted together, as in the pooled rows."""
    per_seed: dict[Any, dict[str, list[int]]] = {}
    for part in runs:
        for rel, seed in zip(part["path"], part["seed"]):
            counts = _counts(preds, rel, scored_on)
            if counts is None:
                return None
            cell = per_seed.setdefault(seed, {})
            for c, (right, n) in counts.items():
                cell.setdefault(c, [0, 0])
                cell[c][0] += right
                cell[c][1] += n
    if not per_seed:
        return None
    classes = list(dict.fromkeys(c for cell in per_seed.values() for c in cell))
    return {c: 100 * float(np.mean([cell[c][0] / cell[c][1] for cell in per_seed.values()
                                    if c in cell and cell[c][1] > 0] or [math.nan])) for c in classes}


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
