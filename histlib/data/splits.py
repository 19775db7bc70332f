"""Group-aware, class-stratified train/val splits.

Patches cut from one source image (or slide, patient, augmentation cluster) are near-duplicates; if they landed on
both sides of a split the validation score would measure memorisation. So whole groups are assigned to a split:
a group never straddles splits. Within that constraint the split is stratified by class (each class gets about
``val_fraction`` of its images in ``val``) and depends only on ``seed``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd


def group_split(df: pd.DataFrame, val_fraction: float, group_col: str = "group", class_col: str = "class",
                seed: int = 0) -> pd.Series:
    """Assigns ``'train'`` or ``'val'`` to every row so that no group occurs in both.

    Each group is placed in the stratum of its most frequent class (ties: first class name). Within a stratum the
    groups are shuffled with ``seed`` and added to ``val`` one by one whenever that brings the stratum's val count
    closer to ``val_fraction`` of its images; at least one group goes to val and one stays in train when the
    stratum has two or more groups (a stratum with one group stays in train, with a warning).

    Args:
        df: rows to split (e.g. a manifest), with ``group_col`` and ``class_col``.
        val_fraction: target fraction of rows in ``val``, in ``[0, 1)``.
        group_col, class_col: column names.
        seed: RNG seed; the result depends only on the data and the seed.

    Returns:
        A Series of ``'train'``/``'val'`` aligned with ``df.index``.
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction={val_fraction}: expected a number in [0, 1)")
    for col in (group_col, class_col):
        if col not in df.columns:
            raise ValueError(f"group_split: column {col!r} not in {list(df.columns)}")
    split = pd.Series("train", index=df.index, dtype=object)
    if val_fraction == 0.0 or len(df) == 0:
        return split

    groups = df.groupby(group_col, sort=True)
    sizes = groups.size()
    # dominant class of each group: most rows, ties broken by class name (value_counts sorts by count, then we sort)
    dominant = groups[class_col].agg(lambda s: sorted(s.value_counts().loc[lambda v: v == v.max()].index)[0])
    rng = np.random.default_rng(int(seed))
    val_groups: list = []
    single: list[str] = []
    for cls in sorted(dominant.unique()):
        members = np.array(sorted(dominant.index[dominant == cls]), dtype=object)
        if len(members) < 2:
            single.append(str(cls))
            continue
        members = members[rng.permutation(len(members))]
        target = val_fraction * sizes[members].sum()
        chosen, total = [], 0
        for g in members[:-1]:  # the last one always stays in train
            n = sizes[g]
            if abs(total + n - target) < abs(total - target) or not chosen:
                chosen.append(g)
                total += n
        val_groups.extend(chosen)
    if single:
        warnings.warn(f"group_split: class(es) {single} have a single group; kept entirely in train", stacklevel=2)
    split[df[group_col].isin(set(val_groups))] = "val"
    return split


def check_no_straddle(df: pd.DataFrame, group_col: str = "group", split_col: str = "split") -> None:
    """Raises ValueError naming the groups that occur in more than one split."""
    n = df.groupby(group_col)[split_col].nunique()
    bad = n[n > 1]
    if len(bad):
        raise ValueError(f"{len(bad)} group(s) straddle splits, e.g. {list(bad.index[:5])}")
