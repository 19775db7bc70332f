"""histlib.data.splits: group-aware, stratified, seeded splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histlib.data.splits import check_no_straddle, group_split


def _random_manifest(seed, n_groups=120, n_classes=4):
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        cls = int(rng.integers(n_classes))
        for _ in range(int(rng.integers(1, 40))):
            # a few groups are mixed (a slide with two tissue classes)
            c = cls if rng.random() > 0.1 else int(rng.integers(n_classes))
            rows.append({"group": f"g{g}", "class": f"c{c}"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", range(5))
def test_groups_never_straddle_and_fraction_per_class(seed):
    df = _random_manifest(seed)
    df["split"] = group_split(df, 0.25, seed=seed)
    per_group = df.groupby("group")["split"].nunique()
    assert (per_group == 1).all()
    check_no_straddle(df)
    frac = df.groupby("class")["split"].apply(lambda s: (s == "val").mean())
    assert ((frac > 0.12) & (frac < 0.38)).all(), frac  # ~30 groups per class of 1..39 images


def test_seeded_and_seed_dependent():
    df = _random_manifest(0)
    a = group_split(df, 0.3, seed=1)
    assert a.equals(group_split(df, 0.3, seed=1))
    assert not a.equals(group_split(df, 0.3, seed=2))


def test_exact_when_groups_equal_sized():
    # BACH-like: 4 classes x 100 images, each image one group of 35 patches, 25% val → 25 images per class
    df = pd.DataFrame([{"class": f"c{c}", "group": f"c{c}_img{i}"} for c in range(4) for i in range(100)
                       for _ in range(35)])
    split = group_split(df, 0.25, seed=0)
    val = df[split == "val"]
    assert len(val) == 3500 and (val.groupby("class").size() == 875).all()


def test_zero_fraction_and_single_group():
    df = pd.DataFrame({"group": ["a", "a", "b", "c"], "class": ["x", "x", "y", "y"]})
    assert (group_split(df, 0.0) == "train").all()
    with pytest.warns(UserWarning, match=r"\['x'\] have a single group"):
        s = group_split(df, 0.5)
    assert (s[df["class"] == "x"] == "train").all()
    assert sorted(s[df["class"] == "y"]) == ["train", "val"]


def test_bad_input():
    df = pd.DataFrame({"group": ["a"], "class": ["x"]})
    with pytest.raises(ValueError, match="val_fraction=1.0"):
        group_split(df, 1.0)
    with pytest.raises(ValueError, match="column 'source'"):
        group_split(df, 0.2, group_col="source")
    bad = pd.DataFrame({"group": ["a", "a"], "split": ["train", "val"]})
    with pytest.raises(ValueError, match="straddle"):
        check_no_straddle(bad)


@pytest.mark.parametrize("seed", range(3))
def test_folds_are_disjoint_test_splits_that_cover_every_image_once(seed):
    """``folds=K``: fold k's test split is one part of a stratified group k-fold; the K test splits of one seed are
    disjoint and together hold every row once; no group straddles; val comes from the other folds at about
    val_fraction of each class."""
    df = _random_manifest(seed)
    seen = pd.Series(0, index=df.index)
    for k in range(4):
        df["split"] = group_split(df, 0.2, seed=seed, folds=4, fold=k)
        check_no_straddle(df)
        seen += df["split"] == "test"
        share = df.groupby("class")["split"].apply(lambda s: (s == "test").mean())
        assert ((share > 0.1) & (share < 0.4)).all(), share  # stratified: about a quarter of every class
        val = df.groupby("class")["split"].apply(lambda s: (s == "val").mean())
        assert ((val > 0.08) & (val < 0.35)).all(), val
    assert (seen == 1).all()
    assert group_split(df, 0.2, seed=seed, folds=4, fold=1).equals(group_split(df, 0.2, seed=seed, folds=4, fold=1))
    assert not group_split(df, 0.2, seed=seed, folds=4, fold=1).equals(group_split(df, 0.2, seed=seed + 7, folds=4,
                                                                                   fold=1))


@pytest.mark.parametrize("kwargs, match", [
    ({"folds": 1}, r"folds=1: expected 0 .* or an integer >= 2"),
    ({"folds": 3, "fold": 3}, r"fold=3: expected an integer in \[0, 2\]"),
    ({"folds": 3, "fold": -1}, r"fold=-1"),
    ({"folds": 2.0}, r"folds=2.0"),
    ({"folds": 3, "test_fraction": 0.2}, r"folds=3 makes the test split one fold: test_fraction must be 0"),
    ({"folds": 50}, r"folds=50: the data has only 6 group"),
])
def test_bad_folds_get_one_clear_error(kwargs, match):
    df = pd.DataFrame({"group": list("aabbccddeeff"), "class": ["x"] * 6 + ["y"] * 6})
    with pytest.raises(ValueError, match=match):
        group_split(df, 0.2, **kwargs)


def test_folds_refuse_a_class_with_a_single_group():
    """Such a class's images could never be tested by a classifier that saw the class."""
    df = pd.DataFrame({"group": list("aabbccddeeffg"), "class": ["x"] * 6 + ["y"] * 6 + ["w"]})
    with pytest.raises(ValueError, match=r"folds=2: class\(es\) \['w'\] have a single group"):
        group_split(df, 0.2, folds=2, fold=0)
