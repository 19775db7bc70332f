"""histlib.data.wsi: QuPath GeoJSON regions on the CC0 CMU-1-Small-Region slide."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from histlib.data.prepare import PrepareConfig, prepare_dataset
from histlib.data.tiling import tile_positions
from histlib.data.wsi import iter_wsi_patches, open_slide, read_geojson, read_patch, wsi_patch_positions

SLIDE = "CMU-1-Small-Region.svs"
GEOJSON = "CMU-1-Small-Region.geojson"
W, H = 2220, 2967


def _raster_masks(geojson_path):
    """Class masks drawn with PIL (independent of shapely): exterior rings filled, holes cleared."""
    masks = {}
    for feat in json.loads(geojson_path.read_text())["features"]:
        cls = (feat["properties"].get("classification") or {}).get("name")
        if not cls:
            continue
        g = feat["geometry"]
        polys = [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]
        img = masks.setdefault(cls, Image.new("L", (W, H), 0))
        draw = ImageDraw.Draw(img)
        for rings in polys:
            draw.polygon([tuple(p) for p in rings[0][:-1]], fill=1)
            for hole in rings[1:]:
                draw.polygon([tuple(p) for p in hole[:-1]], fill=0)
    return {c: np.asarray(m, dtype=np.float32) for c, m in masks.items()}


def test_read_geojson(test_data):
    with pytest.warns(UserWarning, match="1 unclassified"):
        geoms = read_geojson(test_data / GEOJSON)
    assert sorted(geoms) == ["Epithelium", "Stroma"]
    # Epithelium: 440x480 rectangle minus a 120x160 hole, plus a 260x420 rectangle
    assert geoms["Epithelium"].area == pytest.approx(440 * 480 - 120 * 160 + 260 * 420)


def test_positions_match_rasterised_masks(test_data):
    with pytest.warns(UserWarning):
        geoms = read_geojson(test_data / GEOJSON)
    patch, stride, min_fraction = 224, 112, 0.5
    got = {(p.x, p.y): p.cls for p in wsi_patch_positions(geoms, W, H, patch, stride, min_fraction)}
    masks = _raster_masks(test_data / GEOJSON)
    checked = 0
    for x, y in tile_positions(W, H, patch, stride):
        fr = {c: m[y:y + patch, x:x + patch].mean() for c, m in masks.items()}
        best = max(fr, key=fr.get)
        if abs(fr[best] - min_fraction) < 0.03:
            continue  # rasterised edges are ±1 px; too close to the threshold to judge
        checked += 1
        assert got.get((x, y)) == (best if fr[best] >= min_fraction else None), (x, y, fr)
    assert checked > 0.9 * len(tile_positions(W, H, patch, stride)) and len(got) > 20


def test_rectangle_fractions_exact(test_data):
    with pytest.warns(UserWarning):
        geoms = read_geojson(test_data / GEOJSON)
    ps = wsi_patch_positions({"E": geoms["Epithelium"]}, W, H, 224, 112, min_fraction=0.01)
    for p in ps:
        if p.y >= 2300:  # the second rectangle 1620..1880 x 2480..2900, far from the first
            ox = max(0, min(p.x + 224, 1880) - max(p.x, 1620))
            oy = max(0, min(p.y + 224, 2900) - max(p.y, 2480))
            assert p.fraction == pytest.approx(ox * oy / 224**2)
    # fully inside (112 px patches, 56 px grid): inside the first rectangle and clear of its hole, or inside the
    # second rectangle, found by a brute-force scan
    full = wsi_patch_positions({"E": geoms["Epithelium"]}, W, H, 112, 56, min_fraction=1.0)
    brute = [(x, y) for x, y in tile_positions(W, H, 112, 56)
             if (1080 <= x and x + 112 <= 1520 and 1680 <= y and y + 112 <= 2160
                 and (x + 112 <= 1240 or x >= 1360 or y + 112 <= 1840 or y >= 2000))
             or (1620 <= x and x + 112 <= 1880 and 2480 <= y and y + 112 <= 2900)]
    assert len(brute) > 20 and sorted((p.x, p.y) for p in full) == sorted(brute)


def test_patch_pixels_come_from_the_right_offset(test_data):
    slide = open_slide(test_data / SLIDE)
    try:
        full = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))  # [H, W, 3]
        assert full.shape == (H, W, 3)
        tile = np.asarray(read_patch(slide, 1232, 560, 224))
        assert np.array_equal(tile, full[560:784, 1232:1456])
    finally:
        slide.close()
    with pytest.warns(UserWarning):
        first = next(iter_wsi_patches(test_data / SLIDE, test_data / GEOJSON, 224, 112))
    p, img = first
    assert img.size == (224, 224) and np.array_equal(np.asarray(img), full[p.y:p.y + 224, p.x:p.x + 224])


def test_prepare_slide(test_data, tmp_path):
    cfg = PrepareConfig(source=str(test_data / SLIDE), out=str(tmp_path / "wsi"), patch=224, stride=112,
                        annotations=str(test_data / GEOJSON), val_fraction=0.3, group_by="region", image_format="jpg")
    with pytest.warns(UserWarning):
        rep = prepare_dataset(cfg, progress=False)
    df = pd.read_csv(tmp_path / "wsi" / "manifest.csv")
    assert rep["n_images"] == len(df) and rep["classes"] == ["Epithelium", "Stroma"]
    with pytest.warns(UserWarning):
        geoms = read_geojson(test_data / GEOJSON)
    assert len(df) == len(wsi_patch_positions(geoms, W, H, 224, 112, 0.5))
    assert (df.groupby("group")["split"].nunique() == 1).all() and set(df["split"]) == {"train", "val"}
    assert df["path"].str.match(r"^(Epithelium|Stroma)/CMU-1-Small-Region__x\d{5}_y\d{5}\.jpg$").all()
    assert (df["source"] == SLIDE).all()
    assert Image.open(tmp_path / "wsi" / df["path"][0]).size == (224, 224)


def test_bad_annotations(tmp_path, test_data):
    (tmp_path / "a.geojson").write_text("{not json")
    with pytest.raises(ValueError, match="a.geojson: not valid GeoJSON"):
        read_geojson(tmp_path / "a.geojson")
    (tmp_path / "b.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(ValueError, match="no classified polygons"):
        read_geojson(tmp_path / "b.geojson")
    cfg = PrepareConfig(source=str(test_data / SLIDE), out=str(tmp_path / "o"), patch=224)
    with pytest.raises(FileNotFoundError, match="annotation GeoJSON for slide CMU-1-Small-Region.svs not found"):
        prepare_dataset(PrepareConfig(**{**cfg.__dict__, "annotations": str(tmp_path / "none.geojson")}),
                        progress=False)
    assert not (tmp_path / "o").exists()


def test_annotation_class_names_never_become_paths(tmp_path):
    square = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 0]]]}
    for i, cls in enumerate(("../../x", str(tmp_path / "abs"), "..")):
        f = tmp_path / f"{i}.geojson"
        f.write_text(json.dumps({"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": square, "properties": {"classification": {"name": cls}}}]}))
        with pytest.raises(ValueError, match=f"{i}.geojson: feature 0: class name"):
            read_geojson(f)
