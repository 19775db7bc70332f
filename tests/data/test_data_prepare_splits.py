"""prepare: group-aware test split, splits fixed by the dataset's authors, nested slide layouts (PATH-DT-MSU-like)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histlib.data.prepare import PrepareConfig, prepare_dataset, prepare_hash, validate_source
from histlib.data.splits import group_split


def _folder(root, classes=("a", "b", "c"), groups=6, per_group=3, size=32):
    """``root/<class>/g<k>_<i>.png`` with a MANIFEST.tsv column ``cluster`` = g<k> (near-duplicates of one group)."""
    rng = np.random.default_rng(0)
    lines = ["relpath\tcluster"]
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for g in range(groups):
            for i in range(per_group):
                name = f"{cls}/g{g}_{i}.png"
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / name)
                lines.append(f"{name}\t{cls}{g}")
    (root / "MANIFEST.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_three_way_split_is_group_aware_and_keeps_the_two_way_split():
    rng = np.random.default_rng(3)
    df = pd.DataFrame([{"group": f"g{g}", "class": f"c{g % 3}"} for g in range(60) for _ in range(rng.integers(1, 9))])
    two = group_split(df, 0.2, seed=4)
    assert two.equals(group_split(df, 0.2, seed=4, test_fraction=0.0))  # unchanged when no test split is asked
    three = group_split(df, 0.2, seed=4, test_fraction=0.2)
    assert set(three) == {"train", "val", "test"}
    assert (df.assign(split=three).groupby("group")["split"].nunique() == 1).all()
    frac = df.assign(split=three).groupby("class")["split"].apply(lambda s: (s == "test").mean())
    assert ((frac > 0.08) & (frac < 0.35)).all(), frac


def test_prepare_test_fraction_by_manifest_column(tmp_path):
    src = _folder(tmp_path / "raw")
    out = tmp_path / "out"
    cfg = PrepareConfig(source=str(src), out=str(out), val_fraction=0.25, test_fraction=0.25, group_by="cluster")
    report = prepare_dataset(cfg, progress=False)
    m = pd.read_csv(out / "manifest.csv")
    assert set(m["split"]) == {"train", "val", "test"}
    assert (m.groupby("group")["split"].nunique() == 1).all()
    assert all(set(c) == {"train", "val", "test"} for c in report["counts"].values())
    # a config without a test split hashes as before (earlier prepared datasets stay valid)
    assert "test_fraction" not in json.dumps({k: v for k, v in vars(PrepareConfig(source="x", out="y")).items()
                                              if k == "test_fraction" and v})
    assert prepare_hash(PrepareConfig(source=str(src), out="a")) != prepare_hash(
        PrepareConfig(source=str(src), out="a", test_fraction=0.2))


def test_test_fraction_that_empties_a_class_is_refused(tmp_path):
    src = _folder(tmp_path / "raw", groups=3)  # 3 groups per class: train, val and test would each need one
    (src / "d").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(src / "d" / "only.png")  # one group only
    cfg = PrepareConfig(source=str(src), out=str(tmp_path / "out"), val_fraction=0.25, test_fraction=0.25)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"test_fraction=0.25.*test: \['d'\]"):
        prepare_dataset(cfg, progress=False)
    assert not (tmp_path / "out").exists()


def test_predefined_split_folders_with_rename(tmp_path):
    raw = tmp_path / "raw"
    for split in ("train", "test"):
        _folder(raw / split, groups=2, per_group=2)
        (raw / split / "MANIFEST.tsv").unlink()
    out = tmp_path / "out"
    cfg = PrepareConfig(source=str(raw), out=str(out), split_from="folders", split_rename={"test": "val"})
    frame = validate_source(cfg, progress=False).to_frame()
    assert frame["images"].to_dict() == {"a": 8, "b": 8, "c": 8}  # both split folders, one report
    prepare_dataset(cfg, progress=False)
    m = pd.read_csv(out / "manifest.csv")
    assert sorted(m["split"].unique()) == ["train", "val"]
    assert (m[m["source"].str.startswith("test/")]["split"] == "val").all()
    assert m["path"].is_unique and set(m["class"]) == {"a", "b", "c"}
    # without the rename their test folder is our test split
    prepare_dataset(PrepareConfig(source=str(raw), out=str(tmp_path / "o2"), split_from="folders"), progress=False)
    assert sorted(pd.read_csv(tmp_path / "o2" / "manifest.csv")["split"].unique()) == ["test", "train"]
    with pytest.raises(ValueError, match="must be 0"):
        prepare_dataset(PrepareConfig(source=str(raw), out=str(tmp_path / "o3"), split_from="folders",
                                      val_fraction=0.2), progress=False)


def test_predefined_split_missing_a_class_is_refused(tmp_path):
    raw = tmp_path / "raw"
    _folder(raw / "train", groups=2, per_group=1)
    _folder(raw / "val", classes=("a", "b"), groups=2, per_group=1)
    with pytest.raises(ValueError, match=r"val: \['c'\]"):
        prepare_dataset(PrepareConfig(source=str(raw), out=str(tmp_path / "out"), split_from="folders"),
                        progress=False)
    assert not (tmp_path / "out").exists()


def test_predefined_split_from_a_column_and_a_file(tmp_path):
    src = _folder(tmp_path / "raw", groups=2, per_group=2)
    lines = (src / "MANIFEST.tsv").read_text().splitlines()
    rows = ["\t".join([lines[0], "fold"])] + [f"{ln}\t{'val' if '_1.png' in ln else 'train'}" for ln in lines[1:]]
    (src / "MANIFEST.tsv").write_text("\n".join(rows) + "\n")
    prepare_dataset(PrepareConfig(source=str(src), out=str(tmp_path / "o1"), split_from="column:fold"),
                    progress=False)
    m = pd.read_csv(tmp_path / "o1" / "manifest.csv")
    assert (m["split"] == np.where(m["source"].str.endswith("_1.png"), "val", "train")).all()
    split_file = tmp_path / "splits.csv"
    split_file.write_text("path,split\n" + "\n".join(f"{r},{'test' if 'g0' in r else 'train'}"
                                                      for r in m["source"]) + "\n")
    prepare_dataset(PrepareConfig(source=str(src), out=str(tmp_path / "o2"), split_from=f"file:{split_file}"),
                    progress=False)
    m2 = pd.read_csv(tmp_path / "o2" / "manifest.csv")
    assert set(m2["split"]) == {"train", "test"}
    split_file.write_text("path,split\n" + "\n".join(f"{r},holdout" for r in m["source"]) + "\n")
    with pytest.raises(ValueError, match="split 'holdout' .* is not one of"):
        prepare_dataset(PrepareConfig(source=str(src), out=str(tmp_path / "o4"), split_from=f"file:{split_file}"),
                        progress=False)
    with pytest.raises(ValueError, match="expected 'folders', 'column:NAME' or 'file:PATH'"):
        prepare_dataset(PrepareConfig(source=str(src), out=str(tmp_path / "o3"), split_from="fold"), progress=False)


def _square(cls, x, y, side):
    ring = [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"classification": {"name": cls}}}


def test_nested_slide_layout_like_path_dt_msu(tmp_path, test_data):
    """PATH-DT-MSU/WSS<k>/images/{train,test}/<slide> with annotations/{train,test}/<slide>.json (GeoJSON): two
    subsets, the authors' train/test split (their test is what the study validates on)."""
    root = tmp_path / "PATH-DT-MSU"
    classes = {"WSS1": ("AT", "LP"), "WSS2": ("AT", "LP")}
    for subset, (c1, c2) in classes.items():
        for split in ("train", "test"):
            (root / subset / "images" / split).mkdir(parents=True)
            (root / subset / "annotations" / split).mkdir(parents=True)
            slide = root / subset / "images" / split / f"{subset.lower()}_{split}.svs"
            shutil.copy(test_data / "CMU-1-Small-Region.svs", slide)
            features = [_square(c1, 300, 300, 448), _square(c2, 1200, 1500, 448)]
            (root / subset / "annotations" / split / f"{slide.stem}.json").write_text(
                json.dumps({"type": "FeatureCollection", "features": features}))
    out = tmp_path / "prepared"
    cfg = PrepareConfig(source=str(root), out=str(out), patch=224, stride=224, slides=True, split_from="folders",
                        split_rename={"test": "val"}, min_fraction=0.9)
    report = prepare_dataset(cfg, progress=False)
    m = pd.read_csv(out / "manifest.csv")
    assert set(m["class"]) == {"AT", "LP"} and set(m["split"]) == {"train", "val"}
    assert m["source"].nunique() == 4 and m["path"].is_unique
    assert (m.groupby("source")["split"].nunique() == 1).all()
    assert set(m.loc[m["source"].str.contains("/test/"), "split"]) == {"val"}
    # one grid patch lies 90 % inside each 448 px square: one patch per class, slide and split
    assert report["counts"]["AT"] == report["counts"]["LP"] == {"train": 2, "val": 2}


def test_registry_states_the_path_dt_msu_split():
    from histlib.data.registry import get_entry

    hint = get_entry("PATH-DT-MSU").prepare
    assert hint["split_from"] == "folders" and hint["slides"] is True


def test_prepare_hash_does_not_depend_on_where_the_project_sits(tmp_path, monkeypatch):
    """A copy of the project whose data/ is a link to the original's hashes its sources as the original does."""
    import histlib.data.prepare as prep

    original = tmp_path / "original"
    (original / "data" / "raw").mkdir(parents=True)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "data").symlink_to(original / "data")
    hashes = []
    for root in (original, copy):
        monkeypatch.setattr(prep, "project_root", lambda root=root: root)
        cfg = PrepareConfig(source=str(root / "data" / "raw"), out=str(root / "data" / "prepared" / "x"), patch=32)
        hashes.append(prepare_hash(cfg))
    assert hashes[0] == hashes[1]


def test_a_source_missing_from_the_group_column_is_refused_unless_allowed(tmp_path):
    src = _folder(tmp_path / "raw", groups=3, per_group=2)
    lines = (src / "MANIFEST.tsv").read_text().splitlines()
    (src / "MANIFEST.tsv").write_text("\n".join(ln for ln in lines if "g2_" not in ln) + "\n")  # 6 of 18 unlisted
    cfg = PrepareConfig(source=str(src), out=str(tmp_path / "o"), group_by="cluster", val_fraction=0.34)
    with pytest.raises(ValueError, match=r"group_by='cluster': 6 of 18 source image\(s\) have no 'cluster' in "
                                         r".*MANIFEST.tsv .*allow_missing_group=True"):
        prepare_dataset(cfg, progress=False)
    assert not (tmp_path / "o").exists()
    report = prepare_dataset(dataclasses.replace(cfg, allow_missing_group=True), progress=False)
    assert report["n_groups"] == 6 + 6  # 2 listed groups per class, and each unlisted image its own group
    assert prepare_hash(cfg) != prepare_hash(dataclasses.replace(cfg, allow_missing_group=True))


def test_prepare_folds_give_disjoint_test_splits_recorded_in_prepare_json(tmp_path):
    """``folds=3``: each fold's dataset has its own test split (groups of the manifest column), the three cover
    every image once, ``prepare.json`` records ``folds`` and ``fold``, and both change the hash."""
    src = _folder(tmp_path / "raw")
    tests = []
    for k in range(3):
        out = tmp_path / f"fold{k}"
        cfg = PrepareConfig(source=str(src), out=str(out), val_fraction=0.2, folds=3, fold=k, group_by="cluster")
        prepare_dataset(cfg, progress=False)
        m = pd.read_csv(out / "manifest.csv")
        assert (m.groupby("group")["split"].nunique() == 1).all() and set(m["split"]) == {"train", "val", "test"}
        tests.append(set(m.loc[m["split"] == "test", "path"]))
        record = json.loads((out / "prepare.json").read_text())["config"]
        assert (record["folds"], record["fold"]) == (3, k)
    assert sum(map(len, tests)) == len(set().union(*tests)) == 54  # 3 classes × 6 groups × 3 images
    hashes = {prepare_hash(PrepareConfig(source=str(src), out="a", folds=f, fold=k)) for f, k in
              [(0, 0), (3, 0), (3, 1), (4, 1)]}
    assert len(hashes) == 4
    with pytest.raises(ValueError, match="folds=3 makes the test split one fold"):
        prepare_dataset(PrepareConfig(source=str(src), out=str(tmp_path / "x"), folds=3, test_fraction=0.2,
                                      group_by="cluster"), progress=False)
    assert not (tmp_path / "x").exists()
