"""Group-aware, class-stratified train/val splits.

Patches cut from one source image (or slide, patient, augmentation cluster) are near-duplicates; if they landed on
both sides of a split the validation score would measure memorisation. So whole groups are assigned to a split:
a group never straddles splits. Within that constraint the split is stratified by class (each class gets about
``val_fraction`` of its images in ``val``) and depends only on ``seed``.
"""

from __future__ import annotations

import warnings
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

SPLIT_NAMES = ("train", "val", "test")
_SPLIT_FOLDER_NAMES = ("train", "val", "valid", "validation", "test")


def _dominant_class(df: pd.DataFrame, group_col: str, class_col: str) -> tuple[pd.Series, pd.Series]:
    groups = df.groupby(group_col, sort=True)
    # dominant class of each group: most rows, ties broken by class name
    dominant = groups[class_col].agg(lambda s: sorted(s.value_counts().loc[lambda v: v == v.max()].index)[0])
    return groups.size(), dominant


def _pick_groups(members: np.ndarray, sizes: pd.Series, target: float) -> list:
    """Groups (in the given order) added one by one whenever that brings their total closer to ``target``; at least
    one is taken and the last one is never taken."""
    chosen, total = [], 0
    for g in members[:-1]:
        n = sizes[g]
        if abs(total + n - target) < abs(total - target) or not chosen:
            chosen.append(g)
            total += n
    return chosen


def group_split(df: pd.DataFrame, val_fraction: float, group_col: str = "group", class_col: str = "class",
                seed: int = 0, test_fraction: float = 0.0, folds: int = 0, fold: int = 0) -> pd.Series:
    """Assigns ``'train'``, ``'val'`` (and ``'test'``) to every row so that no group occurs in two splits.

    Each group is placed in the stratum of its most frequent class (ties: first class name). Within a stratum the
    groups are shuffled with ``seed`` and added to ``val`` one by one whenever that brings the stratum's val count
    closer to ``val_fraction`` of its images; at least one group goes to val and one stays in train when the
    stratum has two or more groups (a stratum with one group stays in train, with a warning). With
    ``test_fraction > 0`` the ``test`` groups are chosen first in the same way (with their own random stream), then
    ``val`` from the remaining groups (still ``val_fraction`` of the whole stratum); a stratum with fewer than
    three groups cannot give all three splits, and stays out of ``test`` with a warning.

    With ``folds >= 2`` the ``test`` split is fold ``fold`` of a class-stratified group k-fold
    (scikit-learn's ``StratifiedGroupKFold``, shuffled with ``seed``) instead: the ``folds`` test splits of one seed
    are disjoint and together hold every image once (cross-validation: a study pools their held-out predictions;
    every class needs two groups or more);
    ``val`` is then drawn from the other folds' groups as above.

    Args:
        df: rows to split (e.g. a manifest), with ``group_col`` and ``class_col``.
        val_fraction: target fraction of rows in ``val``, in ``[0, 1)``.
        group_col, class_col: column names.
        seed: RNG seed; the result depends only on the data and the seed.
        test_fraction: target fraction of rows in ``test`` (0: no test split; the result is then the two-way split
            of earlier versions, row for row).
        folds, fold: with ``folds >= 2`` (``test_fraction`` then 0), ``test`` is fold ``fold`` (0 ≤ fold < folds)
            of a k-fold over the groups; 0: no folds.

    Returns:
        A Series of ``'train'``/``'val'``/``'test'`` aligned with ``df.index``.
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction={val_fraction}: expected a number in [0, 1)")
    if not 0.0 <= float(test_fraction) < 1.0 or float(val_fraction) + float(test_fraction) >= 1.0:
        raise ValueError(f"test_fraction={test_fraction}: expected a number in [0, 1) with val_fraction + "
                         f"test_fraction < 1 (val_fraction={val_fraction})")
    check_folds(folds, fold, test_fraction)
    for col in (group_col, class_col):
        if col not in df.columns:
            raise ValueError(f"group_split: column {col!r} not in {list(df.columns)}")
    split = pd.Series("train", index=df.index, dtype=object)
    if (val_fraction == 0.0 and test_fraction == 0.0 and not folds) or len(df) == 0:
        return split

    sizes, dominant = _dominant_class(df, group_col, class_col)
    rng = np.random.default_rng(int(seed))
    test_rng = np.random.default_rng([int(seed), 1])
    val_groups: list = []
    test_groups: list = []
    fold_test = _fold_groups(df, group_col, class_col, int(folds), int(fold), int(seed)) if folds else set()
    if folds:  # every image is tested once, by classifiers that saw its class: two groups per class at least
        lone = sorted(str(c) for c in dominant.unique() if (dominant == c).sum() < 2)
        if lone:
            raise ValueError(f"folds={folds}: class(es) {lone} have a single group ({group_col!r}); "
                             "cross-validation needs at least two groups per class")
    single: list[str] = []
    no_test: list[str] = []
    for cls in sorted(dominant.unique()):
        members = np.array(sorted(dominant.index[dominant == cls]), dtype=object)
        if len(members) < 2:
            single.append(str(cls))
            continue
        stratum = sizes[members].sum()
        if folds:
            test_groups.extend(g for g in members if g in fold_test)
            members = np.array([g for g in members if g not in fold_test], dtype=object)
        elif test_fraction > 0:
            if len(members) < 3:
                no_test.append(str(cls))
            else:
                shuffled = members[test_rng.permutation(len(members))]
                chosen = _pick_groups(shuffled[:-1], sizes, test_fraction * stratum)  # keep >= 2 for train and val
                test_groups.extend(chosen)
                members = np.array([g for g in members if g not in set(chosen)], dtype=object)
        if val_fraction > 0 and len(members):
            members = members[rng.permutation(len(members))]
            val_groups.extend(_pick_groups(members, sizes, val_fraction * stratum))
    if single:
        warnings.warn(f"group_split: class(es) {single} have a single group; kept entirely in train", stacklevel=2)
    if no_test:
        warnings.warn(f"group_split: class(es) {no_test} have fewer than three groups; none of their groups can go "
                      "to test", stacklevel=2)
    split[df[group_col].isin(set(val_groups))] = "val"
    split[df[group_col].isin(set(test_groups))] = "test"
    return split


def check_folds(folds: Any, fold: Any, test_fraction: float = 0.0) -> None:
    """Raises ValueError unless ``folds`` is 0 (no folds) or an integer >= 2 with ``0 <= fold < folds`` and no
    ``test_fraction``."""
    def integer(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not integer(folds) or folds < 0 or folds == 1:
        raise ValueError(f"folds={folds!r}: expected 0 (no cross-validation folds) or an integer >= 2")
    if not integer(fold) or not (0 <= fold < max(int(folds), 1)):
        raise ValueError(f"fold={fold!r}: expected an integer in [0, {max(int(folds), 1) - 1}] (folds={folds})")
    if folds and float(test_fraction) > 0:
        raise ValueError(f"folds={folds} makes the test split one fold: test_fraction must be 0 "
                         f"(got {test_fraction})")


def _fold_groups(df: pd.DataFrame, group_col: str, class_col: str, folds: int, fold: int, seed: int) -> set:
    """The groups of fold ``fold`` of a class-stratified group k-fold over ``df``."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = df[group_col].nunique()
    if n_groups < folds:
        raise ValueError(f"folds={folds}: the data has only {n_groups} group(s) ({group_col!r}); a fold needs at "
                         "least one")
    kfold = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class with fewer groups than folds: sklearn warns, the folds stay valid
        warnings.simplefilter("ignore", UserWarning)
        parts = list(kfold.split(np.zeros(len(df)), df[class_col].astype(str), df[group_col].astype(str)))
    return set(df[group_col].iloc[parts[fold][1]])


def check_no_straddle(df: pd.DataFrame, group_col: str = "group", split_col: str = "split") -> None:
    """Raises ValueError naming the groups that occur in more than one split."""
    n = df.groupby(group_col)[split_col].nunique()
    bad = n[n > 1]
    if len(bad):
        raise ValueError(f"{len(bad)} group(s) straddle splits, e.g. {list(bad.index[:5])}")


# ----------------------------------------------------------------------------------------------------------------
# Splits fixed by a dataset's authors (``PrepareConfig.split_from``)


def _split_folder(rel: str, names: set[str]) -> str | None:
    """The first folder of a relative path named like a split (case-insensitive), or None."""
    for part in PurePosixPath(rel).parts[:-1]:
        if part.lower() in names:
            return part
    return None


def _read_split_table(path: Path, key_col: str, column: str) -> dict[str, str]:
    from histlib.data.manifest import read_table_rows, table_mapping

    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    rows = read_table_rows(path, sep)
    if not rows or key_col not in rows[0] or column not in rows[0]:
        found = list(rows[0]) if rows else []
        raise ValueError(f"{path}: expected columns {key_col!r} and {column!r} for the predefined split, found {found}")
    return table_mapping(rows, key_col, column, path)


def predefined_splits(cfg: Any, source: Path, sources: list[str]) -> dict[str, str]:
    """``{source relative path: split}`` of a dataset whose split its authors fixed (``cfg.split_from``).

    Raises:
        ValueError: a source without a split, or a split name that is not (renamed to) train/val/test, naming them.
    """
    rename = dict(cfg.split_rename or {})
    kind, _, arg = str(cfg.split_from).partition(":")
    root = source if source.is_dir() else source.parent
    if kind == "folders":
        names = set(_SPLIT_FOLDER_NAMES) | {k.lower() for k in rename}
        raw = {rel: _split_folder(rel, names) for rel in sources}
    elif kind == "column":
        table = _read_split_table(root / "MANIFEST.tsv", "relpath", arg)
        raw = {rel: table.get(rel) for rel in sources}
    else:
        table = _read_split_table(runs_path(arg, root), "path", "split")
        raw = {rel: table.get(rel) for rel in sources}
    missing = [rel for rel, sp in raw.items() if not sp]
    if missing:
        raise ValueError(f"split_from={cfg.split_from!r}: {len(missing)} source(s) have no split, e.g. "
                         f"{missing[:5]}")
    lowered = {k.lower(): v for k, v in rename.items()}
    out = {}
    for rel, sp in raw.items():
        name = lowered.get(sp.lower(), sp.lower())
        name = {"valid": "val", "validation": "val"}.get(name, name)
        if name not in SPLIT_NAMES:
            raise ValueError(f"split_from={cfg.split_from!r}: split {sp!r} (of {rel}) is not one of {SPLIT_NAMES}; "
                             f"rename it with split_rename, e.g. {{{sp!r}: 'val'}}")
        out[rel] = name
    return out


def runs_path(path: str, root: Path) -> Path:
    """A split file path: absolute, else relative to the project root, else to the source folder."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    from histlib.runs import project_path

    for cand in (project_path(p), root / p):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"split_from='file:{path}': split file not found (relative to the project root or the "
                            "source folder)")


def check_split_classes(df: pd.DataFrame, what: str) -> None:
    """Raises ValueError naming every (split, class) pair without images when some split lacks a class."""
    classes = sorted(df["class"].unique())
    gaps = [f"{sp}: {sorted(set(classes) - set(part['class']))}" for sp, part in df.groupby("split", sort=True)
            if set(classes) - set(part["class"])]
    if gaps:
        raise ValueError(f"{what}: split(s) without some classes ({'; '.join(gaps)}); every class needs images in "
                         "every split to be trained, selected and tested")
