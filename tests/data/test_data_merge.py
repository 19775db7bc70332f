"""histlib.data.merge: union of datasets (NCT-CRC-HE-100K ∪ NONORM style)."""

from __future__ import annotations

import pandas as pd
import pytest

from histlib.data.merge import MergeConfig, merge_datasets
from histlib.data.prepare import PrepareConfig, prepare_dataset


def test_union_of_two_raw_sets_with_same_file_names(make_image_folder, tmp_path):
    # the two NCT releases hold the same tiles under the same names: same names, different pixels
    norm = make_image_folder({"ADI": 2, "TUM": 2}, name="norm", seed=1)
    nonorm = make_image_folder({"ADI": 2, "TUM": 2, "MUS": 1}, name="nonorm", seed=2)
    rep = merge_datasets(MergeConfig(sources=[str(norm), str(nonorm)], out=str(tmp_path / "m")), progress=False)
    df = pd.read_csv(tmp_path / "m" / "manifest.csv")
    assert rep["n_images"] == 9 == len(df) and df["path"].is_unique
    assert rep["classes"] == ["ADI", "MUS", "TUM"] and rep["classes_not_in_all"] == ["MUS"]
    row = df[df["path"] == "ADI/nonorm__ADI_000.png"].iloc[0]
    assert row["source"] == "nonorm/ADI/ADI_000.png" and row["group"] == "ADI/ADI_000.png"
    # a tile and its twin share a group
    assert set(df.loc[df["group"] == "ADI/ADI_000.png", "source"]) == {"norm/ADI/ADI_000.png",
                                                                        "nonorm/ADI/ADI_000.png"}
    assert (tmp_path / "m" / "ADI" / "norm__ADI_000.png").read_bytes() == (norm / "ADI" / "ADI_000.png").read_bytes()
    assert (tmp_path / "m" / "ADI" / "nonorm__ADI_000.png").read_bytes() != (
        tmp_path / "m" / "ADI" / "norm__ADI_000.png").read_bytes()
    again = merge_datasets(MergeConfig(sources=[str(norm), str(nonorm)], out=str(tmp_path / "m")), progress=False)
    assert again["status"] == "already merged"


def test_prepared_inputs_keep_or_resplit(make_image_folder, tmp_path):
    a = make_image_folder({"x": 4, "y": 4}, size=(64, 64), name="a", seed=1)
    b = make_image_folder({"x": 4, "y": 4}, size=(64, 64), name="b", seed=2)
    pa = prepare_dataset(PrepareConfig(str(a), str(tmp_path / "pa"), patch=32, val_fraction=0.25, seed=0),
                         progress=False)
    pb = prepare_dataset(PrepareConfig(str(b), str(tmp_path / "pb"), patch=32, val_fraction=0.25, seed=1),
                         progress=False)
    assert pa["n_images"] == pb["n_images"] == 32
    cfg = MergeConfig(sources=[str(tmp_path / "pa"), str(tmp_path / "pb")], out=str(tmp_path / "m"),
                      names=["A", "B"])
    # same groups (same source names), different seeds → the inputs' splits disagree
    with pytest.raises(ValueError, match="splits disagree on shared groups"):
        merge_datasets(cfg, progress=False)
    assert not (tmp_path / "m").exists()
    cfg.val_fraction = 0.25
    rep = merge_datasets(cfg, progress=False)
    df = pd.read_csv(tmp_path / "m" / "manifest.csv")
    assert rep["n_images"] == 64 and (df.groupby("group")["split"].nunique() == 1).all()
    assert df["path"].str.match(r"^[xy]/[AB]__[xy]_\d{3}__x\d{5}_y\d{5}\.png$").all()


def test_bad_names(make_image_folder, tmp_path):
    a = make_image_folder({"x": 1}, name="same")
    with pytest.raises(ValueError, match="must be unique"):
        merge_datasets(MergeConfig(sources=[str(a), str(a)], out=str(tmp_path / "m")), progress=False)
    with pytest.raises(ValueError, match="at least two"):
        merge_datasets(MergeConfig(sources=[str(a)], out=str(tmp_path / "m")), progress=False)
