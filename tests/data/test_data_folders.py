"""histlib.data.folders: validation of raw <class>/<image> folders, one kind of bad input per test."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from histlib.data.folders import DatasetValidationError, validate_folder


def test_valid_folder_report(make_image_folder):
    root = make_image_folder({"a": 2, "b": 3})
    rep = validate_folder(root, patch=32)
    assert rep.classes == ["a", "b"] and rep.counts == {"a": 2, "b": 3}
    assert rep.converted == {} and rep.ignored == []
    assert "5 images in 2 classes" in str(rep)
    assert rep.to_frame().loc["b", "images"] == 3


def test_corrupt_image_named(make_image_folder):
    root = make_image_folder({"a": 2})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(DatasetValidationError, match=r"a/broken.png: unreadable or corrupt image"):
        validate_folder(root)


def test_truncated_image_named(make_image_folder):
    root = make_image_folder({"a": 1}, size=(64, 64))
    good = (root / "a" / "a_000.png").read_bytes()
    (root / "a" / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetValidationError, match=r"a/cut.png: unreadable or corrupt"):
        validate_folder(root, check_pixels=True)


def test_non_image_files_ignored_with_warning(make_image_folder):
    root = make_image_folder({"a": 1})
    (root / "a" / "readme.txt").write_text("x")
    (root / "stray.csv").write_text("x")
    (root / "MANIFEST.tsv").write_text("relpath\n")  # known side file: silently skipped
    with pytest.warns(UserWarning, match=r"ignoring 2 file\(s\) .*: stray.csv, a/readme.txt"):
        rep = validate_folder(root)
    assert sorted(rep.ignored) == ["a/readme.txt", "stray.csv"] and rep.counts == {"a": 1}


def test_empty_class_folder_named(make_image_folder):
    root = make_image_folder({"a": 1})
    (root / "empty").mkdir()
    with pytest.raises(DatasetValidationError, match=r"empty: empty class folder"):
        validate_folder(root)


def test_no_class_folders(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "loose.png")
    with pytest.raises(DatasetValidationError, match="no class folders"):
        validate_folder(tmp_path)


def test_image_smaller_than_patch_named(make_image_folder):
    root = make_image_folder({"a": 1}, size=(64, 64))
    Image.new("RGB", (64, 20)).save(root / "a" / "thin.png")
    with pytest.raises(DatasetValidationError, match=r"a/thin.png: image is 64x20, smaller than the patch size 32x32"):
        validate_folder(root, patch=32)
    validate_folder(root, patch=20)  # exactly the patch size is fine


def test_all_problems_in_one_error(make_image_folder):
    root = make_image_folder({"a": 1}, size=(16, 16))
    (root / "a" / "bad.jpg").write_bytes(b"nope")
    (root / "b").mkdir()
    with pytest.raises(DatasetValidationError) as e:
        validate_folder(root, patch=32)
    msg = str(e.value)
    assert "3 problem(s)" in msg and "bad.jpg" in msg and "a_000.png" in msg and "empty class folder" in msg


def test_conversions_counted(make_image_folder):
    root = make_image_folder({"a": 1})
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).save(root / "a" / "gray.png")
    Image.fromarray(rng.integers(0, 256, (40, 48, 4), dtype=np.uint8), mode="RGBA").save(root / "a" / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (40, 48), dtype=np.uint16)).save(root / "a" / "gray16.png")
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).convert("P").save(root / "a" / "pal.png")
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "a" / "rgb.tif")
    rep = validate_folder(root, patch=32)
    assert rep.converted == {"grayscale": 1, "rgba": 1, "16bit": 1, "palette": 1}
    assert rep.to_dict()["n_converted"] == 4 and rep.counts == {"a": 6}


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        validate_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="patch=0"):
        validate_folder(tmp_path, patch=0)
