"""Whole-slide images: read labelled regions (QuPath GeoJSON) and tile inside them.

Slides (svs, tiff, ndpi, ...) are read with ``tiffslide`` (pure Python, installed with the project) or with
``openslide`` when tiffslide cannot open the file. Annotations are the GeoJSON that QuPath exports
("Export objects as GeoJSON"): a FeatureCollection (or a bare list of Features) whose polygons are in level-0
pixel coordinates and whose class is ``properties.classification.name``.

A grid patch (same grid as ``tiling.tile_positions``, anchored at the slide origin) belongs to a class when at
least ``min_fraction`` of its area lies inside the union of that class's polygons; when several classes qualify
(overlapping annotations) the largest fraction wins, ties going to the first class name.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from histlib.data.tiling import grid_starts
from histlib.runs import check_name

WSI_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".mrxs", ".bif", ".vms", ".svslide")


@dataclass
class WsiPatch:
    """A patch position on a slide: level-0 offset, class and the fraction of its area inside that class."""

    x: int
    y: int
    cls: str
    fraction: float


def _feature_class(props: dict) -> str | None:
    c = (props or {}).get("classification")
    if isinstance(c, dict):
        return c.get("name")
    if isinstance(c, str):  # some exporters write the class name directly
        return c
    return None


def read_geojson(path: str | os.PathLike) -> dict:
    """Reads a QuPath GeoJSON export into ``{class name: shapely (Multi)Polygon}`` (union of the class's polygons).

    Features without a classification, and non-polygon geometries (points, lines), are skipped with a warning.

    Raises:
        FileNotFoundError / ValueError: missing file, invalid JSON, or no classified polygon at all.
    """
    import shapely
    from shapely.geometry import shape

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid GeoJSON ({e})") from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features", [])
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise ValueError(f"{path}: expected a GeoJSON FeatureCollection, Feature or list of Features")

    parts: dict[str, list] = {}
    unclassified, not_polygons = 0, 0
    for i, feat in enumerate(features):
        if not isinstance(feat, dict) or "geometry" not in feat:
            raise ValueError(f"{path}: feature {i} is not a GeoJSON Feature with a geometry")
        cls = _feature_class(feat.get("properties", {}))
        if not cls:
            unclassified += 1
            continue
        check_name(cls, f"{path}: feature {i}")  # patches are written to a folder named by the class
        try:
            geom = shape(feat["geometry"])
        except Exception as e:  # shapely raises several types for malformed coordinates
            raise ValueError(f"{path}: feature {i} ({cls}) has an invalid geometry ({e})") from None
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        polys = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type in ("Polygon", "MultiPolygon")]
        if not polys:
            not_polygons += 1
            continue
        parts.setdefault(cls, []).extend(polys)
    if unclassified or not_polygons:
        warnings.warn(f"{path}: skipped {unclassified} unclassified feature(s) and {not_polygons} non-polygon "
                      f"feature(s)", stacklevel=2)
    if not parts:
        raise ValueError(f"{path}: no classified polygons (expected properties.classification.name on Polygon or "
                         f"MultiPolygon features)")
    return {cls: shapely.union_all(polys) for cls, polys in sorted(parts.items())}


def patch_fractions(geometry, xs: np.ndarray, ys: np.ndarray, size: float) -> np.ndarray:
    """Fraction of each square ``[x, x+size) × [y, y+size)`` lying inside ``geometry`` (vectorised)."""
    import shapely

    boxes = shapely.box(xs, ys, xs + size, ys + size)
    return shapely.area(shapely.intersection(boxes, geometry)) / float(size * size)


def wsi_patch_positions(class_geoms: dict, width: int, height: int, patch: int, stride: int | None = None,
                        min_fraction: float = 0.5) -> list[WsiPatch]:
    """Grid patches (level-0 units) whose area lies at least ``min_fraction`` inside one class's polygons.

    Args:
        class_geoms: ``{class: geometry}`` as returned by ``read_geojson``.
        width, height: slide size (level 0); only patches fully inside the slide are considered.
        patch, stride: patch side and step in level-0 pixels (stride defaults to patch).
        min_fraction: in ``(0, 1]``.

    Returns:
        Patches sorted by (y, x).
    """
    stride = patch if stride is None else stride
    if not 0.0 < float(min_fraction) <= 1.0:
        raise ValueError(f"min_fraction={min_fraction}: expected a number in (0, 1]")
    if patch <= 0 or stride <= 0:
        raise ValueError(f"patch={patch}, stride={stride}: expected positive integers")
    all_x = np.asarray(grid_starts(width, patch, stride), dtype=np.int64)
    all_y = np.asarray(grid_starts(height, patch, stride), dtype=np.int64)
    best: dict[tuple[int, int], tuple[float, str]] = {}
    for cls in sorted(class_geoms):
        geom = class_geoms[cls]
        if geom.is_empty:
            continue
        x0, y0, x1, y1 = geom.bounds
        # only grid points whose patch can touch the class's bounding box
        xs = all_x[(all_x + patch > x0) & (all_x < x1)]
        ys = all_y[(all_y + patch > y0) & (all_y < y1)]
        if len(xs) == 0 or len(ys) == 0:
            continue
        gx, gy = np.meshgrid(xs, ys)  # [ny, nx]
        gx, gy = gx.ravel(), gy.ravel()
        frac = patch_fractions(geom, gx.astype(float), gy.astype(float), patch)
        for x, y, f in zip(gx[frac >= min_fraction - 1e-9], gy[frac >= min_fraction - 1e-9],
                           frac[frac >= min_fraction - 1e-9]):
            key = (int(x), int(y))
            if key not in best or f > best[key][0] + 1e-12:
                best[key] = (float(f), cls)
    return [WsiPatch(x, y, cls, f) for (x, y), (f, cls) in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][0]))]


def open_slide(path: str | os.PathLike):
    """Opens a slide with tiffslide, falling back to openslide when installed; the error names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: slide not found")
    errors = []
    try:
        import tiffslide

        return tiffslide.TiffSlide(path)
    except Exception as e:  # tiffslide raises tifffile/zarr errors of several types for unsupported files
        errors.append(f"tiffslide: {e}")
    try:
        import openslide

        return openslide.OpenSlide(str(path))
    except ImportError:
        errors.append("openslide: not installed")
    except Exception as e:
        errors.append(f"openslide: {e}")
    raise OSError(f"{path}: cannot open slide ({'; '.join(errors)})")


def read_patch(slide, x: int, y: int, patch: int, level: int = 0) -> Image.Image:
    """The ``patch × patch`` (level pixels) RGB region whose top-left is at level-0 ``(x, y)``."""
    img = slide.read_region((int(x), int(y)), level, (patch, patch))
    return img.convert("RGB") if img.mode != "RGB" else img


def iter_wsi_patches(slide_path: str | os.PathLike, annotations: str | os.PathLike | dict, patch: int,
                     stride: int | None = None, min_fraction: float = 0.5,
                     level: int = 0) -> Iterator[tuple[WsiPatch, Image.Image]]:
    """Yields ``(WsiPatch, RGB image)`` for every labelled patch of a slide.

    Args:
        slide_path: the slide file.
        annotations: a GeoJSON path or the dict from ``read_geojson`` (level-0 coordinates).
        patch, stride: in pixels of ``level`` (the grid is laid out in level-0 units, scaled by the downsample).
        min_fraction: minimum fraction of a patch inside a class's polygons.
        level: pyramid level to read.
    """
    class_geoms = annotations if isinstance(annotations, dict) else read_geojson(annotations)
    slide = open_slide(slide_path)
    try:
        if not 0 <= level < slide.level_count:
            raise ValueError(f"{slide_path}: level={level} out of range (slide has {slide.level_count} levels)")
        ds = float(slide.level_downsamples[level])
        width, height = slide.dimensions
        stride = patch if stride is None else stride
        positions = wsi_patch_positions(class_geoms, width, height, int(round(patch * ds)),
                                        int(round(stride * ds)), min_fraction)
        for p in positions:
            yield p, read_patch(slide, p.x, p.y, patch, level)
    finally:
        slide.close()
