"""prepare refuses sources whose output names would clash, and warns when a class gets no validation images."""

import numpy as np
import pytest
from PIL import Image

from histlib.data.prepare import PrepareConfig, prepare_dataset


def test_same_stem_other_extension_is_refused_and_nothing_is_left(make_image_folder, tmp_path):
    root = make_image_folder({"a": 2, "b": 2})
    Image.open(root / "a" / "a_000.png").convert("RGB").save(root / "a" / "a_000.jpg")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"a/a_000.*a_000\.(jpg|png)"):
        prepare_dataset(PrepareConfig(source=str(root), out=str(out)), progress=False)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_class_without_validation_images_is_reported(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "src"
    for cls, n in (("common", 8), ("rare", 1)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / cls / f"{cls}{i}.png")
    cfg = PrepareConfig(source=str(root), out=str(tmp_path / "out"), val_fraction=0.25, seed=0)
    with pytest.warns(UserWarning, match="rare"):
        report = prepare_dataset(cfg, progress=False)
    assert report["classes_without_val"] == ["rare"]
