"""The embedded sample, its rebuild command, the demo tiling and the data-stage figures."""

from __future__ import annotations

import csv

import pandas as pd
import pytest

from histlib.data.embedded_sample import SAMPLE_SETS, build_sample
from histlib.data.plots import class_count_figure, group_size_figure, sample_grid_figure
from histlib.data.prepare import PrepareConfig, prepare_dataset
from histlib.runs import file_sha256


def _rows(folder):
    with open(folder / "MANIFEST.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_embedded_sample_is_complete_and_attributed(sample_data):
    text = (sample_data / "ATTRIBUTION.md").read_text()
    assert "CC BY 4.0" in text and "10.5281/zenodo.1214456" in text and "10.5281/zenodo.53169" in text
    expected = {"nct_crc_he": (28, 9), "kather2016": (24, 8)}
    for name in SAMPLE_SETS:
        rows = _rows(sample_data / name)
        assert (len(rows), len({r["class"] for r in rows})) == expected[name]
        for r in rows:
            assert file_sha256(sample_data / name / r["relpath"]) == r["sha256"], r["relpath"]
            assert r["source_repo"] in text
    size = sum(f.stat().st_size for f in sample_data.rglob("*") if f.is_file())
    assert size < 8e6


def test_build_sample_from_shared(shared_data, tmp_path):
    counts = build_sample(shared_data / "samples", tmp_path / "sample")
    assert counts == {"nct_crc_he": 28, "kather2016": 24}
    assert (tmp_path / "sample" / "ATTRIBUTION.md").is_file()


def test_build_sample_rejects_changed_file(sample_data, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(sample_data, src)
    victim = src / "kather2016" / _rows(src / "kather2016")[0]["relpath"]
    data = victim.read_bytes()
    victim.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(ValueError, match="sha256 differs"):
        build_sample(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_demo_tiling_counts(sample_data, tmp_path):
    base = prepare_dataset(PrepareConfig(str(sample_data / "nct_crc_he"), str(tmp_path / "base"), patch=64, stride=32,
                                         val_fraction=0.25), progress=False)
    target = prepare_dataset(PrepareConfig(str(sample_data / "kather2016"), str(tmp_path / "target"), patch=64,
                                           stride=32, val_fraction=0.25), progress=False)
    assert base["n_images"] == 28 * 36 and target["n_images"] == 24 * 9
    for out in ("base", "target"):
        df = pd.read_csv(tmp_path / out / "manifest.csv")
        assert (df.groupby("group")["split"].nunique() == 1).all()
        assert (df.groupby("class")["split"].nunique() == 2).all()  # every class has train and val images
    fig = sample_grid_figure(tmp_path / "target", n_per_class=4, split="val")
    assert len(fig.axes) == 8 * 4
    assert len(class_count_figure(tmp_path / "base").axes) == 1
    assert len(group_size_figure(tmp_path / "base").axes) == 1


def test_sample_manifest_relpaths_never_leave_the_output(sample_data, tmp_path):
    import shutil

    src = tmp_path / "src"
    for name in SAMPLE_SETS:
        shutil.copytree(sample_data / name, src / name)
    tsv = src / "nct_crc_he" / "MANIFEST.tsv"
    lines = tsv.read_text().splitlines()
    cls = lines[1].split("\t")[1]
    lines[1] = lines[1].replace(f"{cls}/", "../", 1).replace(f"\t{cls}\t", "\t..\t", 1)
    tsv.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="MANIFEST.tsv: class name '..'"):
        build_sample(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
