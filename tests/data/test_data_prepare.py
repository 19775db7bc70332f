"""histlib.data.prepare: the prepared-dataset contract, atomic and resumable writing, options and CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import histlib.data.prepare as prep
from histlib import runs
from histlib.__main__ import main as cli
from histlib.data.dataset import MANIFEST_COLUMNS, ImageDataset
from histlib.data.folders import DatasetValidationError
from histlib.data.prepare import PrepareConfig, prepare_dataset


def _leftovers(parent, name):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_bach_sized_image_gives_35_patches(tmp_path):
    # every pixel distinct (R, G = low bytes of x, y; B = their high bits), and cheap to compress
    y, x = np.mgrid[0:1536, 0:2048]
    img = np.stack([x % 256, y % 256, x // 256 + 8 * (y // 256)], axis=-1).astype(np.uint8)  # [1536, 2048, 3]
    (tmp_path / "src" / "benign").mkdir(parents=True)
    Image.fromarray(img).save(tmp_path / "src" / "benign" / "b001.tif")
    rep = prepare_dataset(PrepareConfig(source=str(tmp_path / "src"), out=str(tmp_path / "out"), patch=512,
                                        stride=256), progress=False)
    df = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert rep["n_images"] == 35 == len(df) == len(list((tmp_path / "out" / "benign").glob("*.png")))
    assert list(df.columns) == list(MANIFEST_COLUMNS)
    assert (df["source"] == "benign/b001.tif").all() and (df["group"] == "benign/b001.tif").all()
    name = "benign/b001__x01536_y00768.png"  # last column, second-to-last row
    assert name in set(df["path"])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / name)), img[768:1280, 1536:2048])


def test_manifest_contract_and_group_split(make_image_folder, tmp_path):
    src = make_image_folder({"a": 8, "b": 8}, size=(64, 64))
    out = tmp_path / "prep"
    rep = prepare_dataset(PrepareConfig(source=str(src), out=str(out), patch=32, stride=16, val_fraction=0.25),
                          progress=False)
    df = pd.read_csv(out / "manifest.csv")
    assert len(df) == 16 * 9 and rep["counts"] == {"a": {"train": 54, "val": 18}, "b": {"train": 54, "val": 18}}
    assert (df.groupby("group")["split"].nunique() == 1).all()
    assert all((out / p).is_file() for p in df["path"])
    meta = json.loads((out / "prepare.json").read_text())
    assert meta["config"]["patch"] == 32 and meta["config_hash"] == rep["config_hash"]
    assert meta["report"]["counts"] == rep["counts"]
    # paths as hashed: outside the project (here) resolved and absolute, inside it relative to the project root
    assert meta["config"]["source"] == src.resolve().as_posix() and meta["report"]["out"] == out.resolve().as_posix()
    inside = runs.project_path("results/.pytest-prepare-record")
    try:
        prepare_dataset(PrepareConfig(source=str(src), out=str(inside), patch=32, stride=32), progress=False)
        assert json.loads((inside / "prepare.json").read_text())["config"]["out"] == \
            "results/.pytest-prepare-record"
    finally:
        shutil.rmtree(inside, ignore_errors=True)
    ds = ImageDataset(out, split="val")
    assert len(ds) == 36 and ds[0][0].size == (32, 32)


def test_interrupted_run_leaves_nothing_then_rerun_is_noop(make_image_folder, tmp_path, monkeypatch):
    src = make_image_folder({"a": 3, "b": 3}, size=(64, 64))
    out = tmp_path / "prep"
    cfg = PrepareConfig(source=str(src), out=str(out), patch=32, stride=32)
    calls = {"n": 0}
    real_save = prep._save

    def failing_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of writing patches
        return real_save(*args, **kwargs)

    monkeypatch.setattr(prep, "_save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(cfg, progress=False)
    assert calls["n"] == 7
    assert not out.exists() and _leftovers(tmp_path, "prep") == []

    monkeypatch.setattr(prep, "_save", real_save)
    rep = prepare_dataset(cfg, progress=False)
    assert rep["status"] == "prepared" and rep["n_images"] == 24
    manifest_before = (out / "manifest.csv").read_bytes()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a re-run with the same config must not process images")

    monkeypatch.setattr(prep, "_process_image", must_not_run)
    again = prepare_dataset(dataclasses.replace(cfg, workers=0), progress=False)
    assert again["status"] == "already prepared" and again["n_images"] == 24
    assert (out / "manifest.csv").read_bytes() == manifest_before

    # a different config rebuilds; an interruption during the rebuild keeps the previous dataset intact
    monkeypatch.setattr(prep, "_process_image", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        prepare_dataset(dataclasses.replace(cfg, stride=16), progress=False)
    assert (out / "manifest.csv").read_bytes() == manifest_before and _leftovers(tmp_path, "prep") == []


def test_changed_config_rebuilds_and_force(make_image_folder, tmp_path):
    src = make_image_folder({"a": 2}, size=(64, 64))
    out = tmp_path / "prep"
    assert prepare_dataset(PrepareConfig(str(src), str(out), patch=32), progress=False)["n_images"] == 8
    with pytest.warns(UserWarning, match=r"replacing a dataset prepared with other settings \(stride: None -> 16\)"):
        rep = prepare_dataset(PrepareConfig(str(src), str(out), patch=32, stride=16), progress=False)
    assert rep["status"] == "prepared" and rep["n_images"] == 18 and len(list((out / "a").iterdir())) == 18
    assert prepare_dataset(PrepareConfig(str(src), str(out), patch=32, stride=16), force=True,
                           progress=False)["status"] == "prepared"


def test_refuses_to_replace_foreign_folder(make_image_folder, tmp_path):
    src = make_image_folder({"a": 1}, size=(64, 64))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a prepared dataset"):
        prepare_dataset(PrepareConfig(str(src), str(tmp_path / "mine"), patch=32), progress=False)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_bad_input_fails_before_writing(make_image_folder, tmp_path):
    src = make_image_folder({"a": 2}, size=(64, 64))
    Image.new("RGB", (20, 64)).save(src / "a" / "narrow.png")
    with pytest.raises(DatasetValidationError, match="narrow.png: image is 20x64, smaller than the patch size"):
        prepare_dataset(PrepareConfig(str(src), str(tmp_path / "o"), patch=32), progress=False)
    assert not (tmp_path / "o").exists() and _leftovers(tmp_path, "o") == []


@pytest.mark.parametrize("workers", [0, 2])
def test_every_truncated_image_named_in_one_error_and_nothing_left(make_image_folder, tmp_path, workers):
    src = make_image_folder({"a": 3, "b": 2}, size=(64, 64))
    for name in ("a/a_001.png", "b/b_000.png"):
        data = (src / name).read_bytes()
        (src / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="2 image.s. cannot be decoded") as e:
        prepare_dataset(PrepareConfig(str(src), str(tmp_path / "o"), patch=32, workers=workers), progress=False)
    assert "a_001.png: cannot read image" in str(e.value) and "b_000.png: cannot read image" in str(e.value)
    assert not (tmp_path / "o").exists() and _leftovers(tmp_path, "o") == []


@pytest.mark.parametrize("field,value,msg", [("patch", 0, "patch=0"), ("stride", 8, "stride is set but patch"),
                                             ("stain", "reinhard", "stain='reinhard'"),
                                             ("val_fraction", 1.5, "val_fraction=1.5"),
                                             ("image_format", "bmp", "image_format='bmp'"),
                                             ("min_fraction", 0.0, "min_fraction=0.0"),
                                             ("group_by", "nope", "group_by='nope'")])
def test_bad_parameters_named(make_image_folder, tmp_path, field, value, msg):
    src = make_image_folder({"a": 2}, size=(64, 64))
    cfg = dataclasses.replace(PrepareConfig(str(src), str(tmp_path / "o")), **{field: value})
    with pytest.raises(ValueError, match=msg):
        prepare_dataset(cfg, progress=False)
    assert not (tmp_path / "o").exists()


def test_conversions_whole_images_resize_jpg(make_image_folder, tmp_path):
    src = make_image_folder({"a": 1}, size=(40, 40))
    Image.fromarray(np.full((40, 40), 65535, dtype=np.uint16)).save(src / "a" / "g16.png")
    Image.new("RGBA", (40, 40), (10, 20, 30, 255)).save(src / "a" / "rgba.png")
    rep = prepare_dataset(PrepareConfig(str(src), str(tmp_path / "o"), resize=16, image_format="jpg"),
                          progress=False)
    assert rep["source_info"]["validation"]["converted"] == {"16bit": 1, "rgba": 1}
    assert sorted(p.name for p in (tmp_path / "o" / "a").iterdir()) == ["a_000.jpg", "g16.jpg", "rgba.jpg"]
    g = Image.open(tmp_path / "o" / "a" / "g16.jpg")
    assert g.mode == "RGB" and g.size == (16, 16) and np.asarray(g).min() >= 250


def test_group_by_manifest_column(make_image_folder, tmp_path):
    src = make_image_folder({"a": 4, "b": 4}, size=(32, 32))
    lines = ["relpath\tcluster"] + [f"{c}/{c}_{i:03d}.png\t{'k' + str(i // 2) if i < 4 else ''}"
                                    for c in "ab" for i in range(4)]
    (src / "MANIFEST.tsv").write_text("\n".join(lines) + "\n")
    prepare_dataset(PrepareConfig(str(src), str(tmp_path / "o"), group_by="cluster", val_fraction=0.5),
                    progress=False)
    df = pd.read_csv(tmp_path / "o" / "manifest.csv")
    assert df.loc[df["source"] == "a/a_000.png", "group"].item() == "cluster:k0"
    assert df.loc[df["source"] == "a/a_001.png", "group"].item() == "cluster:k0"
    assert df.groupby("group")["split"].nunique().max() == 1


def test_macenko_is_applied_per_source_image(sample_data, tmp_path):
    pytest.importorskip("histlib.data.stain")
    from histlib.data.stain import MacenkoNormalizer

    src = tmp_path / "src"
    (src / "TUM").mkdir(parents=True)
    img = Image.open(sample_data / "nct_crc_he" / "TUM" / "TUM-AACHEHDV.tif").convert("RGB")
    img.save(src / "TUM" / "t.png")
    plain = prepare_dataset(PrepareConfig(str(src), str(tmp_path / "plain"), patch=112), progress=False)
    norm = prepare_dataset(PrepareConfig(str(src), str(tmp_path / "norm"), patch=112, stain="macenko"),
                           progress=False)
    assert plain["config_hash"] != norm["config_hash"]
    assert norm["source_info"]["stain"]["normalised"] == 1
    expect = MacenkoNormalizer().transform(np.asarray(img))[112:224, 0:112]
    got = np.asarray(Image.open(tmp_path / "norm" / "TUM" / "t__x00000_y00112.png"))
    assert np.array_equal(got, expect)
    assert not np.array_equal(got, np.asarray(Image.open(tmp_path / "plain" / "TUM" / "t__x00000_y00112.png")))


def test_workers_give_identical_output(make_image_folder, tmp_path):
    src = make_image_folder({"a": 3, "b": 3}, size=(48, 48))
    prepare_dataset(PrepareConfig(str(src), str(tmp_path / "w0"), patch=32, stride=16), progress=False)
    prepare_dataset(PrepareConfig(str(src), str(tmp_path / "w2"), patch=32, stride=16, workers=2), progress=False)
    m0, m2 = (tmp_path / "w0" / "manifest.csv").read_text(), (tmp_path / "w2" / "manifest.csv").read_text()
    assert m0 == m2
    for p in pd.read_csv(tmp_path / "w0" / "manifest.csv")["path"]:
        assert (tmp_path / "w0" / p).read_bytes() == (tmp_path / "w2" / p).read_bytes()


def test_cli(make_image_folder, tmp_path, capsys):
    src = make_image_folder({"a": 2, "b": 2}, size=(64, 64))
    args = ["prepare", "--source", str(src), "--out", str(tmp_path / "o"), "--patch", "32", "--stride", "32",
            "--val-fraction", "0.5", "--group-by", "source"]
    assert cli(args) == 0
    assert "prepared, 16 images, 2 classes, 4 groups" in capsys.readouterr().out
    assert cli(args) == 0
    assert "already prepared" in capsys.readouterr().out


def test_error_in_worker_leaves_nothing(make_image_folder, tmp_path):
    src = make_image_folder({"a": 3}, size=(64, 64))
    data = (src / "a" / "a_002.png").read_bytes()
    (src / "a" / "a_002.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="a_002.png: cannot read image"):
        prepare_dataset(PrepareConfig(str(src), str(tmp_path / "o"), patch=32, workers=2), progress=False)
    assert not (tmp_path / "o").exists() and _leftovers(tmp_path, "o") == []


def test_out_inside_source_refused(make_image_folder):
    src = make_image_folder({"a": 1}, size=(64, 64))
    with pytest.raises(ValueError, match="must not be the source folder"):
        prepare_dataset(PrepareConfig(str(src), str(src / "prepared"), patch=32), progress=False)
    with pytest.raises(ValueError, match="must not be the source folder"):
        prepare_dataset(PrepareConfig(str(src), str(src.parent), patch=32), progress=False)


def test_stride_larger_than_patch_warns(make_image_folder, tmp_path):
    src = make_image_folder({"a": 1}, size=(96, 96))
    with pytest.warns(UserWarning, match="stride=48 > patch=32: 16 px"):
        prepare_dataset(PrepareConfig(str(src), str(tmp_path / "o"), patch=32, stride=48), progress=False)
