"""histlib.data.dataset: manifest contract, ImageFolder fallback, ImageDataset, tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from histlib.data.dataset import (
    MANIFEST_COLUMNS,
    ImageDataset,
    class_count_table,
    load_manifest,
    split_summary,
    to_rgb8,
    to_uint8,
    to_uint8_tensor,
)


def _write_manifest(root, rows):
    pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_csv(root / "manifest.csv", index=False)


def test_image_folder_without_manifest(make_image_folder):
    root = make_image_folder({"b": 2, "a": 3})
    (root / "a" / "notes.txt").write_text("not an image")
    df = load_manifest(root)
    assert list(df.columns) == list(MANIFEST_COLUMNS)
    assert len(df) == 5 and set(df["split"]) == {"train"}
    assert (df["group"] == df["path"]).all() and (df["source"] == df["path"]).all()
    ds = ImageDataset(root)
    assert ds.classes == ["a", "b"]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 0, 0, 1, 1]
    img, label = ds[4]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (48, 40) and label == 1
    assert ds.paths[4].parent.name == "b"


def test_manifest_splits_and_explicit_classes(make_image_folder):
    root = make_image_folder({"x": 2, "y": 2})
    _write_manifest(root, [("x/x_000.png", "x", "train", "g1", "s1"), ("x/x_001.png", "x", "val", "g2", "s2"),
                           ("y/y_000.png", "y", "train", "g3", "s3"), ("y/y_001.png", "y", "train", "g3", "s3")])
    assert len(ImageDataset(root)) == 4
    val = ImageDataset(root, split="val")
    assert len(val) == 1 and val.classes == ["x", "y"]  # classes come from the whole manifest, not the split
    ds = ImageDataset(root, split="train", classes=["y", "x"])
    assert ds.labels.tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match=r"not in classes=\['y'\].*not in the dataset=\['z'\]"):
        ImageDataset(root, classes=["x", "z"])
    with pytest.raises(ValueError, match="split='test'"):
        ImageDataset(root, split="test")


def test_manifest_missing_column(tmp_path):
    pd.DataFrame({"path": ["a.png"], "class": ["a"]}).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(ValueError, match=r"manifest.csv: missing column\(s\) \['split', 'group', 'source'\]"):
        load_manifest(tmp_path)


def test_empty_and_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(ValueError, match="no images found"):
        load_manifest(tmp_path)


def test_resolution_and_uint8_transform(make_image_folder):
    root = make_image_folder({"a": 1}, size=(50, 30))
    ds = ImageDataset(root, resolution=16, transform=to_uint8_tensor)
    x, y = ds[0]
    assert x.dtype == torch.uint8 and tuple(x.shape) == (3, 16, 16) and y == 0
    raw = np.array(Image.open(ds.paths[0]).convert("RGB"))
    t = to_uint8_tensor(Image.open(ds.paths[0]))
    assert torch.equal(t, torch.from_numpy(raw).permute(2, 0, 1))


def test_to_uint8_undoes_the_training_scaling_and_clamps():
    """Generated images in [-1, 1] back to pixels: exact for every uint8 value scaled as the GAN loop scales reals."""
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(2, 3, 16, 16)  # [N, C, H, W]
    assert torch.equal(to_uint8(pixels.float() / 127.5 - 1), pixels)
    assert to_uint8(torch.tensor([-1.5, -1.0, 0.0, 1.0, 3.0])).tolist() == [0, 0, 128, 255, 255]
    assert to_uint8(torch.zeros(1, dtype=torch.float16)).dtype == torch.uint8


def test_to_rgb8_modes():
    gray16 = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert gray16.mode.startswith("I;16")
    assert np.asarray(to_rgb8(gray16)).tolist()[0][0] == [255, 255, 255]
    rgba = Image.fromarray(np.array([[[255, 0, 0, 0], [255, 0, 0, 255]]], dtype=np.uint8), mode="RGBA")
    out = np.asarray(to_rgb8(rgba))
    assert out[0, 0].tolist() == [255, 255, 255]  # transparent → white background
    assert out[0, 1].tolist() == [255, 0, 0]
    assert to_rgb8(Image.new("L", (3, 3), 7)).getpixel((0, 0)) == (7, 7, 7)


def test_tables():
    df = pd.DataFrame({"path": list("abcdef"), "class": ["u", "u", "u", "v", "v", "v"],
                       "split": ["train", "train", "val", "train", "val", "val"],
                       "group": ["1", "1", "2", "3", "4", "4"], "source": list("abcdef")})
    t = class_count_table(df)
    assert t.loc["u", "train"] == 2 and t.loc["v", "val"] == 2 and t.loc["total", "total"] == 6
    s = split_summary(df)
    assert s.loc["val", "groups"] == 2 and (s["groups_in_other_splits"] == 0).all()
    df.loc[2, "group"] = "1"  # group 1 now in train and val
    assert split_summary(df).loc["val", "groups_in_other_splits"] == 1


@pytest.mark.parametrize("path, match", [
    ("../../etc/passwd", "not a path inside"), ("/etc/hosts.png", "not a path inside"),
    ("a/notes.txt", "not an image"), ("link/x.png", "leads outside"),
])
def test_manifest_paths_must_stay_inside_the_dataset(tmp_path, path, match):
    import pandas as pd

    from histlib.data.dataset import ImageDataset

    root = tmp_path / "ds"
    (root / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "a" / "ok.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(outside / "x.png")
    (root / "link").symlink_to(outside)
    rows = [{"path": "a/ok.png", "class": "a", "split": "train", "group": "g", "source": "s"},
            {"path": path, "class": "a", "split": "train", "group": "h", "source": "t"}]
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    with pytest.raises(ValueError, match=f"line 3: .*{match}"):
        ImageDataset(root)
